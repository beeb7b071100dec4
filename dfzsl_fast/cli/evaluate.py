"""`dfzsl-fast evaluate`: GZSL S/U/H (and base-to-new B/N/HM) of a saved classifier on a
feature file; writes metrics.json, per_class.csv and a plot (`dfzsl_fast.evaluation`)."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import (
    UsageError,
    check_device,
    check_input_file,
    check_output_dir,
    default_out_dir,
    int_option,
    legend,
    pct,
)

EXAMPLE = """\
example:
  dfzsl-fast evaluate --classifier runs/cub/classifier.safetensors \\
      --features features/cub_test.safetensors --out runs/cub/eval

inputs:
  --classifier  a head saved by dfzsl_fast.io.save_classifier (or `dfzsl-fast inject`); its
                metadata says which classes are seen and which unseen.
  --features    a feature file (.safetensors, .npz or .pt dict) with `features` (N, D) and
                `labels` (N,): indices of the classifier's classes. If the file also has
                `class_names`, labels are matched to the classifier's classes by name.

outputs (in --out, default runs/evaluate-<YYYYmmdd-HHMMSS>/): metrics.json and per_class.csv
in the schema of dfzsl_fast.evaluation
(gzsl: S, U, H; base2new: B, N, HM; fractions in [0, 1]; per_class.csv: class_index,
class_name, group, n_test, accuracy), plots/per_class_accuracy.png. GZSL S and U are per-class
means, predictions over all classes; base-to-new B and N are sample-level accuracies with the
argmax inside the base (resp. new) classes.
"""

__all__ = ["add", "run", "print_scores"]


def add(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="GZSL S/U/H (and base-to-new B/N/HM) of a saved classifier on a feature file",
        description="Evaluate a saved classifier on labelled test features: print S/U/H (and "
        "B/N/HM), write metrics.json, per_class.csv and a per-class accuracy plot.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--classifier", required=True, metavar="PATH",
                   help="saved classifier (.safetensors)")
    p.add_argument("--features", required=True, metavar="FILE",
                   help="test feature file (.safetensors, .npz, .pt)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="folder for metrics.json, per_class.csv, plots/ "
                   "(default: runs/evaluate-<YYYYmmdd-HHMMSS>)")
    p.add_argument("--protocol", default="gzsl", choices=["gzsl", "base2new"],
                   help="gzsl (default): S/U/H; base2new: also B/N/HM")
    p.add_argument("--split", default=None, metavar="NAME[,NAME]",
                   help="use only rows of these splits of the feature file (e.g. test)")
    p.add_argument("--normalize-features", action="store_true",
                   help="L2-normalise features first (for a linear head trained on normalised "
                   "features; a cosine head normalises anyway)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--batch-size", type=int_option(1, 1 << 24), default=8192,
                   help="rows per forward pass (default 8192)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--overwrite", action="store_true",
                   help="replace metrics.json / per_class.csv already in --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation import build_metrics, evaluate_head, labels_in_class_space, write_evaluation
    from ..io import load_classifier, load_features

    device = check_device(args.device)
    out = check_output_dir(args.out if args.out is not None else default_out_dir("evaluate"),
                           "--out", reuse=args.overwrite,
                           clashing=("metrics.json", "per_class.csv"))
    splits = None
    if args.split is not None:
        splits = [s for s in args.split.split(",") if s.strip()]
        if not splits:
            raise UsageError(f"--split: expected split names, got {args.split!r}")
    head, meta = load_classifier(check_input_file(args.classifier, "--classifier"),
                                 device=device)
    ff = load_features(check_input_file(args.features, "--features"))
    if splits:
        try:
            ff = ff.select(splits)
        except ValueError as exc:
            raise UsageError(f"--split {args.split}: {exc}") from exc
        if len(ff) == 0:
            raise ValueError(f"--split {args.split}: no samples of these splits")
    names = meta["class_names"]
    labels = labels_in_class_space(ff.labels, ff.class_names, names, what="--features")
    if ff.class_names is not None and list(ff.class_names) != list(names):
        print("note: the feature file lists its classes in another order; labels matched by "
              "name")
    seen, unseen = meta["seen_classes"], meta["unseen_classes"]
    print(f"classifier: {args.classifier} ({meta['kind']}, {len(names)} classes: {len(seen)} "
          f"seen, {len(unseen)} unseen; D = {meta['in_features']})")
    print(f"features:   {args.features} ({len(ff)} samples"
          f"{', split ' + args.split if args.split else ''})")
    scores, per_class = evaluate_head(
        head, ff.features, labels, seen, unseen, protocol=args.protocol,
        batch_size=args.batch_size, normalize_features=args.normalize_features,
    )
    print_scores(scores)
    inputs = {"classifier": str(args.classifier), "features": str(args.features),
              "split": args.split, "normalize_features": bool(args.normalize_features)}
    metrics = build_metrics("evaluate", scores, inputs=inputs,
                            classifier_provenance=meta.get("provenance", {}))
    written = write_evaluation(out, metrics, per_class, names, seen, plot=not args.no_plot)
    print("wrote " + ", ".join(str(p) for p in written))
    print(f"results in {out}")
    return 0


def print_scores(scores: dict[str, Any], label: str = "") -> None:
    """Print a score block of `dfzsl_fast.evaluation.evaluate_head` (percent)."""
    if scores["closed_set"] is not None:
        cs = scores["closed_set"]
        print(f"{label}closed set (no unseen classes): accuracy = {pct(cs['accuracy'])}  "
              f"mean per class = {pct(cs['mean_per_class'])}")
    else:
        g = scores["gzsl"]
        print(f"{label}GZSL   S = {pct(g['S'])}  U = {pct(g['U'])}  H = {pct(g['H'])}   "
              f"(per-class means; {g['n_seen']} seen / {g['n_unseen']} unseen test samples)")
        if g["H"] is None:
            print("note: only one group has test samples, so H is undefined")
    if scores["base2new"] is not None:
        b = scores["base2new"]
        print(f"{label}B2N    B = {pct(b['B'])}  N = {pct(b['N'])}  HM = {pct(b['HM'])}  "
              f"(sample-level, argmax within base / within new)")
    shown = (("S", scores["closed_set"] is None and scores["gzsl"]), ("B", scores["base2new"]))
    keys = [k for k, blk in shown if blk]
    if keys:
        print(f"{label}{legend(keys)}")
