"""The README's "Combined semantics" table: text vs xlsa17 attributes vs both (issue 12, CFZSL).

On a simulated world built from an xlsa17 dataset's real class names (AWA2 or APY, whose real
attributes exist in ../shared/data/xlsa17), runs ICIS (`icis_linear`) and DFZSL (TF-VAEGAN
conditioned on the chosen semantics, demo schedule) with ``semantics`` = text, attributes and
combined, and prints GZSL S / U / H on the world's test images.

Two worlds (``--world``):

- ``demo``: the demo world (`dfzsl_fast.demo.demo_world`): images are generated from the MiniLM
  text embeddings of the names only, so the attributes can only help through what they share
  with the names' text (a world that favours text by construction);
- ``visual``: the same construction, but a class's *image* semantics are its MiniLM embedding
  **and** its centred real attributes (share ``--attr-share`` of the energy), while the methods
  still get the CLIP-like text features of the names alone (the MiniLM part through the same
  projection). It models what real CLIP lacks and attributes carry: visual properties that the
  name's text feature misses.

The combined weight is chosen on held-out base classes only (`semantics.select_attribute_weight`);
no number printed here was used to choose anything.

    python scripts/semantics_table.py --world demo --seeds 0 1
    python scripts/semantics_table.py --world visual --seeds 0 1 --json runs/semantics.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dfzsl_fast.data import load_att_splits, shared_data_dir
from dfzsl_fast.demo import _split_for, demo_config
from dfzsl_fast.evaluation import evaluate
from dfzsl_fast.nn import CosineClassifier, ExtendedClassifier
from dfzsl_fast.pipeline.dfzsl import DFZSL, zero_shot_classifier
from dfzsl_fast.pipeline.icis import icis_linear
from dfzsl_fast.world import build_world

SEMANTICS = ("text", "attributes", "combined")


def build(dataset: str, kind: str, seed: int, attr_share: float):
    """(world, names, text features given to the methods (C, D), attributes (C, K))."""
    template, names, unseen = _split_for(dataset)
    root = shared_data_dir()
    if root is None:
        raise SystemExit("needs the xlsa17 attributes: ../shared/data or $DFZSL_SHARED_DATA")
    split = load_att_splits(root / "xlsa17" / dataset)
    if split.clean_names() != names:
        raise SystemExit("class order of the world and of the attributes differ")
    att = split.attributes.float()
    from dfzsl_fast.text.minilm import encode

    cache = Path.home() / ".cache" / "dfzsl_fast" / "minilm"
    e = torch.as_tensor(encode([template.format(n) for n in names], cache_dir=cache)).double()
    e = F.normalize(e, dim=1)
    if kind == "demo":
        world = build_world(names, unseen=unseen, template=template, seed=seed,
                            embeddings=e)
        return world, names, world.text_features, att
    a = att.double()
    a = F.normalize(a - a.mean(0), dim=1)
    # image-side semantics: [text, attributes] with the attribute part's energy share attr_share
    img = torch.cat([(1 - attr_share) ** 0.5 * e, attr_share ** 0.5 * a], dim=1)
    world = build_world(names, unseen=unseen, template=template, seed=seed, embeddings=img)
    P = world.projection.double()  # (E + K, D)
    text = F.normalize(e @ P[: e.shape[1]], dim=1).float()  # the names' text alone
    return world, names, text, att


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="AWA2", choices=["AWA2", "APY"])
    ap.add_argument("--world", default="demo", choices=["demo", "visual"])
    ap.add_argument("--attr-share", type=float, default=0.5,
                    help="visual world: attributes' share of the image-side semantics")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--no-dfzsl", action="store_true", help="ICIS only")
    ap.add_argument("--all-epochs", action="store_true",
                    help="DFZSL: train the final classifier for all its epochs "
                    "(classifier.select_epochs=false; the held-out choice may keep the starts, "
                    "and then the generator, hence the semantics, has no effect)")
    ap.add_argument("--json", default=None, help="write all scores here")
    a = ap.parse_args()

    out: list[dict] = []
    for seed in a.seeds:
        t0 = time.perf_counter()
        world, names, T, att = build(a.dataset, a.world, seed, a.attr_share)
        seen, unseen = world.seen_classes, world.unseen_classes
        x, y = world.test_features, world.test_labels
        print(f"seed {seed}: {a.dataset} {a.world} world, {seen.numel()}/{unseen.numel()} "
              f"classes, K = {att.shape[1]} ({time.perf_counter() - t0:.0f} s)", flush=True)

        def row(method, sem, clf, extra="", seed=seed, x=x, y=y):
            r = evaluate(clf, x, y)
            out.append({"seed": seed, "method": method, "semantics": sem,
                        **{k: float(r[k]) for k in "SUH"}})
            print(f"  {method:<6} {sem:<10} S {100 * r['S']:5.1f}  U {100 * r['U']:5.1f}  "
                  f"H {100 * r['H']:5.1f} {extra}", flush=True)

        row("zs", "text", zero_shot_classifier(T, names, seen))
        order = torch.cat([seen, unseen])
        inv = torch.empty_like(order)
        inv[order] = torch.arange(order.numel())
        head = CosineClassifier(world.teacher_weight, scale=100.0)
        for sem in SEMANTICS:
            lin = icis_linear(head, T[seen], T[unseen], seed=seed, seen_attributes=att[seen],
                              unseen_attributes=att[unseen], semantics=sem)
            row("ICIS", sem, ExtendedClassifier(lin.rows[inv], names, seen, center=lin.center),
                f"(lambda {lin.text_map.lam:g}"
                f"{'' if lin.attribute_weight is None else f', weight {lin.attribute_weight:g}'})")
        if a.no_dfzsl:
            continue
        base = demo_config(a.dataset, seed=seed)
        if a.all_epochs:
            base = dataclasses.replace(
                base, classifier=dataclasses.replace(base.classifier, select_epochs=False))
        for sem in SEMANTICS:
            cfg = dataclasses.replace(
                base, generator=dataclasses.replace(base.generator, semantics=sem))
            t1 = time.perf_counter()
            res = DFZSL(cfg, progress=False).fit(world.teacher_weight, names, seen,
                                                 text_features=T, class_attributes=att)
            w = res.classifier.metadata.get("generator_semantics", {}).get("attribute_weight")
            row("DFZSL", sem, res.classifier,
                f"({time.perf_counter() - t1:.0f} s, {res.classifier.metadata['selection']}"
                f"{f', weight {w:g}' if w else ''}"
                f"{', FELL BACK to zero-shot' if res.fell_back else ''})")
    print("\nmean over seeds", a.seeds)
    for method in ("zs", "ICIS", "DFZSL"):
        for sem in SEMANTICS:
            rs = [r for r in out if r["method"] == method and r["semantics"] == sem]
            if rs:
                m = {k: 100 * sum(r[k] for r in rs) / len(rs) for k in "SUH"}
                print(f"  {method:<6} {sem:<10} S {m['S']:5.1f}  U {m['U']:5.1f}  "
                      f"H {m['H']:5.1f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "rows": out}, f, indent=1)


if __name__ == "__main__":
    main()
