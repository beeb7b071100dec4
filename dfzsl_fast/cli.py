"""The `dfzsl-fast` command line (also `python -m dfzsl_fast ...`).

    dfzsl-fast info                  versions, build facts, backends
    dfzsl-fast demo                  offline demo: DFZSL, ICIS and zero-shot CLIP side by side on
                                     a simulated CLIP world built from real class names
    dfzsl-fast run CONFIG ...        the whole pipeline: base classifier + class names + text
                                     tower -> classifier over base + new classes (cli_run.py)
    dfzsl-fast sample [options]      draw vMF samples, report throughput and a statistical check
                                     against exact theory, optionally save them
    dfzsl-fast evaluate ...          GZSL S/U/H (and base-to-new B/N/HM) of a saved classifier on
                                     a feature file; metrics.json, per_class.csv, a plot
    dfzsl-fast inject ...            ICIS: extend a saved base classifier with new classes from
                                     class descriptors alone
    dfzsl-fast extract-features ...  CLIP image features of an image folder (local weights)

`dfzsl-fast <command> --help` explains each command, with an example.

Adding a command: write `_cmd_<name>(args) -> int` (the work; import heavy modules inside it)
and `_add_<name>(sub)` (creates the sub-parser, then `p.set_defaults(func=_cmd_<name>)`), and
append `_add_<name>` to `COMMANDS`. Problems the user can fix are raised as `CLIError`,
`ValueError`, `FileNotFoundError`, `FileExistsError` or `ImportError`: `main` prints them as one
line, `dfzsl-fast <command>: error: ...`, and returns 2 (`dfzsl-fast --debug <command>` shows
the traceback instead). Every output file is written atomically (`dfzsl_fast.io`).

`evaluate_head` and `write_evaluation` are the reusable pieces of `evaluate` (a `run` command
can call them on its final classifier).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser", "COMMANDS", "CLIError", "evaluate_head", "write_evaluation"]


class CLIError(Exception):
    """A problem with the command line or its inputs; printed without a traceback."""


# ------------------------------------------------------------------------------------------
# sample
# ------------------------------------------------------------------------------------------


def _progress(done: int, total: int, t0: float, file=sys.stderr) -> None:
    if not file.isatty() and done != total:
        return
    rate = done / max(time.perf_counter() - t0, 1e-9)
    end = "\n" if done == total else "\r"
    file.write(f"  sampled {done:,}/{total:,} rows ({rate / 1e6:.2f} M rows/s){end}")
    file.flush()


def _cmd_sample(args: argparse.Namespace) -> int:
    import torch

    import dfzsl_fast
    from dfzsl_fast import testing, theory

    if args.kappa_rule:
        args.kappa = None
    if args.classes < 1 or args.per_class < 0 or args.dim < 2:
        raise SystemExit("sample: need --classes >= 1, --per-class >= 0 and --dim >= 2")
    if args.kappa is not None and args.kappa < 0:
        raise SystemExit("sample: --kappa must be >= 0")
    if args.output and os.path.exists(args.output) and not args.overwrite:
        raise SystemExit(f"sample: {args.output} exists (use --overwrite)")
    device = torch.device(args.device)
    dtype = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
             "float16": torch.float16}[args.dtype]
    gen = torch.Generator().manual_seed(args.seed)
    mu = torch.randn(args.classes, args.dim, generator=gen).to(device)
    kappa = args.kappa
    if kappa is None:
        kappa = float(dfzsl_fast.kappa_from_prototypes(mu.double().cpu(), shared=True)[0])
        print(f"kappa from the DFZSL rule (36 / theta^2, shared max): {kappa:.2f}")
    n_total = args.classes * args.per_class
    labels = torch.arange(args.classes, device=device).repeat_interleave(args.per_class)
    out = torch.empty(n_total, args.dim, dtype=dtype, device=device)
    print(f"drawing {n_total:,} samples: {args.classes} classes x {args.per_class}, "
          f"d = {args.dim}, kappa = {kappa:g}, {args.dtype}, backend = {args.backend}, "
          f"{torch.get_num_threads()} threads")
    # warm-up (first-call costs: page faults of the output, lazy init)
    dfzsl_fast.sample_vmf(mu, kappa, labels=labels[: min(n_total, 1024)], seed=args.seed,
                          backend=args.backend)
    chunk = max(1, args.chunk)
    t0 = time.perf_counter()
    for s in range(0, n_total, chunk):
        e = min(n_total, s + chunk)
        # rows keep their stream (seed, offset + i): chunking does not change the samples
        dfzsl_fast.sample_vmf(mu, kappa, labels=labels[s:e], seed=args.seed, offset=s,
                              out=out[s:e], backend=args.backend)
        _progress(e, n_total, t0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    print(f"throughput: {n_total / dt / 1e6:.3f} M samples/s ({dt:.3f} s)")
    if n_total:
        mu_hat = torch.nn.functional.normalize(mu.double(), dim=1)
        w = (out.double() * mu_hat[labels]).sum(1).cpu()
        z = testing.mean_w_zscore(w, args.dim, kappa)
        norm_err = float((out.double().norm(dim=1) - 1).abs().max())
        verdict = "PASS" if abs(z) < 5 and norm_err < 1e-2 else "FAIL"
        print(f"check: mean mu^T x = {float(w.mean()):.6f}, exact A_d(kappa) = "
              f"{theory.vmf_mean_resultant_length(args.dim, kappa):.6f}, z = {z:+.2f} "
              f"(|z| < 5 expected); max | |x| - 1 | = {norm_err:.1e}  -> {verdict}")
    if args.output:
        tmp = args.output + ".partial"
        torch.save({"samples": out.cpu(), "labels": labels.cpu(), "mu": mu.cpu(),
                    "kappa": kappa, "seed": args.seed}, tmp)
        os.replace(tmp, args.output)  # never leave a half-written output behind
        print(f"saved to {args.output}")
    return 0 if (not n_total or verdict == "PASS") else 1



# ------------------------------------------------------------------------------------------
# evaluate
# ------------------------------------------------------------------------------------------


def evaluate_head(
    head: Any,
    features: Any,
    labels: Any,
    seen_classes: Sequence[int],
    unseen_classes: Sequence[int],
    *,
    protocol: str = "gzsl",
    batch_size: int = 8192,
    normalize_features: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics of a classification head on labelled features.

    Args:
        head: a ``CosineClassifier`` or an ``nn.Linear`` over C classes (any device; the
            features are moved to it); any other module with a (C, D) ``weight`` whose
            forward gives (N, C) logits works too (its ``predict`` is used when it has one).
        features: (N, D) float test features. labels: (N,) int64 in [0, C).
        seen_classes, unseen_classes: class indices (disjoint). With no unseen class the head
            is a closed-set classifier and only accuracies are reported.
        protocol: "gzsl" (S/U/H, predictions over all classes) or "base2new" (also B/N/HM:
            argmax within the base or new block, sample-level).
        batch_size: rows per forward pass of an ``nn.Linear`` head (a cosine head chunks
            internally).
        normalize_features: L2-normalise the rows first (matters for a linear head only).

    Returns:
        ``(metrics, per_class)``. ``metrics``: ``"gzsl"`` = the scalar fields of
        :func:`dfzsl_fast.metrics.gzsl_scores` (S, U, H, n_seen, n_unseen, absent_seen,
        absent_unseen; S or U None when that group has no test sample); ``"base2new"`` =
        :func:`dfzsl_fast.metrics.base_to_new_scores` (B, N, HM, ...) for that protocol;
        ``"closed_set"`` instead of ``"gzsl"`` without unseen classes; plus ``"accuracy"``
        (sample-level top-1 over all classes), ``num_samples``, ``num_classes``.
        ``per_class``: ``"accuracy"`` (C,) float64 (NaN for a class without test samples),
        ``"count"`` (C,) int64, and for base2new ``"accuracy_within_block"`` (C,).

    Raises:
        ValueError: bad protocol, width mismatch, labels out of range, no base or new test
            sample for base2new.
    """
    import torch
    import torch.nn.functional as F

    from . import metrics as M
    from .nn import CosineClassifier

    if protocol not in ("gzsl", "base2new"):
        raise ValueError(f"`protocol`: expected 'gzsl' or 'base2new', got {protocol!r}")
    w = head.weight
    C, D = w.shape
    dev = w.device
    x = torch.as_tensor(features).to(device=dev, dtype=w.dtype)
    y = torch.as_tensor(labels).long().to(dev)
    if x.dim() != 2 or x.shape[1] != D:
        raise ValueError(
            f"features have shape {tuple(x.shape)} but the classifier expects width D = {D}"
        )
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= C):
        raise ValueError(
            f"labels range over [{int(y.min())}, {int(y.max())}] but the classifier has {C} "
            "classes"
        )
    if normalize_features:
        x = F.normalize(x, dim=1)
    seen = torch.as_tensor(list(seen_classes), dtype=torch.int64, device=dev)
    unseen = torch.as_tensor(list(unseen_classes), dtype=torch.int64, device=dev)
    is_cos = isinstance(head, CosineClassifier)
    is_lin = isinstance(head, torch.nn.Linear)

    with torch.no_grad():
        if not is_lin and callable(getattr(head, "predict", None)):
            pred = head.predict(x).to(dev)
        else:
            pred = torch.cat(
                [head(x[s : s + batch_size]).argmax(1) for s in range(0, x.shape[0], batch_size)]
            )

        cache: dict[tuple, torch.Tensor] = {}

        def scorer(classes: torch.Tensor) -> torch.Tensor:
            key = tuple(classes.tolist())
            if key not in cache:
                cls = classes.to(dev)
                parts = []
                for s in range(0, x.shape[0], batch_size):
                    xb = x[s : s + batch_size]
                    if is_cos:
                        from .ops.cosine import cosine_logits

                        parts.append(cosine_logits(xb, w[cls], head.scale, head.eps))
                    elif is_lin:
                        b = None if head.bias is None else head.bias[cls]
                        parts.append(F.linear(xb, w[cls], b))
                    else:  # any module: full logits, then the block's columns
                        parts.append(head(xb)[:, cls])
                cache[key] = torch.cat(parts).float()
            return cache[key]

        acc, count = M.per_class_accuracy(pred, y, classes=torch.arange(C, device=dev),
                                          num_classes=C)
        out: dict[str, Any] = {
            "protocol": protocol,
            "accuracy": float((pred == y).double().mean()),
            "num_samples": int(y.numel()),
            "num_classes": int(C),
            "num_seen_classes": int(seen.numel()),
            "num_unseen_classes": int(unseen.numel()),
        }
        per_class: dict[str, Any] = {"accuracy": acc.cpu(), "count": count.cpu()}
        if unseen.numel() == 0:
            if protocol == "base2new":
                raise ValueError(
                    "base2new needs new (unseen) classes, but the classifier has none"
                )
            present = count > 0
            out["closed_set"] = {
                "accuracy": out["accuracy"],
                "mean_per_class": float(acc[present].mean()),
            }
            return out, per_class
        has_s = bool(torch.isin(y, seen).any())
        has_u = bool(torch.isin(y, unseen).any())
        if has_s and has_u:
            g = M.gzsl_scores(pred, y, seen, unseen)
            out["gzsl"] = {k: v for k, v in g.items() if not k.startswith("per_class")}
        else:  # one group only: report it, S or U undefined
            stray = ~(torch.isin(y, seen) | torch.isin(y, unseen))
            if bool(stray.any()):
                raise ValueError(f"labels {torch.unique(y[stray]).tolist()[:10]} are in neither "
                                 "the seen nor the unseen classes of the classifier")
            grp = seen if has_s else unseen
            present = count[grp] > 0
            mean = float(acc[grp][present].mean())
            absent = grp[~present].tolist()
            out["gzsl"] = {
                "S": mean if has_s else None,
                "U": mean if has_u else None,
                "H": None,
                "n_seen": int(torch.isin(y, seen).sum()),
                "n_unseen": int(torch.isin(y, unseen).sum()),
                "absent_seen": absent if has_s else seen.tolist(),
                "absent_unseen": absent if has_u else unseen.tolist(),
            }
            if protocol == "base2new":
                raise ValueError(
                    f"base2new needs test samples of both base and new classes; the features "
                    f"hold only {'base' if has_s else 'new'} ones"
                )
        if protocol == "base2new":
            out["base2new"] = M.base_to_new_scores(scorer, y, seen, unseen)
            p_base = seen[scorer(seen).argmax(1)]
            p_new = unseen[scorer(unseen).argmax(1)]
            p_blk = torch.where(torch.isin(y, seen), p_base, p_new)
            a_blk, _ = M.per_class_accuracy(p_blk, y, classes=torch.arange(C, device=dev),
                                            num_classes=C)
            per_class["accuracy_within_block"] = a_blk.cpu()
    return out, per_class


