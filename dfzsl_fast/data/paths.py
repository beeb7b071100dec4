"""Where optional real data lives (never shipped with the package).

The project's real test data (xlsa17 splits, class-name lists, a CLIP text head) sits beside a
development checkout as ``<repo>/../shared/data``; ``DFZSL_SHARED_DATA`` overrides that location.
Users who install the package have neither, and everything that needs it must skip or ask for
explicit paths.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ENV_SHARED_DATA", "shared_data_dir"]

#: environment variable naming the shared data folder
ENV_SHARED_DATA = "DFZSL_SHARED_DATA"


def shared_data_dir() -> Path | None:
    """The shared real-data folder, or None when it does not exist.

    Returns:
        ``$DFZSL_SHARED_DATA`` if set (None if that folder is missing), else
        ``<repo root>/../shared/data`` if it exists, else None.
    """
    env = os.environ.get(ENV_SHARED_DATA)
    if env:
        p = Path(env).expanduser()
        return p if p.is_dir() else None
    repo = Path(__file__).resolve().parents[2]
    p = repo.parent / "shared" / "data"
    return p if p.is_dir() else None
