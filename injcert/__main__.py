"""python -m injcert -> injcert.cli.main()."""

import os
import sys

# Normally already set by injcert/__init__.py, which runs first; only effective before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .cli import main  # noqa: E402
from .threads import keep_freed_heap  # noqa: E402

keep_freed_heap()  # reuse freed buffers instead of page-faulting them in at every evaluation
sys.exit(main())
