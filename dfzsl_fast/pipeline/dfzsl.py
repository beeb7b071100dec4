"""`DFZSL(config).fit(...)`: the whole data-free pipeline, from a base classifier and class names
to a classifier over base + new classes (method.md 2.3-2.6).

Stages (each also usable alone from its own module):

1. **virtual** (`virtual.py`): kappa rule, batched fit of the vMF means to the teacher's cosine
   logits, sampling, trusted-sample filter.
2. **prompts** (`flpt.py`): feature-language prompt tuning of the text tower on the virtual
   features (skipped, and reported, when only precomputed text features are given).
3. **generator** (`generator.py`): TF-VAEGAN on (virtual feature, tuned text feature) pairs, then
   synthesis of `syn_num` features per new class.
4. **classifier** (`classifier.py`): learnable cosine prototypes initialised from the tuned text
   features, scale 100, logit-adjusted training loss, on virtual + synthesised features.

Model selection is honest: the returned classifier is the **last** epoch's. When test data is
given (`eval_data`), the per-epoch test scores are recorded and their maximum is reported
*beside* the last-epoch numbers under a separate, labelled key ("paper protocol: max over epochs
on the test set"), never instead of them.

With `cache_dir`, every stage's output is stored under a key of its inputs (`_cache.py`), so a
re-run (or a run interrupted and restarted) recomputes only what changed; the generator also
checkpoints every epoch and resumes.

Example:
    >>> from dfzsl_fast.pipeline import DFZSL
    >>> from dfzsl_fast.config import get_config
    >>> run = DFZSL(get_config("AWA2"), cache_dir="runs/awa2/cache")
    >>> result = run.fit(teacher_weight, class_names, seen_classes, text_tower=tower)
    >>> save_classifier("runs/awa2/classifier.safetensors", result.classifier)   # dfzsl_fast.io
    >>> evaluate(result.classifier, x_test, y_test)["H"]
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .._checks import check_class_indices
from .._extension import _version
from ..config import DFZSLConfig
from ..data.classnames import check_classnames
from ..evaluation import evaluate
from ..hashing import fingerprint, mix_seed
from ..nn import ExtendedClassifier, project_out, text_center
from ._cache import StageCache, stage_key
from .classifier import train_final_classifier
from .estimate import (
    GainEstimate,
    estimate_gain,
    prototype_start,
    pseudo_task,
    select_teacher_weight,
)
from .teacher import Teacher, as_teacher
from .virtual import KeepStats, virtual_stage

__all__ = ["DFZSL", "DFZSLResult"]


def _check_eval_data(eval_data: Any, D: int, C: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x (N, D) finite float, y (N,) integer labels in [0, C)), N >= 1; else a clear error."""
    if not isinstance(eval_data, (tuple, list)) or len(eval_data) != 2:
        raise TypeError("eval_data: expected a pair (x_test (N, D), y_test (N,))")
    x, y = eval_data
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError("eval_data: x_test and y_test must be tensors")
    if not x.is_floating_point() or x.dim() != 2 or x.shape[1] != D or x.shape[0] == 0:
        raise ValueError(f"eval_data: x_test must be a non-empty (N, {D}) float tensor, got "
                         f"{tuple(x.shape)} {x.dtype}")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise TypeError(f"eval_data: y_test must hold integer class indices, got {y.dtype}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"eval_data: y_test must be ({x.shape[0]},), got {tuple(y.shape)}")
    if int(y.min()) < 0 or int(y.max()) >= C:
        raise ValueError(f"eval_data: y_test labels must lie in [0, {C}), got "
                         f"[{int(y.min())}, {int(y.max())}]")
    bad = ~torch.isfinite(x).all(dim=1)
    if bool(bad.any()):
        raise ValueError(f"eval_data: x_test row {int(bad.nonzero()[0, 0])} has NaN or Inf")
    return x, y.long()

log = logging.getLogger(__name__)


@dataclass
class DFZSLResult:
    """What `DFZSL.fit` produces.

    Attributes:
        classifier: the extended classifier (last epoch).
        text_features: (C_all, D) float32 class text features before prompt tuning.
        tuned_text_features: (C_all, D) after prompt tuning (equal when tuning was skipped).
        mu: (C_s, D) fitted vMF mean directions; kappa: (C_s,) concentrations.
        keep: per-class counts of the trusted-sample filter.
        prompt_tuning: "done" or the reason it was skipped.
        timings: seconds per stage (0 for a stage loaded from the cache).
        cached: stages loaded from the cache.
        history: per-epoch classifier training loss, and test scores when `eval_data` was given.
        scores: last-epoch test scores (when `eval_data` was given), and under
            "paper_protocol_max_over_epochs" the best epoch's, labelled as such.
        features: the classifier's training set: {"virtual": (x, y), "synthesized": (x, y)},
            where "synthesized" is a `synthesis.Rows` source instead under
            ``generator.synthesis="disk"`` / ``"stream"``;
            labels in class_names indices (for plots and inspection).
        estimate: whether the extension is expected to beat zero-shot (held-out base
            classes, `estimate.py`); None when `classifier.estimate` is off.
        fell_back: True when the estimate said no and `classifier` is the zero-shot one.
        generator: the `synthesis.FeatureGenerator` that made the new classes' features and its
            (C_all, A) class embeddings, as (generator, embeddings); None when stage 3 came from
            the cache. CoOp + SHIP (`pipeline.coop`) draws more rows from it.
    """

    classifier: ExtendedClassifier
    text_features: torch.Tensor
    tuned_text_features: torch.Tensor
    mu: torch.Tensor
    kappa: torch.Tensor
    keep: KeepStats | None
    prompt_tuning: str
    timings: dict[str, float] = field(default_factory=dict)
    cached: list[str] = field(default_factory=list)
    history: dict[str, list] = field(default_factory=dict)
    scores: dict[str, Any] = field(default_factory=dict)
    features: dict[str, Any] = field(default_factory=dict)
    estimate: GainEstimate | None = None
    fell_back: bool = False
    generator: tuple[Any, torch.Tensor] | None = None


def _seen_index(seen_classes, C_all: int, C_s: int) -> torch.Tensor:
    if seen_classes is None:
        seen = torch.arange(C_s)
    else:
        seen = check_class_indices(seen_classes, "seen_classes", C_all)
    if seen.numel() != C_s:
        raise ValueError(
            f"seen_classes: the teacher has {C_s} rows but {seen.numel()} seen classes were given "
            "(teacher row k must be class seen_classes[k])"
        )
    if seen.numel() >= C_all:
        raise ValueError("class_names: no new class to add (every class is a seen class)")
    return seen


class DFZSL:
    """The DFZSL pipeline for one configuration.

    Args:
        config: a `DFZSLConfig` (e.g. `dfzsl_fast.data.get_config("AWA2")`).
        cache_dir: folder for per-stage caches and the generator checkpoint (None: no caching).
        device: where to run ("cpu", "cuda"; default: the teacher's device).
        backend: backend of the sampler and the fused cosine ops (None: automatic).
        progress: progress bars on every long loop.
    """

    def __init__(
        self,
        config: DFZSLConfig,
        *,
        cache_dir: str | Path | None = None,
        device: str | torch.device | None = None,
        backend: str | None = None,
        progress: bool = True,
    ) -> None:
        if not isinstance(config, DFZSLConfig):
            raise TypeError(
                f"config: expected a DFZSLConfig (see dfzsl_fast.data.get_config), got "
                f"{type(config).__name__}"
            )
        self.config = config
        self.cache = StageCache(cache_dir)
        self.device = torch.device(device) if device is not None else None
        self.backend = backend
        self.progress = bool(progress)

    # ------------------------------------------------------------------------------------------
    # checks done before any long work
    # ------------------------------------------------------------------------------------------

    def check_inputs(
        self, teacher, class_names, seen_classes, text_tower=None, text_features=None,
        class_attributes=None,
    ):
        """Validate the inputs of `fit` (raises before any work); returns (Teacher, names, seen)."""
        if not isinstance(teacher, Teacher):
            teacher = as_teacher(teacher, temperature=self.config.simulator.temperature,
                                 backend=self.backend)
        names = check_classnames(class_names, "class_names")
        C_all, C_s, D = len(names), teacher.num_classes, teacher.in_features
        seen = _seen_index(seen_classes, C_all, C_s)
        if text_tower is None and text_features is None:
            raise ValueError(
                "give text_tower (prompt tuning runs) or text_features (it is skipped)"
            )
        if text_features is not None:
            if (not isinstance(text_features, torch.Tensor) or text_features.dim() != 2
                    or not text_features.is_floating_point()):
                raise TypeError(f"text_features: expected a ({C_all}, {D}) float tensor")
            if text_features.shape[0] != C_all:
                raise ValueError(
                    f"text_features: {text_features.shape[0]} rows for {C_all} class_names"
                )
            if text_features.shape[1] != D:
                raise ValueError(
                    f"text_features: width {text_features.shape[1]} does not match the teacher's "
                    f"feature width {D}"
                )
            if not bool(torch.isfinite(text_features).all()):
                raise ValueError("text_features: contains NaN or Inf")
            if bool((text_features == 0).all(dim=1).any()):
                raise ValueError("text_features: has an all-zero row")
        sem = self.config.generator.semantics
        if sem != "text" and class_attributes is None:
            raise ValueError(
                f"generator.semantics={sem!r} needs class_attributes ({C_all}, K), e.g. the "
                "xlsa17 `att` of the dataset (dfzsl_fast.data.load_att_splits), one row per "
                "class name"
            )
        if class_attributes is not None:
            a = class_attributes
            if not isinstance(a, torch.Tensor) or a.dim() != 2 or not a.is_floating_point():
                raise TypeError(f"class_attributes: expected a ({C_all}, K) float tensor")
            if a.shape[0] != C_all or a.shape[1] < 1:
                raise ValueError(f"class_attributes: expected ({C_all}, K) (one row per class "
                                 f"name), got {tuple(a.shape)}")
            if not bool(torch.isfinite(a).all()):
                raise ValueError("class_attributes: contains NaN or Inf")
            if bool((a == 0).all(dim=1).any()):
                raise ValueError("class_attributes: has an all-zero row")
        if text_tower is not None:
            out_dim = getattr(text_tower, "output_dim", None)
            if out_dim is not None and out_dim != D:
                raise ValueError(
                    f"text_tower: output width {out_dim} does not match the teacher's feature "
                    f"width {D} (is this the classifier of the same CLIP model?)"
                )
        if self.config.generator.kind == "ship" and not getattr(text_tower, "tunable", False):
            raise ValueError(
                "generator.kind='ship' synthesizes through the text tower: give text_tower (an "
                "open_clip tower with local weights, or MiniLM), not only text_features"
            )
        return teacher, names, seen

    def _tune_prompts(self, tower, names, xv, yv_all, seen, T0, kappa):
        """Stage 2 with the validated step budget: (tuned text (C_all, D), shift (D,), note)."""
        import dataclasses
        import math

        from .flpt import train_flpt

        fcfg = self.config.flpt
        device = T0.device
        full = math.ceil(xv.shape[0] / fcfg.batch_size) * fcfg.epochs
        steps = full
        note = "done"
        if fcfg.validate:
            from .flpt_validation import select_flpt_steps

            down = {"kappa": float(kappa.max()), "syn_num": self.config.generator.syn_num,
                    "classifier": self.config.classifier}
            v = select_flpt_steps(tower, names, self.config.template, xv, yv_all, seen, fcfg,
                                  seed=self.config.seed, holdout_fraction=fcfg.holdout_fraction,
                                  downstream=down, progress=self.progress)
            if v.steps >= 0:
                steps = v.steps
                best = max(v.curve, key=lambda r: (r[3], -r[0]))
                note = (f"done: {steps} of {full} steps, chosen on held-out base classes "
                        f"(validation H {best[3]:.3f} vs {v.curve[0][3]:.3f} untuned)")
        if steps <= 0:
            return T0, torch.zeros(T0.shape[1], device=device), (
                "skipped: tuning did not help held-out base classes (class-disjoint validation "
                "on the virtual features)")
        x, y, run_cfg = xv, yv_all, fcfg
        if steps < full:
            per_epoch = math.ceil(xv.shape[0] / fcfg.batch_size)
            if steps >= per_epoch:
                run_cfg = dataclasses.replace(fcfg, epochs=max(1, round(steps / per_epoch)))
            else:  # part of one epoch: the first rows (round-robin order keeps classes balanced)
                run_cfg = dataclasses.replace(fcfg, epochs=1)
                x, y = xv[: steps * fcfg.batch_size], yv_all[: steps * fcfg.batch_size]
        res = train_flpt(tower, names, self.config.template, x, y, seen, run_cfg,
                         seed=self.config.seed, progress=self.progress)
        T1 = res.text_features.detach().to(device=device, dtype=torch.float32)
        shift = res.residual.detach().to(device=device, dtype=torch.float32)
        return T1, shift, note

    def _log_cached(self, what: str, stage: str) -> None:
        log.info("%s: loaded from the cache (%s)", what, self.cache.path(stage))

    def _stale_checkpoints(self, key: str | None) -> list[Path]:
        """Remove TF-VAEGAN checkpoints of other configurations from the cache folder.

        A checkpoint (``generator-<key>.pt``) only serves a resumed run of its own key; once
        stage 3 of another key is complete (computed or loaded), those of other keys are dead
        weight (hundreds of MB at hidden 1024). Returns the removed paths (each logged).
        """
        if not self.cache.enabled or not self.cache.root.is_dir():
            return []
        keep = None if key is None else f"generator-{key[:12]}.pt"
        removed = []
        for p in sorted(self.cache.root.glob("generator-*.pt")):
            if p.name != keep and p.is_file():
                try:
                    p.unlink()
                except OSError as exc:
                    log.warning("could not remove the stale generator checkpoint %s (%s)", p, exc)
                    continue
                removed.append(p)
        if removed:
            log.info("removed %d generator checkpoint(s) of other configurations: %s",
                     len(removed), ", ".join(p.name for p in removed))
        return removed

    # ------------------------------------------------------------------------------------------
    # the whole pipeline
    # ------------------------------------------------------------------------------------------

    def fit(
        self,
        teacher: Teacher | torch.Tensor | torch.nn.Module,
        class_names: Sequence[str],
        seen_classes: Sequence[int] | torch.Tensor | None = None,
        *,
        text_tower: Any = None,
        text_features: torch.Tensor | None = None,
        eval_data: tuple[torch.Tensor, torch.Tensor] | None = None,
        class_attributes: torch.Tensor | None = None,
    ) -> DFZSLResult:
        """Run the four stages and return the extended classifier.

        Args:
            teacher: the base classifier: a (C_s, D) weight tensor (used as a cosine
                classifier, as DFZSL does), an nn.Linear, a CosineClassifier or a `Teacher`.
            class_names: all C_all class names (base and new), cleaned, distinct, non-empty.
            seen_classes: (C_s,) indices into `class_names`: teacher row k is class
                seen_classes[k]. Default: the first C_s names, in order.
            text_tower: a `dfzsl_fast.text.towers.TextTower` (open_clip, MiniLM, ...): prompt
                tuning runs on it.
            text_features: (C_all, D) precomputed class text features instead of a tower:
                prompt tuning is skipped and `result.prompt_tuning` says so.
            eval_data: optional (x_test (N, D), y_test (N,)) in `class_names` indices, to
                record per-epoch test scores (reporting only; never used for selection).
            class_attributes: optional (C_all, K) class attributes (e.g. xlsa17 `att`), one
                row per class name; needed by ``generator.semantics`` "attributes" and
                "combined" (`dfzsl_fast.semantics`), unused with the default "text".

        Returns:
            A `DFZSLResult`.

        Raises:
            ValueError / TypeError: bad inputs, before any long work starts (width mismatch
                between classifier and text tower, duplicate or empty names, NaN weights, ...).
        """
        cfg = self.config
        teacher, names, seen = self.check_inputs(teacher, class_names, seen_classes,
                                                 text_tower, text_features, class_attributes)
        device = self.device or teacher.weight.device
        teacher = Teacher(teacher.weight.to(device), teacher.temperature, backend=self.backend)
        C_all, C_s = len(names), seen.numel()
        is_seen = torch.zeros(C_all, dtype=torch.bool)
        is_seen[seen] = True
        unseen = (~is_seen).nonzero().flatten()
        if eval_data is not None:
            eval_data = _check_eval_data(eval_data, teacher.in_features, C_all)
        timings: dict[str, float] = {}
        cached: list[str] = []

        # 0. class text features of the plain prompts
        t0 = time.perf_counter()
        prompts = [cfg.prompt(n) for n in names]
        if text_features is None:
            with torch.no_grad():
                text_features = text_tower.encode(prompts)
        T0 = text_features.detach().to(device=device, dtype=torch.float32)
        timings["text"] = time.perf_counter() - t0
        teacher_fp = fingerprint(teacher.weight)
        base_key = stage_key(_version(), teacher_fp, fingerprint(T0), names, seen, cfg.seed)

        # 1. virtual base features
        t0 = time.perf_counter()
        sim = cfg.simulator
        k1 = stage_key("virtual", base_key, sim)
        def run_virtual():
            v = virtual_stage(teacher, T0[seen.to(device)], sim, seed=cfg.seed,
                              progress=self.progress, backend=self.backend)
            return {"mu": v.mu, "kappa": v.kappa, "x": v.x, "y": v.y, "drawn": v.keep.drawn,
                    "kept": v.keep.kept}, {}

        tens, _, hit = self.cache.get_or_compute("virtual", k1, run_virtual, device)
        mu, kappa, xv, yv = tens["mu"], tens["kappa"], tens["x"], tens["y"]
        keep = KeepStats(tens["drawn"].cpu(), tens["kept"].cpu())
        if hit:
            cached.append("virtual")
            self._log_cached("stage 1 (virtual)", "virtual")
        else:
            log.info("stage 1 (virtual): %s", keep)
        timings["virtual"] = time.perf_counter() - t0
        yv_all = seen.to(device)[yv]  # labels in class_names indices

        # 2. prompt tuning
        t0 = time.perf_counter()
        k2 = stage_key("prompts", k1, cfg.flpt, getattr(text_tower, "name", None),
                       text_tower is None)
        if text_tower is None or not getattr(text_tower, "tunable", True):
            T1, shift = T0, None
            prompt_tuning = ("skipped: only precomputed text features were given"
                             if text_tower is None else "skipped: the text tower is not tunable")
            log.warning("stage 2 (prompt tuning) %s", prompt_tuning)
        else:
            def prompt_stage():
                T1, shift, note = self._tune_prompts(text_tower, names, xv, yv_all, seen, T0,
                                                     kappa)
                return {"text_features": T1, "shift": shift}, {"prompt_tuning": note}

            tens, meta, hit = self.cache.get_or_compute("prompts", k2, prompt_stage, device)
            T1, shift = tens["text_features"], tens["shift"]
            prompt_tuning = meta.get("prompt_tuning", "done")
            if hit:
                cached.append("prompts")
                self._log_cached("stage 2 (prompt tuning)", "prompts")
            if shift is not None and not bool(shift.any()):
                shift = None
        timings["prompts"] = time.perf_counter() - t0
        # the shifted virtual features (FLPT's x' = x + r * residual), unit-normalised as the
        # generator's preprocessing does
        xs = xv if shift is None else F.normalize(xv + shift, dim=1)

        # the frame of stages 3-4 (ClassifierConfig.frame): "centred" projects the direction of
        # the mean class text feature out of everything the final classifier sees
        ccfg = cfg.classifier
        center = text_center(T1) if ccfg.frame == "centred" else None

        # where every class starts (centred): new at its mapped text, base at its mapped text
        # plus the teacher's fitted mean, with a weight chosen on held-out base classes
        sd = seen.to(device)
        task = None
        tw = ccfg.teacher_weight
        if center is not None and C_s >= 2 and (tw is None or ccfg.estimate):
            task = pseudo_task(teacher, mu, kappa, T1[sd], seed=cfg.seed, backend=self.backend)
        if tw is None:
            tw = 1.0
            if center is not None and task is not None:
                tw, tw_scores = select_teacher_weight(task, T1[sd], mu, center, ccfg.text_map,
                                                      seed=cfg.seed)
                log.info("teacher weight %g chosen on held-out base classes (H %s)", tw,
                         {k: round(v, 3) for k, v in tw_scores.items()})
        # with attributes (generator.semantics, issue 12) the starts' map reads the combined
        # semantics ("attributes": that space's attributes-alone end)
        gsem = cfg.generator.semantics
        start_att = class_attributes.detach().to(device=T1.device, dtype=T1.dtype) \
            if gsem != "text" and class_attributes is not None else None
        start_w = math.inf if gsem == "attributes" else cfg.generator.attribute_weight
        init, text_map = prototype_start(T1, mu, sd, center, ccfg.text_map, tw,
                                         seed=cfg.seed, attributes=start_att,
                                         attribute_weight=start_w)
        if text_map is not None:
            log.info("text map: lambda %g chosen on held-out base classes (cosine %s)",
                     text_map.lam, {k: round(v, 3) for k, v in text_map.val_cos.items()})

        # 3. generator and synthesis
        t0 = time.perf_counter()
        gcfg = cfg.generator
        # the synthesis mode changes where rows live, not which rows: not part of the key;
        # the default semantics ("text") keeps the keys of before (issue 12)
        gkey = dataclasses.asdict(
            dataclasses.replace(gcfg, synthesis="memory", shard_dtype="float16"))
        sem_key: tuple = ()
        if gcfg.semantics == "text":
            del gkey["semantics"], gkey["attribute_weight"]
        else:
            sem_key = (fingerprint(class_attributes.detach().float().cpu().contiguous()),)
        k3 = stage_key("generator", k2, gkey,
                       (ccfg.frame, ccfg.text_map) if gcfg.kind == "vmf" else None,
                       (cfg.ship, getattr(text_tower, "name", None), cfg.template)
                       if gcfg.kind == "ship" else None, *sem_key)
        sem_weight = None
        if gcfg.kind == "tfvaegan":  # the generator's class conditions (cheap; semantics.py)
            gen_cond, sem_weight = _generator_semantics(
                T1, class_attributes, gcfg, mu, sd, cfg.seed,
                getattr(text_map, "attribute_weight", None))
        syn_seed = mix_seed(gcfg.seed, 1)

        def feature_generator():
            """(generator, class embeddings) of the new classes' features (synthesis/)."""
            if gcfg.kind == "vmf":
                from ..synthesis import VMFGenerator

                # around the new classes' starting prototypes: in the centred frame their
                # mapped text, the frame the virtual features live in (published: the text)
                return VMFGenerator(float(kappa.max()), init.shape[1], wood_b=sim.wood_b,
                                    backend=self.backend, device=device), init
            if gcfg.kind == "ship":
                from ..synthesis import SHIPGenerator
                from .ship import ship_prompts, train_ship

                # trained on the virtual base features (data-free), through the text tower
                ship = train_ship(xs, yv_all, names, text_tower, cfg.template, cfg.ship,
                                  progress=self.progress)
                prompts = ship_prompts(text_tower, cfg.template, names, cfg.ship)
                return SHIPGenerator(ship, prompts), T1
            from ..synthesis import TFVAEGANGenerator
            from .generator import train_generator

            ckpt = None
            if self.cache.enabled:
                ckpt = self.cache.root / f"generator-{k3[:12]}.pt"
            emb = gen_cond
            model = train_generator(
                xs, yv_all, emb, gcfg, seed=gcfg.seed, progress=self.progress, checkpoint=ckpt,
            )
            return TFVAEGANGenerator(model, backend=self.backend), emb

        syn_rows = None
        made: list[tuple[Any, torch.Tensor]] = []  # the generator, when stage 3 ran here
        if gcfg.synthesis == "memory":
            def synthetic_stage():
                from ..synthesis import generate_all

                gen, emb = feature_generator()
                made.append((gen, emb))
                xu, yu = generate_all(gen, emb, unseen, gcfg.syn_num, seed=syn_seed)
                return {"x": xu.to(device), "y": yu.to(device)}, {}

            tens, _, hit = self.cache.get_or_compute("synthetic", k3, synthetic_stage, device)
            xu, yu = tens["x"], tens["y"]
            if hit:
                cached.append("generator")
                self._log_cached("stage 3 (new-class features)", "synthetic")
        else:
            from ..synthesis import GeneratedRows, ShardRows

            gen, emb = feature_generator()
            made.append((gen, emb))
            if gcfg.synthesis == "stream":
                syn_rows = GeneratedRows(gen, emb, unseen, gcfg.syn_num, seed=syn_seed)
            else:
                from ..synthesis import synthesize_to

                if self.cache.enabled:
                    shard_dir = self.cache.root / f"synthetic-{k3[:12]}"
                else:
                    self._tmp = tempfile.TemporaryDirectory(prefix="dfzsl-shards-")
                    shard_dir = Path(self._tmp.name) / "synthetic"
                synthesize_to(shard_dir, gen, emb, unseen, gcfg.syn_num, seed=syn_seed,
                              dtype=getattr(torch, gcfg.shard_dtype), progress=self.progress)
                syn_rows = ShardRows(shard_dir)
            xu = yu = None
        self._stale_checkpoints(k3 if gcfg.kind == "tfvaegan" else None)
        timings["generator"] = time.perf_counter() - t0

        # 4a. will it beat zero-shot, and after how many classifier epochs? (held-out base
        # classes, virtual data only; estimate.py)
        t0 = time.perf_counter()
        estimate: GainEstimate | None = None
        batch_size = ccfg.batch_size or gcfg.syn_num
        epochs = ccfg.epochs
        select = ccfg.select_epochs and center is not None
        if ccfg.estimate and C_s >= 2:
            estimate = estimate_gain(teacher, mu, kappa, T1[sd], xs, yv, ccfg,
                                     teacher_weight=tw, task=task, batch_size=batch_size,
                                     select_epochs=select, syn_num=min(gcfg.syn_num, 200),
                                     seed=cfg.seed, backend=self.backend)
            if select:
                epochs = estimate.epochs
                log.info("classifier epochs: %d of %d, chosen on held-out base classes",
                         epochs, ccfg.epochs)
        timings["estimate"] = time.perf_counter() - t0

        # 4b. final classifier
        t0 = time.perf_counter()
        history: dict[str, list] = {"loss": []}
        test_hist: list[dict[str, float]] = []
        tmp_clf = ExtendedClassifier(init, names, seen, scale=ccfg.scale, shift=shift,
                                     center=center, backend=self.backend)

        def _track(epoch, head, loss):
            history["loss"].append(loss)
            if eval_data is not None:
                tmp_clf.weight.data = project_out(head.weight.detach(), center)
                s = evaluate(tmp_clf, eval_data[0], eval_data[1], cfg.protocol)
                test_hist.append({k: v for k, v in s.items() if not k.startswith("per_class")})

        if syn_rows is None:
            x_tr = project_out(torch.cat([xs, xu.to(xs.dtype)]), center)
            y_tr = torch.cat([yv_all, yu])
        else:  # rows read batch by batch (disk or regenerated): the same rows, same order
            from ..synthesis import ConcatRows, MappedRows, TensorRows

            x_tr = MappedRows(ConcatRows(TensorRows(xs, yv_all), syn_rows),
                              lambda x: project_out(x.to(device=device, dtype=xs.dtype), center))
            y_tr = None
        head = train_final_classifier(
            x_tr, y_tr, init, seen, unseen, ccfg, epochs=epochs, batch_size=batch_size,
            seed=cfg.seed, progress=self.progress, callback=_track, backend=self.backend,
        )
        if eval_data is not None and not test_hist:  # 0 epochs: the starting prototypes
            tmp_clf.weight.data = project_out(head.weight.detach(), center)
            s0 = evaluate(tmp_clf, eval_data[0], eval_data[1], cfg.protocol)
            test_hist.append({k: v for k, v in s0.items() if not k.startswith("per_class")})
        meta = {
            "method": "DFZSL",
            "dfzsl_fast_version": _version(),
            "config": cfg.to_dict(),
            "text_tower": getattr(text_tower, "name", None),
            "prompt_tuning": prompt_tuning,
            "virtual_kept": keep.total_kept if keep is not None else None,
            "synthetic_per_class": gcfg.syn_num,
            "teacher_sha": teacher_fp,
            "selection": (f"{epochs} of {ccfg.epochs} epochs, chosen on held-out base classes"
                          if select and estimate is not None else "last epoch"),
            "frame": ccfg.frame,
            "text_map_lambda": text_map.lam if text_map is not None else None,
            "teacher_weight": tw if center is not None else None,
        }
        if gcfg.semantics != "text":
            from ..semantics import weight_for_json

            meta["generator_semantics"] = {"semantics": gcfg.semantics,
                                           "attribute_weight": weight_for_json(sem_weight)}
        clf = ExtendedClassifier(project_out(head.weight.detach(), center), names, seen,
                                 scale=ccfg.scale,
                                 shift=shift, center=center, metadata=meta, backend=self.backend)
        timings["classifier"] = time.perf_counter() - t0

        fell_back = False
        if estimate is not None:
            meta["estimate"] = estimate.to_dict()
            clf.metadata["estimate"] = meta["estimate"]
            if not estimate.likely_worse:
                (log.info if estimate.likely_better else log.warning)("estimate: %s", estimate)
            elif ccfg.fallback:
                fell_back = True
                log.warning("estimate: %s; returning the zero-shot classifier instead "
                            "(classifier.fallback=false keeps the extension)", estimate)
                clf = zero_shot_classifier(T0, names, seen, scale=ccfg.scale)
                clf.metadata.update({**meta, "method": "zero-shot CLIP (DFZSL fallback)"})
            else:
                log.warning("estimate: %s (classifier.fallback=false: keeping the extension)",
                            estimate)
        scores: dict[str, Any] = {}
        if eval_data is not None and test_hist:
            key = "H" if cfg.protocol == "gzsl" else "HM"
            best = max(range(len(test_hist)), key=lambda i: test_hist[i][key])
            scores = {
                "last_epoch": test_hist[-1],
                "paper_protocol_max_over_epochs": {
                    **test_hist[best], "epoch": best,
                    "note": "max over classifier epochs on the TEST set (published protocol; "
                            "optimistic, not a valid model selection)",
                },
            }
            history["test"] = test_hist
        return DFZSLResult(
            classifier=clf, text_features=T0, tuned_text_features=T1, mu=mu, kappa=kappa,
            keep=keep, prompt_tuning=prompt_tuning, timings=timings, cached=cached,
            history=history, scores=scores, estimate=estimate, fell_back=fell_back,
            features={"virtual": (xs, yv_all),
                      "synthesized": (xu, yu) if syn_rows is None else syn_rows},
            generator=made[0] if made else None,
        )


def _generator_semantics(T1, attributes, gcfg, mu, seen, seed, chosen=None):
    """The TF-VAEGAN's class conditions (C_all, S) for `gcfg.semantics` (`semantics.py`).

    "text": normalize(T1), as published. "combined" with ``attribute_weight=None``: `chosen`,
    the weight the starts' map chose on held-out base classes (one choice for both), else one
    chosen on held-out base classes against the fitted vMF means (published frame: no map).
    Returns (conditions, the attribute weight used or None).
    """
    from ..semantics import class_semantics, select_attribute_weight

    if gcfg.semantics == "text":
        return F.normalize(T1, dim=1), None
    a = attributes.detach().to(device=T1.device, dtype=T1.dtype)
    w = gcfg.attribute_weight if gcfg.attribute_weight is not None else chosen
    if gcfg.semantics == "combined" and w is None:
        w, scores = select_attribute_weight(T1[seen], a[seen], mu, seed=seed, return_scores=True)
        log.info("generator: attribute weight %g chosen on held-out base classes (cosine %s)",
                 w, {k: round(v, 3) for k, v in scores.items()})
    if gcfg.semantics == "attributes":
        return class_semantics(None, a, "attributes"), None
    return class_semantics(T1, a, "combined", weight=w), float(w)


def zero_shot_classifier(
    text_features: torch.Tensor, class_names: Sequence[str], seen_classes, scale: float = 100.0
) -> ExtendedClassifier:
    """Zero-shot CLIP as an `ExtendedClassifier`: prototypes = the class text features."""
    return ExtendedClassifier(text_features, class_names, seen_classes, scale=scale,
                              metadata={"method": "zero-shot CLIP"})