def write_evaluation(
    out_dir: str | os.PathLike,
    metrics: dict[str, Any],
    per_class: dict[str, Any],
    class_names: Sequence[str],
    seen_classes: Sequence[int],
    *,
    plot: bool = True,
) -> list[Path]:
    """Write ``metrics.json``, ``per_class.csv`` and ``plots/per_class_accuracy.png`` (atomic).

    Args:
        out_dir: folder (created if missing).
        metrics, per_class: from :func:`evaluate_head` (``metrics`` may carry extra keys, e.g.
            input paths; they go to the JSON as they are).
        class_names: C names. seen_classes: seen class indices.
        plot: draw the bar chart (skipped with a warning when matplotlib is missing).

    Returns:
        The paths written.
    """
    from .io import save_csv, save_json

    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    written = [save_json(out / "metrics.json", metrics)]
    seen = set(int(c) for c in seen_classes)
    acc = per_class["accuracy"].tolist()
    cnt = per_class["count"].tolist()
    blk = per_class.get("accuracy_within_block")
    blk = None if blk is None else blk.tolist()
    cols = ["class_index", "class_name", "group", "n_test", "accuracy"]
    if blk is not None:
        cols.append("accuracy_within_block")
    rows = []
    for c, name in enumerate(class_names):
        r = {"class_index": c, "class_name": name, "group": "seen" if c in seen else "unseen",
             "n_test": int(cnt[c]), "accuracy": acc[c]}
        if blk is not None:
            r["accuracy_within_block"] = blk[c]
        rows.append(r)
    written.append(save_csv(out / "per_class.csv", rows, cols))
    if plot:
        try:
            from .plots import plot_per_class_accuracy
        except ImportError:  # pragma: no cover
            plot_per_class_accuracy = None
        scores = None
        if "gzsl" in metrics:
            scores = {k: metrics["gzsl"][k] for k in ("S", "U", "H")}
        elif "closed_set" in metrics:
            scores = {"acc": metrics["closed_set"]["accuracy"]}
        try:
            if plot_per_class_accuracy is None:
                raise ImportError("matplotlib")
            written.append(
                plot_per_class_accuracy(
                    per_class["accuracy"], list(class_names),
                    [c in seen for c in range(len(class_names))],
                    out / "plots" / "per_class_accuracy.png", scores=scores,
                    title="per-class accuracy (GZSL: over all classes)",
                )
            )
        except ImportError as exc:
            print(f"warning: no plot ({exc}); `pip install matplotlib` for it", file=sys.stderr)
    return written


