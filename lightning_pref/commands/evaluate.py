"""``python -m lightning_pref evaluate``: load a run and its baseline, sample, score and report.

Compares a run's checkpoint with the model it started from (or another run) using
:mod:`lightning_pref.evaluation`, prints the table and writes ``report.json``, ``grid.png``
(+ ``grid.txt``) and TensorBoard events to ``<run>/eval_seed<seed>``. The arguments are
:class:`~lightning_pref.evaluation.args.EvaluateArgs`; how negative-model runs are evaluated is in
:mod:`lightning_pref.evaluation.setup`.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from lightning_pref.evaluation.args import parse_evaluate_args
from lightning_pref.evaluation.compare import evaluate_policies, save_grid
from lightning_pref.evaluation.report import EvalReport
from lightning_pref.evaluation.setup import prepare_evaluation
from lightning_pref.models.sampling import sample_plan, sample_seeded

__all__ = ["main"]


def _log_to_tensorboard(log_dir: Path, report: EvalReport, grid: Tensor) -> None:
    """Write the grid, the report table and the headline numbers as TensorBoard events."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(log_dir))
    try:
        writer.add_image("eval/grid", grid, 0, dataformats="CHW")
        writer.add_text("eval/report", report.to_markdown_table(), 0)
        writer.add_scalar("eval/win_rate", report.win_rate, 0)
        for name, stats in report.scores.items():
            values = {"base": stats.base_mean, "tuned": stats.tuned_mean}
            values |= {"base_median": stats.base_median, "tuned_median": stats.tuned_median}
            values |= {"win_rate": stats.win_rate}
            for key, value in values.items():
                if value is not None:
                    writer.add_scalar(f"eval/{name}_{key}", value, 0)
        if report.implicit_acc is not None:
            writer.add_scalar("eval/implicit_acc", report.implicit_acc, 0)
    finally:
        writer.close()


def main(argv: list[str]) -> EvalReport:
    """``python -m lightning_pref evaluate``: print the table; write report.json, grid, events.

    Args:
        argv: the arguments after ``evaluate`` (see :class:`EvaluateArgs` or ``--help``).
    """
    args = parse_evaluate_args(argv)
    setup = prepare_evaluation(args, negative_guidance=True)
    options = args.sampling_options()
    report = evaluate_policies(
        setup.base.policy,
        setup.tuned.policy,
        setup.prompts,
        setup.scorers,
        args.gold,
        args.num_samples,
        args.seed,
        options,
        **setup.negatives,
    )
    report = setup.finish(report, args)
    suffix = "_negative" if setup.tuned_negative or setup.base_negative else ""
    out = Path(args.out) if args.out else setup.run.config.parent / f"eval_seed{args.seed}{suffix}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(report.to_json() + "\n")
    captions, seeds = sample_plan(setup.prompts, min(8, args.num_samples), args.seed)  # first 8
    grid = [
        sample_seeded(m.policy, captions, seeds, uncond_denoiser=neg, **options.sampler)
        for m, neg in ((setup.base, setup.base_negative), (setup.tuned, setup.tuned_negative))
    ]
    _log_to_tensorboard(out, report, save_grid(*grid, captions, out / "grid.png"))
    print(report.to_markdown_table())
    return report
