"""`dfzsl-fast info`: versions, build facts and which backends are available here."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add", "run"]


def add(sub: Any) -> None:
    p = sub.add_parser("info", help="versions, build facts and which backends are available here",
                       description="Print versions, build facts and the available backends.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .._diagnostics import show_config

    show_config()
    return 0
