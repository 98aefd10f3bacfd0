"""asv benchmark suites of injcert (``make bench``; see ``asv.conf.json``).

Each ``bench_*.py`` module holds classes with ``params``/``param_names``, ``setup`` and
``time_*``, ``peakmem_*`` and ``track_*`` methods; ``results_table.py`` turns the latest asv
results into a Markdown table. Every module can also be run as a script for a quick table.
"""

import sys as _sys
from pathlib import Path as _Path

# asv starts its benchmark processes outside the repository; put the repository root first on
# sys.path so that the suites measure this checkout even when asv is run without ``make bench``
# (which also sets PYTHONPATH).
_ROOT = str(_Path(__file__).resolve().parent.parent)
if _ROOT not in _sys.path:
    _sys.path.insert(0, _ROOT)
