"""`dfzsl-fast configs [NAME]`: the shipped presets (`dfzsl_fast.config.list_configs`), or one
preset in words (`describe_config`) and as JSON (what `dfzsl-fast run NAME` starts from)."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import UsageError

EXAMPLE = """\
examples:
  dfzsl-fast configs                      # the presets, one a line
  dfzsl-fast configs AWA2                 # one preset: what it sets, then its JSON
  dfzsl-fast configs AWA2 --profile published --json > awa2.json
  dfzsl-fast run awa2.json ...            # a JSON file is used as written
"""

__all__ = ["add", "run"]


def add(sub: Any) -> None:
    p = sub.add_parser(
        "configs",
        help="list the shipped config presets, or show one",
        description="Without NAME: list the shipped presets. With NAME: describe that preset "
        "and print it as JSON (a file `dfzsl-fast run` accepts as CONFIG).",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", nargs="?", default=None, help="a preset name (case-insensitive)")
    p.add_argument("--profile", default=None, choices=["fast", "published"],
                   help="show the preset with this profile applied (as `run --profile` does)")
    p.add_argument("--json", action="store_true", help="print only the JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from .. import config

    if args.name is None:
        if args.profile is not None or args.json:
            if args.json:
                print(json.dumps(config.list_configs()))
                return 0
            raise UsageError("--profile: give a preset NAME to apply it to")
        names = config.list_configs()
        print(f"{len(names)} presets (dfzsl-fast configs NAME shows one; "
              f"dfzsl-fast run NAME ... uses one):")
        for n in names:
            print(f"  {n}")
        if "generic" not in [n.lower() for n in names] and _has_generic(config):
            print("  generic   (for your own classes: plain 'a photo of a {}.' template)")
        if hasattr(config, "PROFILES"):
            print(f"profiles (dfzsl-fast run --profile): {', '.join(config.PROFILES)}")
        return 0
    try:
        cfg = config.get_config(args.name)
    except ValueError as exc:
        raise UsageError(f"NAME: {exc}") from exc
    if args.profile is not None:
        if not hasattr(config, "apply_profile"):
            raise UsageError("--profile: this dfzsl_fast build lacks "
                             "dfzsl_fast.config.apply_profile; update the package")
        cfg = config.apply_profile(cfg, args.profile)
    text = json.dumps(cfg.to_dict(), indent=2, sort_keys=False)
    if args.json:
        print(text)
        return 0
    if hasattr(config, "describe_config"):
        print(config.describe_config(cfg))
        print()
    print(text)
    return 0


def _has_generic(config) -> bool:
    try:
        config.get_config("generic")
    except (ValueError, TypeError):
        return False
    return True