def _labels_in_classifier_space(ff: Any, names: list[str]) -> Any:
    """The feature file's labels as indices of the classifier's classes (matched by name)."""
    import torch

    C = len(names)
    if ff.class_names is None or list(ff.class_names) == list(names):
        if int(ff.labels.max()) >= C:
            raise CLIError(
                f"--features: label {int(ff.labels.max())} but the classifier has {C} classes "
                "(labels must be indices of the classifier's classes)"
            )
        return ff.labels
    if len(set(names)) != len(names):
        raise CLIError(
            "--features: its class_names differ from the classifier's, and the classifier's "
            "names are not unique, so labels cannot be matched by name"
        )
    index = {n: i for i, n in enumerate(names)}
    used = torch.unique(ff.labels).tolist()
    missing = [ff.class_names[u] for u in used if ff.class_names[u] not in index]
    if missing:
        raise CLIError(
            f"--features: {len(missing)} of its classes are not classes of the classifier, "
            f"e.g. {missing[:5]}"
        )
    lut = torch.tensor([index.get(n, -1) for n in ff.class_names], dtype=torch.int64)
    print("note: the feature file lists its classes in another order; labels matched by name")
    return lut[ff.labels]


def _pct(v: float | None) -> str:
    return "  n/a" if v is None else f"{100 * v:5.2f}"


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .io import load_classifier, load_features, provenance

    out = Path(args.out).expanduser() if args.out else None
    if out is not None and not args.overwrite:
        clash = [f for f in ("metrics.json", "per_class.csv") if (out / f).exists()]
        if clash:
            raise CLIError(f"--out: {out} already holds {clash} (use --overwrite)")
    head, meta = load_classifier(args.classifier, device=args.device)
    ff = load_features(args.features)
    if args.split:
        ff = ff.select([s for s in args.split.split(",") if s])
        if len(ff) == 0:
            raise CLIError(f"--split {args.split}: no samples")
    names = meta["class_names"]
    labels = _labels_in_classifier_space(ff, names)
    seen, unseen = meta["seen_classes"], meta["unseen_classes"]
    print(f"classifier: {args.classifier} ({meta['kind']}, {len(names)} classes: {len(seen)} seen, "
          f"{len(unseen)} unseen; D = {meta['in_features']})")
    print(f"features:   {args.features} ({len(ff)} samples"
          f"{', split ' + args.split if args.split else ''})")
    metrics, per_class = evaluate_head(
        head, ff.features, labels, seen, unseen, protocol=args.protocol,
        batch_size=args.batch_size, normalize_features=args.normalize_features,
    )
    if "closed_set" in metrics:
        cs = metrics["closed_set"]
        print(f"closed set (no unseen classes): accuracy = {_pct(cs['accuracy'])}  "
              f"mean per class = {_pct(cs['mean_per_class'])}")
    else:
        g = metrics["gzsl"]
        print(f"GZSL   S = {_pct(g['S'])}  U = {_pct(g['U'])}  H = {_pct(g['H'])}   "
              f"(per-class means; {g['n_seen']} seen / {g['n_unseen']} unseen test samples)")
        if g["H"] is None:
            print("note: only one group has test samples, so H is undefined")
    if "base2new" in metrics:
        b = metrics["base2new"]
        print(f"B2N    B = {_pct(b['B'])}  N = {_pct(b['N'])}  HM = {_pct(b['HM'])}  "
              f"(sample-level, argmax within base / within new)")
    if out is not None:
        metrics["inputs"] = {
            "classifier": str(args.classifier), "features": str(args.features),
            "split": args.split, "normalize_features": bool(args.normalize_features),
        }
        metrics["classifier_provenance"] = meta.get("provenance", {})
        metrics["evaluated"] = provenance()
        written = write_evaluation(out, metrics, per_class, names, seen, plot=not args.no_plot)
        print("wrote " + ", ".join(str(p) for p in written))
    return 0


