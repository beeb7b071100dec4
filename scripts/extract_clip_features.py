#!/usr/bin/env python
"""Extract CLIP image features of an image folder into a feature file.

A thin wrapper around ``dfzsl-fast extract-features`` (:mod:`dfzsl_fast.cli.extract`);
from Python call :func:`dfzsl_fast.extract.extract_image_features`. Run with ``--help``.

    python scripts/extract_clip_features.py data/cub/test --model ViT-B-16 \\
        --weights weights/ViT-B-16-openai.safetensors --quick-gelu true \\
        --out features/cub_test.safetensors --split test
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    try:
        from dfzsl_fast.cli import main as _main
    except ImportError:  # run from a source checkout without installing
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from dfzsl_fast.cli import main as _main
    return _main(["extract-features", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
