"""Set up an evaluation: load a run and its baseline, prompts, scorers and validation pairs.

:func:`prepare_evaluation` loads what ``python -m lightning_pref evaluate``
(:mod:`lightning_pref.commands.evaluate`) compares: a run's checkpoint and the model it started
from (or another run), the prompts, the scorers and the validation pairs.

Negative-model guidance (METHODS §11.1, :mod:`lightning_pref.models.negative`): either side can
sample
with a negative model in CFG's unconditional branch. A run trained as a negative model (its
objective has ``trains_negative``, e.g. Diffusion-NPO, or a Self-NPO run) stands for *its base
model guided by it*; ``--negative`` / ``--baseline_negative`` add one to the tuned model or the
baseline, built from the negative run, its own base and the positive model with
``--merge_weight``. So, with ``NPO`` and ``DPO`` runs from the same base::

    evaluate --run NPO                        # base+NPO vs base
    evaluate --run DPO --negative NPO         # DPO+NPO vs base
    evaluate --run DPO --negative NPO --baseline DPO   # DPO+NPO vs DPO
    evaluate --run DPO --baseline NPO         # DPO vs base+NPO
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from lightning_pref.errors import ConfigError
from lightning_pref.evaluation.args import EvaluateArgs, default_num_steps
from lightning_pref.evaluation.compare import implicit_accuracy
from lightning_pref.evaluation.prompt_sets import read_prompts
from lightning_pref.evaluation.report import EvalReport
from lightning_pref.evaluation.scorers import GoldScorer, default_scorers
from lightning_pref.models.negative import NegativeGuidance
from lightning_pref.models.policy import DiffusionPolicy
from lightning_pref.modules.base import PreferenceModule
from lightning_pref.runs import RunPaths, find_run, load_datamodule, load_module, run_val_loader
from lightning_pref.scoring import Scorer

__all__ = ["EvalSetup", "prepare_evaluation", "trains_negative"]


def trains_negative(module: PreferenceModule) -> bool:
    """Whether a run trained a negative model (Diffusion-NPO, Self-NPO) for negative guidance."""
    from lightning_pref.modules.self_npo import SelfNPOModule

    flag = getattr(module.objective, "trains_negative", False)
    return isinstance(module, SelfNPOModule) or bool(flag)


class _Loader:
    """Loads run modules for evaluation once each, without the frozen models training needs."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._loaded: dict[tuple[Path, Path | None, bool], PreferenceModule] = {}

    def __call__(
        self, config: Path, ckpt: Path | None, ema: bool = False, keep: bool = True
    ) -> PreferenceModule:
        """The module of ``config`` + ``ckpt`` on the device; ``keep=False``: not cached."""
        key = (config, ckpt, ema)
        if key in self._loaded:
            return self._loaded[key]
        module = load_module(config, ckpt, ema)
        module.reference_unet = None  # evaluation brings its own reference
        if hasattr(module, "teacher_unet"):  # Self-NPO's EMA teacher
            module.teacher_unet = None
        module = module.to(self.device)
        if keep:
            self._loaded[key] = module
        return module


@dataclass
class _Side:
    """One side of the comparison: the positive model, and its negative model if any."""

    module: PreferenceModule
    ckpt: Path | None  # the positive model's checkpoint (None: a base model)
    negative: NegativeGuidance | None = None
    negative_name: str | None = None  # the negative model's checkpoint, for the report


def _negative(
    load: _Loader, positive: DiffusionPolicy, npo: PreferenceModule, config: Path, m: float
) -> NegativeGuidance:
    """Negative guidance from a negative model ``npo``, its base (``config``) and ``positive``."""
    if not trains_negative(npo):
        print(f"note: the run of '{config}' was not trained as a negative model", file=sys.stderr)
    npo_base = load(config, None, keep=False)  # freed once θ_neg is built, unless in use
    guidance = NegativeGuidance.from_policies(positive, npo_base.policy, npo.policy, m)
    return guidance.to(load.device)


def _side(
    load: _Loader,
    run: RunPaths,
    ckpt: Path | None,
    negative: str | None,
    merge_weight: float,
    ema: bool = False,
) -> _Side:
    """Load one side: a negative run means its base guided by it; ``negative`` adds one."""
    module = load(run.config, ckpt, ema, keep=ckpt is None)  # base models are shared
    if ckpt is not None and trains_negative(module):
        if negative is not None:
            raise ConfigError(
                f"'{ckpt}' is a negative model, so it already stands for base + itself; "
                "pass the positive model's run to add --negative/--baseline_negative"
            )
        base = load(run.config, None)
        guidance = _negative(load, base.policy, module, run.config, merge_weight)
        return _Side(base, None, guidance, str(ckpt))
    if negative is None:
        return _Side(module, ckpt)
    neg_run = find_run(negative)
    if neg_run.ckpt is None:
        raise ConfigError(f"negative run '{neg_run.config.parent}' has no checkpoint; pass a .ckpt")
    npo = load(neg_run.config, neg_run.ckpt, keep=False)
    guidance = _negative(load, module.policy, npo, neg_run.config, merge_weight)
    return _Side(module, ckpt, guidance, str(neg_run.ckpt))


def _image_size(policy: DiffusionPolicy) -> int:
    """Side of the images the policy generates (the VAE halves the size once per extra block)."""
    size = policy.latent_shape[-1]
    if policy.vae is None:
        return size
    return size * 2 ** (len(policy.vae.config.block_out_channels) - 1)


