"""`python -m dfzsl_fast` (or `python -m dfzsl_fast info`): versions, build facts and backend
availability per op; any other arguments go to the command line tool (dfzsl_fast.cli)."""

from __future__ import annotations

import sys

if len(sys.argv) > 1:
    from .cli import main

    sys.exit(main())

from ._diagnostics import show_config

show_config()
