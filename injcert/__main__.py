"""python -m injcert -> injcert.cli.main()."""

import sys

from .cli import main

sys.exit(main())