EVALUATE_EXAMPLE = """\
example:
  dfzsl-fast evaluate --classifier runs/cub/classifier.safetensors \\
      --features features/cub_test.safetensors --out runs/cub/eval

inputs:
  --classifier  a head saved by dfzsl_fast.io.save_classifier (or `dfzsl-fast inject`); its
                metadata says which classes are seen and which unseen.
  --features    a feature file (.safetensors, .npz or .pt dict) with `features` (N, D) and
                `labels` (N,): indices of the classifier's classes. If the file also has
                `class_names`, labels are matched to the classifier's classes by name.

outputs (with --out): metrics.json (gzsl: S, U, H; base2new: B, N, HM; fractions in [0, 1]),
per_class.csv (class_index, class_name, group, n_test, accuracy), plots/per_class_accuracy.png.
GZSL S and U are per-class means, predictions over all classes; base-to-new B and N are
sample-level accuracies with the argmax inside the base (resp. new) classes.
"""


def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="GZSL S/U/H (and base-to-new B/N/HM) of a saved classifier on a feature file",
        description="Evaluate a saved classifier on labelled test features: print S/U/H (and "
        "B/N/HM), write metrics.json, per_class.csv and a per-class accuracy plot.",
        epilog=EVALUATE_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--classifier", required=True, metavar="PATH",
                   help="saved classifier (.safetensors)")
    p.add_argument("--features", required=True, metavar="FILE",
                   help="test feature file (.safetensors, .npz, .pt)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="folder for metrics.json, per_class.csv, plots/ (default: print only)")
    p.add_argument("--protocol", default="gzsl", choices=["gzsl", "base2new"],
                   help="gzsl (default): S/U/H; base2new: also B/N/HM")
    p.add_argument("--split", default=None, metavar="NAME[,NAME]",
                   help="use only rows of these splits of the feature file (e.g. test)")
    p.add_argument("--normalize-features", action="store_true",
                   help="L2-normalise features first (for a linear head trained on normalised "
                   "features; a cosine head normalises anyway)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--batch-size", type=int, default=8192, help="rows per forward pass")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--overwrite", action="store_true",
                   help="replace metrics.json / per_class.csv already in --out")
    p.set_defaults(func=_cmd_evaluate)


