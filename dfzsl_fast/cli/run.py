"""`dfzsl-fast run`: the whole DFZSL pipeline (`dfzsl_fast.pipeline.DFZSL`) from a base
classifier and class names to a classifier over base + new classes, with a results folder."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ._common import (
    SELECTION_NOTE,
    UsageError,
    add_set_option,
    apply_overrides,
    build_config,
    check_device,
    check_input_file,
    check_output_dir,
    default_out_dir,
    far_below_zero_shot,
    int_option,
    legend,
    log_to,
)

EXAMPLE = """examples:
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

CONFIG is a shipped preset (AWA2, CUB, SUN, FLO, APY, ImageNet, Caltech101, ...; list them
with `dfzsl-fast configs`, show one with `dfzsl-fast configs NAME`) or a JSON file written by
DFZSLConfig.to_json (or a run's config.json). Unknown keys are an error. For a preset,
--profile fast (default) shortens the schedule for a first result and --profile published
keeps the paper's; a JSON file is used as written unless --profile is given. The run folder
(--out, default runs/run-<YYYYmmdd-HHMMSS>/) gets config.json (with the profile),
classifier.safetensors, run.json (prompt tuning,
estimate, timings, cached stages), log.txt and cache/ (per-stage results: re-running with
--resume redoes only what changed, and the generator resumes from its last epoch); with
--test-features also metrics.json and per_class.csv (schema: dfzsl_fast.evaluation; the
zero-shot CLIP baseline under `baselines`) and plots/.
"""

__all__ = ["add", "run", "load_run_config"]



def add(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="the whole DFZSL pipeline: base classifier + class names -> extended classifier",
        description="Extend a classifier trained on CLIP image features of base classes to new "
        "classes known only by name, without any image: vMF virtual features, prompt tuning, "
        "TF-VAEGAN, final cosine classifier.",
        epilog=EXAMPLE,
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
    p.add_argument("--attributes", default=None, metavar="FILE",
                   help="(C_all, K) class attributes, one row per class in --class-names order "
                   "(e.g. xlsa17 `att`), for --set generator.semantics=attributes|combined")
    p.add_argument("--out", default=None,
                   help="run folder (default: runs/run-<YYYYmmdd-HHMMSS>)")
    p.add_argument("--profile", default=None, choices=["fast", "published"],
                   help="fast (default for presets): a shortened schedule for a first result; "
                   "published: the paper's schedule")
    p.add_argument("--overwrite", action="store_true", help="reuse a non-empty run folder")
    p.add_argument("--resume", action="store_true",
                   help="continue a run folder: cached stages are reused")
    add_set_option(p, "generator.epochs=20")
    p.add_argument("--seed", type=int_option(0, 2**63 - 1), default=None,
                   help="override the config's seed")
    p.add_argument("--device", default=None, help="cpu or cuda (default: where the teacher is)")
    p.add_argument("--no-plots", action="store_true", help="skip the plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    p.set_defaults(func=run)


def _config_api(*names: str):
    """The named functions of `dfzsl_fast.config` (profiles, presets), or a clear UsageError
    when this build of the library does not have them yet."""
    from .. import config

    missing = [n for n in names if not hasattr(config, n)]
    if missing:
        raise UsageError(f"this dfzsl_fast build lacks dfzsl_fast.config.{', '.join(missing)} "
                         "(profiles / preset descriptions); update the package")
    return [getattr(config, n) for n in names]


def _has_profile_field(cls) -> bool:
    """Whether this library's DFZSLConfig records its profile itself (branch `lib`)."""
    return "profile" in getattr(cls, "__dataclass_fields__", {})


def load_run_config(spec: str, overrides: list[str] | None = None,
                    profile: str | None = None):
    """A `DFZSLConfig` from a preset name or a JSON file, with a profile (``fast`` or
    ``published``, applied before the overrides) and dotted `KEY=VALUE` overrides.

    Raises:
        UsageError: an unknown preset, key or a bad value. FileNotFoundError / ValueError: a
            missing or unreadable config file.
    """
    from ..config import DFZSLConfig, get_config

    p = Path(spec).expanduser()
    is_file = p.suffix.lower() == ".json" or p.is_file()
    if is_file:
        import json

        data = json.loads(check_input_file(p, "CONFIG").read_text(encoding="utf-8"))
        if isinstance(data, dict) and not _has_profile_field(DFZSLConfig):
            data.pop("profile", None)  # recorded by `dfzsl-fast run` in config.json
        cfg = build_config(DFZSLConfig, data, "CONFIG").to_dict()
    else:
        try:
            cfg = get_config(spec).to_dict()
        except ValueError as exc:
            raise UsageError(f"CONFIG: {exc}") from exc
    if profile is not None:
        (apply_profile,) = _config_api("apply_profile")
        try:
            cfg = apply_profile(DFZSLConfig.from_dict(cfg), profile).to_dict()
        except ValueError as exc:
            raise UsageError(f"--profile: {exc}") from exc
    cfg = build_config(DFZSLConfig, apply_overrides(cfg, overrides))  # counts bounded there
    if not 0 <= cfg.seed < 2**63:
        raise UsageError(f"--set seed: expected an int in [0, 2**63 - 1], got {cfg.seed}")
    return cfg


def _load_teacher(path: str, names: list[str], seen_names_file: str | None):
    """(weight (C_s, D), seen indices into names) from a classifier file or a weight matrix."""
    import torch

    from ..io import load_classifier, load_descriptors, load_names

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
        teacher_names = load_names(check_input_file(seen_names_file, "--seen-names"))
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


def _text_source(args: argparse.Namespace):
    """(text_tower, text_features) from the command-line choice."""
    import torch

    given = [o for o, v in (("--clip-model", args.clip_model),
                            ("--text-features", args.text_features),
                            ("--minilm", args.minilm)) if v]
    if len(given) != 1:
        raise UsageError("give exactly one text source: --clip-model/--clip-weights, "
                         f"--text-features or --minilm (got {given or 'none'})")
    if args.text_features:
        from ..io import load_descriptors

        t, _ = load_descriptors(check_input_file(args.text_features, "--text-features"))
        return None, t.to(torch.float32)
    if args.minilm:
        from ..text.towers import MiniLMTextTower

        return MiniLMTextTower(), None
    if not args.clip_weights:
        raise UsageError("--clip-weights: required with --clip-model (a local weights file)")
    if not Path(args.clip_weights).expanduser().exists():
        raise FileNotFoundError(f"--clip-weights: no file at {args.clip_weights}")
    from ..text.towers import OpenCLIPTextTower

    return OpenCLIPTextTower.from_pretrained(
        args.clip_model, args.clip_weights, quick_gelu=args.quick_gelu, device=args.device
    ), None


def run(args: argparse.Namespace) -> int:
    # every option and input is checked before the run folder is created
    if args.profile is None:
        is_file = Path(args.config).suffix.lower() == ".json" or Path(args.config).is_file()
        args.profile = "as written in the file" if is_file else "fast"
        from .. import config as _config

        if not is_file and not hasattr(_config, "apply_profile"):  # an older library
            args.profile = "as shipped (this dfzsl_fast build has no profiles)"
    cfg = load_run_config(args.config, args.set,
                          profile=args.profile if args.profile in ("fast", "published") else None)
    if args.seed is not None:
        cfg.seed = args.seed
    device = check_device(args.device)
    if args.overwrite and args.resume:
        raise UsageError("--overwrite and --resume: give one of them")

    import torch

    from ..distributed import broadcast_object, init_from_env, rank_world, shutdown

    # under torchrun: every rank runs stages 1-3 (deterministic, the same results) and trains
    # its share of each classifier batch (data parallel); rank 0 alone writes the run folder
    dev, started = init_from_env(torch.device(device) if device is not None else
                                 torch.device("cpu"))
    if started and device is not None:
        device = str(dev)
    rank, world = rank_world()
    out_arg = args.out if args.out is not None else broadcast_object(default_out_dir("run"))
    out = check_output_dir(out_arg, "--out", reuse=args.overwrite or args.resume,
                           reuse_flag="--resume to continue it, or --overwrite")

    from ..evaluation import labels_in_class_space
    from ..io import load_descriptors, load_features, load_names
    from ..pipeline.dfzsl import DFZSL

    names = load_names(check_input_file(args.class_names, "--class-names"))
    weight, seen = _load_teacher(args.teacher, names, args.seen_names)
    tower, text_features = _text_source(args)
    test = None
    if args.test_features:
        ff = load_features(check_input_file(args.test_features, "--test-features"))
        y = labels_in_class_space(ff.labels, ff.class_names, names, what="--test-features")
        test = (ff.features.to(torch.float32), y)
    pipe = DFZSL(cfg, cache_dir=out / "cache", device=device,
                 progress=not args.no_progress and rank == 0)
    attributes = None
    if args.attributes:
        attributes, _ = load_descriptors(check_input_file(args.attributes, "--attributes"))
    pipe.check_inputs(weight, names, seen, tower, text_features, attributes)
    args._attributes = attributes
    if isinstance(getattr(cfg, "profile", None), str):
        args.profile = cfg.profile  # what the config says it is (a file's own profile)
    if rank == 0:
        print(f"dfzsl-fast run: config {args.config}, profile {args.profile}, results in {out}",
              flush=True)
    from .. import config as _config

    if hasattr(_config, "preset_mismatch") and rank == 0:  # warnings only
        for warning in _config.preset_mismatch(cfg, names, len(seen)):
            print(f"warning: {warning}", flush=True)

    rc = None  # an exception ends the group without waiting for ranks that may never arrive
    try:
        rc = _fit_on_rank(args, cfg, pipe, out, names, weight, seen, tower, text_features,
                          test, rank, world)
        return rc
    finally:
        if started:
            shutdown(sync=rc is not None)


def _fit_on_rank(args, cfg, pipe, out, names, weight, seen, tower, text_features, test, rank,
                 world) -> int:
    from ..distributed import barrier

    barrier()  # every rank checked the folder before rank 0 creates it
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    barrier()
    if rank != 0:  # the other ranks take part in the data-parallel steps, write nothing
        pipe.progress = False
        pipe.fit(weight, names, seen, text_tower=tower, text_features=text_features,
                 class_attributes=args._attributes)
        return 0
    if world > 1:
        print(f"dfzsl-fast run: {world} processes (torch.distributed), rank 0 writes", flush=True)
    with log_to(out, args.log_level):
        return _fit_and_report(args, cfg, pipe, out, names, weight, seen, tower, text_features,
                               test)


def _fit_and_report(args, cfg, pipe, out: Path, names, weight, seen, tower, text_features,
                    test) -> int:
    from ..evaluation import (
        build_metrics,
        evaluate_head,
        plot_feature_projection,
        write_evaluation,
    )
    from ..io import save_classifier, save_json
    from ..pipeline.dfzsl import zero_shot_classifier

    data = cfg.to_dict()
    data.setdefault("profile", args.profile)  # the library's own field wins where it has one
    save_json(out / "config.json", data)
    t0 = time.perf_counter()
    res = pipe.fit(weight, names, seen, text_tower=tower, text_features=text_features,
                   class_attributes=args._attributes,
                   eval_data=test)
    save_classifier(out / "classifier.safetensors", res.classifier,
                    metadata={"command": " ".join(sys.argv)})
    details: dict[str, Any] = {
        "config": args.config,
        "profile": args.profile,
        "prompt_tuning": res.prompt_tuning,
        "virtual_kept": res.keep.total_kept if res.keep is not None else None,
        "timings_s": {**res.timings, "total": time.perf_counter() - t0},
        "cached_stages": res.cached,
        "fell_back_to_zero_shot": res.fell_back,
    }
    sections = {
        "selection": res.classifier.metadata.get("selection", "last epoch"),
        "estimate": res.estimate.to_dict() if res.estimate is not None else None,
        "paper_protocol_max_over_epochs": res.scores.get("paper_protocol_max_over_epochs"),
    }
    save_json(out / "run.json", {**details, **sections})
    print(f"prompt tuning: {res.prompt_tuning}")
    if res.estimate is not None:
        print(f"estimate: {res.estimate}" + ("; returned zero-shot CLIP instead "
                                              "(--set classifier.fallback=false keeps it)"
                                              if res.fell_back else ""))
    written = ["classifier.safetensors", "run.json"]
    if test is not None:
        clf = res.classifier
        seen_t, unseen_t = clf.seen_classes.tolist(), clf.unseen_classes.tolist()
        s, pc = evaluate_head(clf, *test, seen_t, unseen_t, protocol=cfg.protocol)
        zs, zs_pc = evaluate_head(zero_shot_classifier(res.text_features, names, seen),
                                  *test, seen_t, unseen_t, protocol=cfg.protocol)
        keys = ("S", "U", "H") if cfg.protocol == "gzsl" else ("B", "N", "HM")
        block = "gzsl" if cfg.protocol == "gzsl" else "base2new"
        for label, v in (("zero-shot", zs), ("DFZSL", s)):
            print(f"{label:<10} " + "  ".join(
                f"{k} {'n/a' if v[block][k] is None else f'{100 * v[block][k]:5.1f}'}"
                for k in keys))
        print(legend(keys))
        warn = far_below_zero_shot("DFZSL", s[block][keys[2]], zs[block][keys[2]])
        if warn:
            print(warn)
        mx = sections["paper_protocol_max_over_epochs"]
        if isinstance(mx, dict) and mx.get("H") is not None:
            print(SELECTION_NOTE.format(h=f"H {100 * mx['H']:.1f}",
                                        selection=sections["selection"]))
        metrics = build_metrics(
            "run", s, baselines={"zero_shot": zs}, details=details,
            inputs={"teacher": str(args.teacher), "class_names": str(args.class_names),
                    "test_features": str(args.test_features)},
            classifier_provenance=clf.metadata, **sections,
        )
        write_evaluation(out, metrics, pc, names, seen_t, baselines_per_class={"zero_shot": zs_pc},
                         plot=not args.no_plots, plot_title="DFZSL per-class accuracy")
        if not args.no_plots:
            plot_feature_projection(out, names, seen_t, unseen_t, {**res.features, "test": test})
        written += ["metrics.json", "per_class.csv"]
    print(f"wrote {', '.join(written)} to {out}")
    print(f"results in {out}")
    return 0
