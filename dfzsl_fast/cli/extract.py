"""`dfzsl-fast extract-features` (alias `extract`): CLIP image features of an image folder
(open_clip, local weights), written atomically (`dfzsl_fast.extract.extract_image_features`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ._common import UsageError, check_device, check_output_file, int_option

_SUFFIXES = (".safetensors", ".npz", ".pt", ".pth")

__all__ = ["add", "run"]

EXAMPLE = """\
example:
  %(prog)s data/cub/test --model ViT-B-16 --weights weights/ViT-B-16-openai.safetensors \\
      --quick-gelu true --out features/cub_test.safetensors --split test

  The folder holds one sub-folder per class (data/cub/test/<class>/<image>). Labels follow the
  sorted folder names, or the order of --classes FILE (one folder name per line). The output
  (.safetensors, .npz or .pt) holds features (N, D) float32 unnormalised, labels (N,),
  class_names, paths and the model/weights metadata; read it with dfzsl_fast.io.load_features.
"""


def add(sub: Any) -> None:
    p = sub.add_parser(
        "extract-features",
        aliases=["extract"],
        help="CLIP image features of an image folder (open_clip, local weights) to a file",
        description="Extract unnormalised CLIP image features of root/<class>/<images> with "
        "open_clip and local weights; write them with labels, class names and paths.",
        epilog=EXAMPLE.replace("%(prog)s", "dfzsl-fast extract-features"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("root", help="image folder: root/<class name>/<images>")
    p.add_argument("--out", required=True,
                   help="output feature file (.safetensors, .npz or .pt), written atomically")
    p.add_argument("--model", default="ViT-B-16",
                   help="open_clip model name (default ViT-B-16; e.g. ViT-B-32, "
                   "ViT-B-16-quickgelu)")
    p.add_argument("--weights", default=None,
                   help="local CLIP weights: a .safetensors/.bin/.pt file or a local-dir folder "
                   "(nothing is downloaded)")
    p.add_argument("--random-weights", action="store_true",
                   help="allow running without --weights, with random weights (tests only)")
    p.add_argument("--quick-gelu", default="auto", choices=["auto", "true", "false"],
                   help="QuickGELU activation: 'true' for OpenAI weights; 'auto' (default) "
                   "turns it on for *-quickgelu names, TorchScript .pt files and file names "
                   "containing 'openai'")
    p.add_argument("--batch-size", type=int_option(1, 1 << 16), default=64,
                   help="images per batch (default 64)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, ...")
    p.add_argument("--num-workers", type=int_option(0, 256),
                   default=min(4, os.cpu_count() or 1),
                   help="image-decoding worker processes (default min(4, CPUs))")
    p.add_argument("--precision", default="fp32",
                   choices=["fp32", "fp16", "bf16", "amp", "amp_bf16", "pure_fp16", "pure_bf16"],
                   help="open_clip precision: fp32 (default), fp16, bf16 (GPU), ...")
    p.add_argument("--normalize", action="store_true",
                   help="L2-normalise the features (default: raw, as DFZSL expects)")
    p.add_argument("--classes", default=None,
                   help="file with class folder names in label order (one per line or a JSON "
                   "list); default: all sub-folders, sorted")
    p.add_argument("--split", default=None, help="split name stored for every row, e.g. test")
    p.add_argument("--model-config", default=None,
                   help="extra open_clip model config JSON to register (its stem is the name)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..extract import extract_image_features
    from ..io import load_names

    if args.weights is None and not args.random_weights:
        raise UsageError(
            "--weights: give a local CLIP weights file (or --random-weights for a test run)"
        )
    device = check_device(args.device, allow_auto=True)
    out = check_output_file(args.out, "--out", overwrite=args.overwrite, suffixes=_SUFFIXES)
    root = Path(args.root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"root: no image folder at {root}")
    if args.weights is not None and not Path(args.weights).expanduser().exists():
        raise FileNotFoundError(f"--weights: no weights file at {args.weights}")
    classes = load_names(args.classes) if args.classes else None
    ff = extract_image_features(
        root, args.model, args.weights, quick_gelu=args.quick_gelu,
        batch_size=args.batch_size, device=device, num_workers=args.num_workers,
        normalize=args.normalize, precision=args.precision, classes=classes, split=args.split,
        out=out, overwrite=args.overwrite, allow_random_weights=args.random_weights,
        model_config=args.model_config, progress=not args.no_progress,
    )
    m = ff.metadata
    print(
        f"{len(ff)} images, {len(ff.class_names or [])} classes -> features "
        f"{tuple(ff.features.shape)} float32{' (L2-normalised)' if args.normalize else ''}; "
        f"model {m['model_name']}, QuickGELU {m['quick_gelu']}, {m['extract_seconds']:.1f} s"
    )
    print(f"saved to {ff.path}")
    return 0