# ------------------------------------------------------------------------------------------
# inject
# ------------------------------------------------------------------------------------------


def _read_new_names(values: list[str] | None, embedded: list[str] | None) -> list[str]:
    from .io import load_names

    if values:
        if len(values) == 1 and Path(values[0]).expanduser().is_file():
            return load_names(values[0])
        return [v.strip() for v in values]
    if embedded is not None:
        return embedded
    raise CLIError(
        "--new-names: give a names file (one per line, or a JSON list) or the names themselves; "
        "the descriptor file holds none"
    )


def _cmd_inject(args: argparse.Namespace) -> int:
    import torch

    from .io import (
        load_classifier,
        load_descriptors,
        save_classifier,
        sha256_file,
    )
    from .nn import CosineClassifier
    from .pipeline.icis import head_targets, icis_extend, inject

    out = Path(args.out).expanduser()
    if out.exists() and not args.overwrite:
        raise CLIError(f"--out: {out} exists (use --overwrite)")
    head, meta = load_classifier(args.classifier, device=args.device)
    names = meta["class_names"]
    C = len(names)
    a_base, base_names = load_descriptors(args.base_descriptors)
    a_new, new_embedded = load_descriptors(args.new_descriptors)
    new_names = _read_new_names(args.new_names, new_embedded)
    if a_base.shape[0] != C:
        raise CLIError(
            f"--base-descriptors: {a_base.shape[0]} rows but the classifier has {C} classes; "
            "give one descriptor per classifier row, in the same order"
        )
    if base_names is not None and base_names != names:
        raise CLIError("--base-descriptors: its names differ from the classifier's class names "
                       "(same classes, same order expected)")
    if a_new.shape[1] != a_base.shape[1]:
        raise CLIError(
            f"--new-descriptors: width {a_new.shape[1]} differs from --base-descriptors' "
            f"{a_base.shape[1]}"
        )
    if len(new_names) != a_new.shape[0]:
        raise CLIError(
            f"--new-names: {len(new_names)} names for {a_new.shape[0]} new descriptor rows"
        )
    clash = sorted(set(new_names) & set(names))
    if clash or len(set(new_names)) != len(new_names):
        raise CLIError(f"--new-names: duplicate or existing class names {(clash or new_names)[:5]}")
    seen, unseen = meta["seen_classes"], meta["unseen_classes"]
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
    fit = dict(
        hidden=args.hidden, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        loss=args.loss, early_stopping=not args.no_early_stopping, seed=args.seed,
        include_unseen=not args.no_include_unseen,
        normalize_descriptors=not args.no_normalize_descriptors,
    )
    print(f"ICIS: {len(seen)} seen classes -> {len(new_names)} new classes "
          f"(descriptors d_a = {a_base.shape[1]}, {meta['kind']} head, D = {meta['in_features']})")
    extended_view, _, info = icis_extend(
        view, a_base[seen_t], a_unseen, rescale=args.rescale, return_model=True,
        progress=not args.no_progress, **fit,
    )
    new_rows = head_targets(extended_view)[-len(new_names):]
    extended = inject(head, new_rows)  # rescaling was already applied by icis_extend
    provenance = {
        "icis": {**fit, "rescale": args.rescale, "epochs_run": info.epochs_run,
                 "stopped_early": info.stopped_early,
                 "final_loss": float(info.losses[-1]) if info.epochs_run else None,
                 "seconds": round(info.seconds, 3)},
        "base_classifier": {"path": str(args.classifier),
                            "sha256": sha256_file(Path(args.classifier).expanduser())},
        "base_descriptors": str(args.base_descriptors),
        "new_descriptors": str(args.new_descriptors),
        "base_provenance": meta.get("provenance", {}),
    }
    save_classifier(out, extended, class_names=list(names) + list(new_names),
                    seen_classes=seen, metadata=provenance)
    print(f"ICIS: {info.epochs_run} epochs{' (early stop)' if info.stopped_early else ''}, "
          f"final loss {provenance['icis']['final_loss']:.4f}, {info.seconds:.1f} s")
    print(f"saved {C + len(new_names)} classes ({len(seen)} seen, "
          f"{len(unseen) + len(new_names)} unseen) to {out}")
    return 0


