"""`dfzsl-fast inject`: ICIS, extend a saved base classifier with new classes from class
descriptors alone (`dfzsl_fast.pipeline.icis`, settings in `ICISConfig`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import (
    UsageError,
    add_set_option,
    apply_overrides,
    build_config,
    check_device,
    check_input_file,
    check_output_file,
    default_out_dir,
    float_option,
    int_option,
)

EXAMPLE = """\
example:
  dfzsl-fast inject --classifier runs/cub/base_head.safetensors \\
      --base-descriptors att_base.npy --new-descriptors att_new.npy \\
      --new-names new_classes.txt --out runs/cub/extended.safetensors
  dfzsl-fast inject ... --set hidden=512 --set lr=1e-4 --set early_stopping=false

inputs:
  --classifier        a saved head (dfzsl_fast.io.save_classifier) over the base classes.
  --base-descriptors  (C, A) descriptors, one row per classifier class in the classifier's
                      order: attributes or text embeddings. .npy; .npz / .pt dict with
                      `descriptors` (optional `names`, checked against the classifier); .pt
                      tensor; .safetensors with `descriptors`.
  --new-descriptors   (C_new, A) descriptors of the new classes, same formats and width.
  --new-names         a file (one name per line, or a JSON list) or the names themselves;
                      optional when the new-descriptor file embeds `names`.
  --base-attributes, --new-attributes
                      (C, K) / (C_new, K) class attributes (e.g. xlsa17 `att`), same formats;
                      needed by --semantics attributes / combined (the descriptors are then
                      the text part; dfzsl_fast.semantics).

settings: the options below, then --set KEY=VALUE on the fields of ICISConfig
(dfzsl_fast.config): hidden, epochs, batch_size, lr, loss, early_stopping,
slope_threshold, normalize_descriptors, include_unseen, rescale, seed, semantics,
attribute_weight.

