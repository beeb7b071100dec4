"""`python -m dfzsl_fast`: versions, build facts and backend availability."""

from __future__ import annotations

import sys

if len(sys.argv) > 1:
    from .cli import main

    sys.exit(main())

from ._extension import show_config

show_config()