INJECT_EXAMPLE = """\
example:
  dfzsl-fast inject --classifier runs/cub/base_head.safetensors \\
      --base-descriptors att_base.npy --new-descriptors att_new.npy \\
      --new-names new_classes.txt --out runs/cub/extended.safetensors

inputs:
  --classifier        a saved head (dfzsl_fast.io.save_classifier) over the base classes.
  --base-descriptors  (C, A) descriptors, one row per classifier class in the classifier's
                      order: attributes or text embeddings. .npy; .npz / .pt dict with
                      `descriptors` (optional `names`, checked against the classifier); .pt
                      tensor; .safetensors with `descriptors`.
  --new-descriptors   (C_new, A) descriptors of the new classes, same formats and width.
  --new-names         a file (one name per line, or a JSON list) or the names themselves;
                      optional when the new-descriptor file embeds `names`.

output: the head extended with C_new rows predicted by ICIS (rows 0..C-1 unchanged); the new
classes are marked unseen in its metadata, with the ICIS settings and inputs as provenance.
Evaluate it with `dfzsl-fast evaluate`.
"""


def _add_inject(sub: Any) -> None:
    p = sub.add_parser(
        "inject",
        help="ICIS: add new classes to a saved classifier from class descriptors alone",
        description="Image-free classifier injection (ICIS): train the descriptor/weight "
        "autoencoders on the seen rows of a saved head and their descriptors, predict rows for "
        "the new classes' descriptors, and save the extended head.",
        epilog=INJECT_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--classifier", required=True, metavar="PATH", help="base head (.safetensors)")
    p.add_argument("--base-descriptors", required=True, metavar="FILE",
                   help="(C, A) descriptors of the classifier's classes, in its row order")
    p.add_argument("--new-descriptors", required=True, metavar="FILE",
                   help="(C_new, A) descriptors of the new classes")
    p.add_argument("--new-names", nargs="+", default=None, metavar="NAMES",
                   help="names file (one per line / JSON list), or the names themselves")
    p.add_argument("--out", required=True, metavar="PATH", help="extended head (.safetensors)")
    p.add_argument("--epochs", type=int, default=1000, help="max epochs (default 1000)")
    p.add_argument("--hidden", type=int, default=2048, help="latent width H (default 2048)")
    p.add_argument("--batch-size", type=int, default=16, help="rows per batch (default 16)")
    p.add_argument("--lr", type=float, default=1e-5, help="Adam learning rate (default 1e-5)")
    p.add_argument("--loss", default="cosine", choices=["cosine", "mse"],
                   help="row loss (default cosine, as the paper)")
    p.add_argument("--rescale", default="none", choices=["none", "seen_norm"],
                   help="scale new rows to the seen rows' mean norm (linear heads; default none)")
    p.add_argument("--no-early-stopping", action="store_true",
                   help="run all epochs (default: the reference slope rule)")
    p.add_argument("--no-include-unseen", action="store_true",
                   help="leave the new descriptors out of training")
    p.add_argument("--no-normalize-descriptors", action="store_true",
                   help="use descriptors as given (default: L2-normalise rows)")
    p.add_argument("--seed", type=int, default=0, help="seed of init and shuffling (default 0)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=_cmd_inject)


# ------------------------------------------------------------------------------------------
# info, sample, extract-features
# ------------------------------------------------------------------------------------------


def _cmd_info(args: argparse.Namespace) -> int:
    from ._extension import show_config

    show_config()
    return 0


def _add_info(sub: Any) -> None:
    p = sub.add_parser("info", help="versions, build facts and which backends are available here")
    p.set_defaults(func=_cmd_info)


def _add_sample(sub: Any) -> None:
    s = sub.add_parser(
        "sample",
        help="draw exact vMF samples for random class means; print throughput and a check",
        description="Draw exact von Mises-Fisher samples around random class means, report "
        "throughput, and check the mean cosine to the means against exact theory A_d(kappa).",
        epilog="example:\n  dfzsl-fast sample --classes 200 --per-class 5000 --dim 512 "
        "--kappa 1000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("--classes", type=int, default=200, help="number of classes (default 200)")
    s.add_argument("--per-class", type=int, default=5000, help="samples per class (default 5000)")
    s.add_argument("--dim", type=int, default=512, help="feature dimension d (default 512)")
    s.add_argument("--kappa", type=float, default=1000.0,
                   help="concentration kappa (default 1000)")
    s.add_argument("--kappa-rule", action="store_true",
                   help="use DFZSL's rule 36/theta^2 (shared max) on the random means instead")
    s.add_argument("--dtype", default="float32",
                   choices=["float32", "float64", "bfloat16", "float16"])
    s.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    s.add_argument("--backend", default=None, choices=["auto", "native", "triton", "torch"])
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--chunk", type=int, default=1 << 18, help="rows per call (default 262144)")
    s.add_argument("--output", default=None, help="save samples, labels and means (torch.save)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    s.set_defaults(func=_cmd_sample)


def _add_extract(sub: Any) -> None:
    from . import extract  # light: open_clip is imported only when a model is built

    p = sub.add_parser(
        "extract-features",
        help="CLIP image features of an image folder (open_clip, local weights) to a file",
        description="Extract unnormalised CLIP image features of root/<class>/<images> with "
        "open_clip and local weights; write them with labels, class names and paths.",
        epilog=extract.EXAMPLE.replace("%(prog)s", "dfzsl-fast extract-features"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    extract.add_arguments(p)
    p.set_defaults(func=extract.run_from_args)


#: Sub-command registrars, in --help order: each takes the sub-parsers object.
def _add_pipeline(sub: Any) -> None:
    from .cli_run import add_demo, add_run

    add_demo(sub)
    add_run(sub)


COMMANDS: list[Callable[[Any], None]] = [
    _add_info,
    _add_pipeline,
    _add_sample,
    _add_evaluate,
    _add_inject,
    _add_extract,
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dfzsl-fast",
        description="dfzsl_fast: fast, exact data-free generalized zero-shot learning on CLIP.",
        epilog="run `dfzsl-fast <command> --help` for a command's options and an example",
    )
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="<command>")
    for register in COMMANDS:
        register(sub)
    return p


_USER_ERRORS = (CLIError, ValueError, FileNotFoundError, FileExistsError, ImportError)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the command, return its exit code.

    User errors print ``dfzsl-fast <command>: error: <message>`` and return 2.
    """
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except _USER_ERRORS as exc:
        if args.debug:
            raise
        print(f"dfzsl-fast {args.cmd}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