def _minipick_val_pairs(config_path: Path, policy: DiffusionPolicy) -> str | None:
    """MiniPick's validation pairs for a MiniPick run trained without pairs (on-policy methods)."""
    from lightning_pref.data.pickapic import PickAPicDataModule
    from lightning_pref.minipick.policy import MiniPickPolicy

    if not isinstance(policy, MiniPickPolicy):
        return None
    if isinstance(load_datamodule(config_path), PickAPicDataModule):
        return None  # the run's own validation pairs
    return str(policy.pairs_dir(build=True) / "validation")


@dataclass
class EvalSetup:
    """A run and its baseline loaded for evaluation (shared by ``evaluate`` and the leaderboard).

    ``tuned`` and ``base`` are the positive models; with negative guidance, ``tuned_negative`` /
    ``base_negative`` go to the sampler as ``uncond_denoiser``.
    """

    run: RunPaths
    base_ckpt: Path | None
    prompts: list[str]
    tuned: PreferenceModule
    base: PreferenceModule
    loader: Any  # validation pairs for implicit accuracy, or None
    scorers: dict[str, Scorer]
    tuned_negative: NegativeGuidance | None = None
    base_negative: NegativeGuidance | None = None
    negative_names: tuple[str | None, str | None] = (None, None)  # (tuned, baseline)
    tuned_name: str | None = None  # the tuned positive model; None: the run's checkpoint

    @property
    def negatives(self) -> dict[str, NegativeGuidance | None]:
        """The negative models as keyword arguments of ``evaluate_policies``."""
        return {"tuned_negative": self.tuned_negative, "base_negative": self.base_negative}

    def finish(self, report: EvalReport, args: EvaluateArgs) -> EvalReport:
        """Add implicit accuracy (if asked for) and the names of what was compared."""
        if self.loader is not None:
            acc = implicit_accuracy(
                self.tuned, self.base.policy, self.loader, args.seed, args.implicit_draws
            )
            report = replace(report, implicit_acc=acc)
        baseline = str(self.base_ckpt or "base (no checkpoint)")
        tuned = self.tuned_name or str(self.run.ckpt)
        negative, base_negative = self.negative_names
        if negative is not None or base_negative is not None:
            report = replace(report, merge_weight=float(args.merge_weight))
        return replace(
            report,
            tuned=tuned,
            baseline=baseline,
            negative=negative,
            baseline_negative=base_negative,
        )


def prepare_evaluation(args: EvaluateArgs, negative_guidance: bool = False) -> EvalSetup:
    """Find the run and baseline, load both models, the validation pairs and the scorers.

    Fills in ``args.num_steps`` when it is None (:func:`default_num_steps` of the tuned model).

    Args:
        args: what to evaluate.
        negative_guidance: the caller samples with ``EvalSetup.tuned_negative`` /
            ``base_negative``. If False, arguments that ask for negative guidance raise a
            ConfigError instead of being silently evaluated without it.
    """
    run = find_run(args.run)
    if run.ckpt is None:
        raise ConfigError(f"run '{run.config.parent}' has no checkpoint; pass a .ckpt with --run")
    base_run = run if args.baseline == "base" else find_run(args.baseline)
    base_ckpt = None if args.baseline == "base" else base_run.ckpt
    prompts = read_prompts(args.prompts, args.max_prompts, args.category, args.challenge)
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    load = _Loader(torch.device(auto if args.device == "auto" else args.device))
    tuned = _side(load, run, run.ckpt, args.negative, args.merge_weight, args.ema)
    base = _side(load, base_run, base_ckpt, args.baseline_negative, args.merge_weight)
    if not negative_guidance and (tuned.negative is not None or base.negative is not None):
        raise ConfigError(
            "this caller samples without negative guidance: evaluate negative-model runs "
            "(NPO, Self-NPO) and --negative/--baseline_negative with `python -m lightning_pref "
            "evaluate`"
        )
    if args.num_steps is None:
        args.num_steps = default_num_steps(tuned.module.policy)
    loader = None  # read before sampling, so a wrong --val_files fails at once
    # the implicit reward is the tuned model's against the baseline's: undefined without a tuned
    # checkpoint (base vs base) or when both sides are the same checkpoint (DPO+NPO vs DPO)
    same = (
        tuned.ckpt is not None
        and base_ckpt is not None
        and Path(base_ckpt).resolve() == Path(tuned.ckpt).resolve()
    )
    if args.implicit_draws > 0 and tuned.ckpt is not None and not same:
        val_files = args.val_files or _minipick_val_pairs(run.config, tuned.module.policy)
        loader = run_val_loader(run.config, val_files, _image_size(tuned.module.policy))
    chosen = args.scorers or default_scorers(tuned.module.policy)
    if isinstance(chosen.get(args.gold), GoldScorer):
        GoldScorer.check_captions(prompts)  # before any sampling
    scorers = {k: s.to(load.device) for k, s in chosen.items()}
    names = (tuned.negative_name, base.negative_name)
    tuned_name = None if tuned.ckpt is not None else "base (no checkpoint)"
    return EvalSetup(
        run, base_ckpt, prompts, tuned.module, base.module, loader, scorers,
        tuned.negative, base.negative, names, tuned_name,
    )  # fmt: skip
