"""The arguments of ``python -m lightning_pref evaluate`` and their model-dependent defaults."""

from __future__ import annotations

from dataclasses import dataclass

from lightning_pref.cli import parse_dataclass
from lightning_pref.evaluation.compare import SamplingOptions
from lightning_pref.models.policy import DiffusionPolicy
from lightning_pref.scoring import Scorer

__all__ = [
    "DEFAULT_NUM_STEPS",
    "MINIPICK_NUM_STEPS",
    "EvaluateArgs",
    "default_num_steps",
    "parse_evaluate_args",
]

DEFAULT_NUM_STEPS = 20  # SPO's evaluation setting: DDIM, 20 steps, CFG 5 (METHODS §2.5, §7)
MINIPICK_NUM_STEPS = 10  # MiniPick's results were measured with 10 steps; kept so they reproduce


@dataclass
class EvaluateArgs:
    """Compare a tuned run with its base model (``python -m lightning_pref evaluate``).

    Attributes:
        run: the tuned run: a version folder (runs/NAME/version_N; uses checkpoints/last.ckpt) or
            a .ckpt file. A negative model's run (Diffusion-NPO, Self-NPO) means its base model
            sampled with it as the negative (base+NPO).
        baseline: 'base' (the run's config without checkpoint), or a run folder or .ckpt (a
            negative model's run: base+NPO).
        prompts: a prompt file or folder: .txt (one per line), .json (a list; HPDv2 test.json or
            benchmark styles; SPO's training prompts), .parquet (Pick-a-Pic captions,
            de-duplicated), .tsv (PartiPrompts) or .csv (DrawBench); default MiniPick's test
            prompts.
        category: keep the rows of this category (PartiPrompts .tsv, DrawBench .csv).
        challenge: keep the rows of this challenge (PartiPrompts .tsv).
        max_prompts: use the first this many prompts; default all.
        num_samples: images per model; prompts are cycled.
        seed: seed of every draw; sample i is seeded by (seed, i).
        num_steps: DDIM steps; default 10 for MiniPick models, else 20 (SPO's DDIM-20 setting).
        guidance_scale: classifier-free guidance weight.
        eta: DDIM eta (0: deterministic).
        scorers: scorers by name, as '{"NAME": {"class_path": ..., "init_args": {...}}}';
            default: MiniPick's gold rater as ``gold``, plus ``proxy`` (MiniPickScore) for
            MiniPick runs.
        gold: the scorer that decides wins.
        val_files: validation pairs (parquet files, globs or folders) for the implicit accuracy;
            default the run's own validation data, if any.
        implicit_draws: timestep/noise draws per validation pair; 0 skips the implicit accuracy.
        diversity_samples: images per prompt for the diversity score; < 2 skips it.
        out: output folder; default <run folder>/eval_seed<seed> (+ _negative with a negative).
        batch_size: images per sampling batch.
        device: 'auto' (CUDA if available), 'cpu', 'cuda', 'cuda:1', ...
        ema: evaluate the run's EMA weights (saved by the ``EMA`` callback).
        negative: a negative model's run or .ckpt (Diffusion-NPO, Self-NPO) for the tuned model's
            unconditional CFG branch (e.g. DPO+NPO).
        baseline_negative: the same for the baseline.
        merge_weight: m of negative guidance, θ_neg = θ_pos + δ - m·(θ_pos - θ_base) (official 0).
    """

    run: str
    baseline: str = "base"
    prompts: str | None = None
    category: str | None = None
    challenge: str | None = None
    max_prompts: int | None = None
    num_samples: int = 512
    seed: int = 0
    num_steps: int | None = None
    guidance_scale: float = 5.0
    eta: float = 0.0
    scorers: dict[str, Scorer] | None = None
    gold: str = "gold"
    val_files: str | None = None
    implicit_draws: int = 4
    diversity_samples: int = 4
    out: str | None = None
    batch_size: int = 64
    device: str = "auto"
    ema: bool = False
    negative: str | None = None
    baseline_negative: str | None = None
    merge_weight: float = 0.0

    def sampling_options(self) -> SamplingOptions:
        """The sampler and diversity settings (``prepare_evaluation`` fills in ``num_steps``)."""
        assert self.num_steps is not None, "prepare_evaluation fills in num_steps"
        return SamplingOptions(
            num_steps=self.num_steps,
            guidance_scale=self.guidance_scale,
            eta=self.eta,
            batch_size=self.batch_size,
            samples_per_prompt_for_diversity=self.diversity_samples,
        )


def default_num_steps(policy: DiffusionPolicy) -> int:
    """DDIM steps when ``--num_steps`` is not given: 10 for MiniPick, else 20 (METHODS §2.5)."""
    from lightning_pref.minipick.policy import MiniPickPolicy

    return MINIPICK_NUM_STEPS if isinstance(policy, MiniPickPolicy) else DEFAULT_NUM_STEPS


def parse_evaluate_args(argv: list[str]) -> EvaluateArgs:
    """Parse ``evaluate``'s arguments (``--config`` YAML too) and build the scorers they name."""
    return parse_dataclass(EvaluateArgs, argv, "python -m lightning_pref evaluate", True)