output: the head extended with C_new rows predicted by ICIS (rows 0..C-1 unchanged); the new
classes are marked unseen in its metadata, with the ICIS settings and inputs as provenance.
Evaluate it with `dfzsl-fast evaluate`.
"""

#: Upper bounds of the ICIS sizes (beyond them a run would not fit in memory or in a day).
LIMITS = {"hidden": 1 << 16, "epochs": 10**7, "batch_size": 1 << 20}

__all__ = ["add", "run", "icis_config"]


def add(sub: Any) -> None:
    p = sub.add_parser(
        "inject",
        help="ICIS: add new classes to a saved classifier from class descriptors alone",
        description="Image-free classifier injection (ICIS): train the descriptor/weight "
        "autoencoders on the seen rows of a saved head and their descriptors, predict rows for "
        "the new classes' descriptors, and save the extended head.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--classifier", required=True, metavar="PATH", help="base head (.safetensors)")
    p.add_argument("--base-descriptors", required=True, metavar="FILE",
                   help="(C, A) descriptors of the classifier's classes, in its row order")
    p.add_argument("--new-descriptors", required=True, metavar="FILE",
                   help="(C_new, A) descriptors of the new classes")
    p.add_argument("--new-names", nargs="+", default=None, metavar="NAMES",
                   help="names file (one per line / JSON list), or the names themselves")
    p.add_argument("--base-attributes", default=None, metavar="FILE",
                   help="(C, K) attributes of the classifier's classes (--semantics "
                   "attributes / combined)")
    p.add_argument("--new-attributes", default=None, metavar="FILE",
                   help="(C_new, K) attributes of the new classes")
    p.add_argument("--semantics", default=None, choices=["text", "attributes", "combined"],
                   help="what ICIS learns from: the descriptors (text, default), the "
                   "attributes, or both fused (combined)")
    p.add_argument("--out", default=None, metavar="PATH",
                   help="extended head (.safetensors; default: "
                   "runs/inject-<YYYYmmdd-HHMMSS>/classifier.safetensors)")
    p.add_argument("--epochs", type=int_option(1, LIMITS["epochs"]), default=None,
                   help="max epochs (default 1000)")
    p.add_argument("--hidden", type=int_option(1, LIMITS["hidden"]), default=None,
                   help="latent width H (default 2048)")
    p.add_argument("--batch-size", type=int_option(1, LIMITS["batch_size"]), default=None,
                   help="rows per batch (default 16)")
    p.add_argument("--lr", type=float_option(0.0, 10.0, low_open=True), default=None,
                   help="Adam learning rate (default 1e-5)")
    p.add_argument("--loss", default=None, choices=["cosine", "mse"],
                   help="row loss (default cosine, as the paper)")
    p.add_argument("--rescale", default=None, choices=["none", "seen_norm"],
                   help="scale new rows to the seen rows' mean norm (linear heads; default none)")
    p.add_argument("--no-early-stopping", action="store_true",
                   help="run all epochs (default: the reference slope rule)")
    p.add_argument("--no-include-unseen", action="store_true",
                   help="leave the new descriptors out of training")
    p.add_argument("--no-normalize-descriptors", action="store_true",
                   help="use descriptors as given (default: L2-normalise rows)")
    p.add_argument("--seed", type=int_option(0, 2**63 - 1), default=None,
                   help="seed of init and shuffling (default 0)")
    add_set_option(p, "hidden=512")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=run)


def icis_config(args: argparse.Namespace):
    """The `ICISConfig` of the options: defaults, then the flags given, then ``--set``."""
    from ..config import ICISConfig

    data = ICISConfig().to_dict()
    for key in ("epochs", "hidden", "batch_size", "lr", "loss", "rescale", "seed", "semantics"):
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    data["early_stopping"] = data["early_stopping"] and not args.no_early_stopping
    data["include_unseen"] = data["include_unseen"] and not args.no_include_unseen
    data["normalize_descriptors"] = (data["normalize_descriptors"]
                                     and not args.no_normalize_descriptors)
    cfg = build_config(ICISConfig, apply_overrides(data, args.set))
    for key, high in LIMITS.items():
        if getattr(cfg, key) > high:
            raise UsageError(f"--set {key}: expected at most {high}, got {getattr(cfg, key)}")
    if cfg.seed >= 2**63:
        raise UsageError(f"--set seed: expected at most 2**63 - 1, got {cfg.seed}")
    if cfg.semantics != "text" and (args.base_attributes is None or args.new_attributes is None):
        raise UsageError(f"semantics {cfg.semantics!r}: give --base-attributes and "
                         "--new-attributes (e.g. the xlsa17 `att` rows of the classes)")
    return cfg


def _new_names(values: list[str] | None, embedded: list[str] | None) -> list[str]:
    from ..io import load_names

    if values:
        if len(values) == 1 and Path(values[0]).expanduser().is_file():
            return load_names(values[0])
        names = [v.strip() for v in values]
        if not all(names):
            raise UsageError("--new-names: empty class name")
        return names
    if embedded is not None:
        return embedded
    raise UsageError(
        "--new-names: give a names file (one per line, or a JSON list) or the names themselves; "
        "the descriptor file holds none"
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from ..io import load_classifier, load_descriptors, save_classifier, sha256_file
    from ..nn import CosineClassifier
    from ..pipeline.icis import head_targets, icis_extend, inject
    from ..semantics import weight_for_json

    # every option, then every input, before any work or output
    cfg = icis_config(args)
    device = check_device(args.device)
    out_path = args.out
    if out_path is None:
        out_path = default_out_dir("inject") / "classifier.safetensors"
    out = check_output_file(out_path, "--out", overwrite=args.overwrite,
                            suffixes=(".safetensors",))
    head, meta = load_classifier(check_input_file(args.classifier, "--classifier"),
                                 device=device)
    names = meta["class_names"]
    C = len(names)
    a_base, base_names = load_descriptors(
        check_input_file(args.base_descriptors, "--base-descriptors"))
    a_new, new_embedded = load_descriptors(
        check_input_file(args.new_descriptors, "--new-descriptors"))
    new_names = _new_names(args.new_names, new_embedded)
    at_base = at_new = None
    if cfg.semantics != "text":
        at_base, _ = load_descriptors(
            check_input_file(args.base_attributes, "--base-attributes"))
        at_new, _ = load_descriptors(check_input_file(args.new_attributes, "--new-attributes"))
        if at_base.shape[0] != C or at_new.shape[0] != a_new.shape[0]:
            raise ValueError(
                f"--base-attributes / --new-attributes: expected {C} and {a_new.shape[0]} rows "
                f"(one per class, as the descriptors), got {at_base.shape[0]} and "
                f"{at_new.shape[0]}")
        if at_new.shape[1] != at_base.shape[1]:
            raise ValueError(f"--new-attributes: width {at_new.shape[1]} differs from "
                             f"--base-attributes' {at_base.shape[1]}")
    if a_base.shape[0] != C:
        raise ValueError(
            f"--base-descriptors: {a_base.shape[0]} rows but the classifier has {C} classes; "
            "give one descriptor per classifier row, in the same order"
        )
    if base_names is not None and base_names != names:
        raise ValueError("--base-descriptors: its names differ from the classifier's class "
                         "names (same classes, same order expected)")
    if a_new.shape[1] != a_base.shape[1]:
        raise ValueError(
            f"--new-descriptors: width {a_new.shape[1]} differs from --base-descriptors' "
            f"{a_base.shape[1]}"
        )
    if a_new.shape[0] < 1:
        raise ValueError("--new-descriptors: no rows")
    if len(new_names) != a_new.shape[0]:
        raise UsageError(
            f"--new-names: {len(new_names)} names for {a_new.shape[0]} new descriptor rows"
        )
    clash = sorted(set(new_names) & set(names))
    if clash or len(set(new_names)) != len(new_names):
        raise UsageError(
            f"--new-names: duplicate or existing class names {(clash or new_names)[:5]}")
    seen, unseen = meta["seen_classes"], meta["unseen_classes"]
    if not seen:
        raise ValueError("--classifier: it has no seen classes to learn from")
    base_sha = sha256_file(Path(args.classifier).expanduser())

    dev = head.weight.device
    a_base, a_new = a_base.to(dev), a_new.to(dev)
    # ICIS learns from the seen rows only: fit on a seen-only view of the head; rows of classes
    # already unseen (earlier injections) join the new descriptors as unseen descriptors.
    seen_t = torch.tensor(seen, dtype=torch.int64, device=dev)
    unseen_t = torch.tensor(unseen, dtype=torch.int64, device=dev)
    if unseen:
        if isinstance(head, CosineClassifier):
            view = CosineClassifier(head.weight.detach()[seen_t], head.scale, eps=head.eps)
        else:
            view = torch.nn.Linear(head.in_features, len(seen), bias=head.bias is not None,
                                   device=dev, dtype=head.weight.dtype)
            with torch.no_grad():
                view.weight.copy_(head.weight[seen_t])
                if head.bias is not None:
                    view.bias.copy_(head.bias[seen_t])
        a_unseen = torch.cat([a_base[unseen_t], a_new])
    else:
        view, a_unseen = head, a_new
    at_seen = at_unseen = None
    if at_base is not None:
        at_base, at_new = at_base.to(dev), at_new.to(dev)
        at_seen = at_base[seen_t]
        at_unseen = torch.cat([at_base[unseen_t], at_new]) if unseen else at_new
    print(f"ICIS: {len(seen)} seen classes -> {len(new_names)} new classes "
          f"(descriptors d_a = {a_base.shape[1]}, {meta['kind']} head, D = {meta['in_features']})")
    extended_view, _, info = icis_extend(view, a_base[seen_t], a_unseen, cfg, return_model=True,
                                         seen_attributes=at_seen,
                                         unseen_attributes=at_unseen,
                                         progress=not args.no_progress)
    new_rows = head_targets(extended_view)[-len(new_names):]
    extended = inject(head, new_rows)  # rescaling was already applied by icis_extend
    final_loss = float(info.losses[-1]) if info.epochs_run and len(info.losses) else None
    provenance = {
        "icis": {**cfg.to_dict(), "attribute_weight_used": weight_for_json(info.attribute_weight),
                 "epochs_run": info.epochs_run,
                 "stopped_early": info.stopped_early, "final_loss": final_loss,
                 "seconds": round(info.seconds, 3)},
        "base_classifier": {"path": str(args.classifier), "sha256": base_sha},
        "base_descriptors": str(args.base_descriptors),
        "new_descriptors": str(args.new_descriptors),
        **({"base_attributes": str(args.base_attributes),
            "new_attributes": str(args.new_attributes)} if at_base is not None else {}),
        "base_provenance": meta.get("provenance", {}),
    }
    save_classifier(out, extended, class_names=list(names) + list(new_names),
                    seen_classes=seen, metadata=provenance)
    loss = "n/a" if final_loss is None else f"{final_loss:.4f}"
    print(f"ICIS: {info.epochs_run} epochs{' (early stop)' if info.stopped_early else ''}, "
          f"final loss {loss}, {info.seconds:.1f} s")
    print(f"saved {C + len(new_names)} classes ({len(seen)} seen, "
          f"{len(unseen) + len(new_names)} unseen) to {out}")
    print(f"results in {out.parent}")
    return 0
