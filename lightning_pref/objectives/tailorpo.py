"""TailorPO: DPO on transitions from a shared x_t, ranked by the step-wise reward."""

from __future__ import annotations

from lightning_pref.objectives.spo import SPO

__all__ = ["TailorPO"]


class TailorPO(SPO):
    """TailorPO (Ren et al., arXiv 2502.01667), reconstructed from the abstract (METHODS §3).

    The paper's point is on the data side: the two transitions of a pair start from the *same*
    x_t (so the DPO gradient direction is right) and are ranked by the step-wise reward
    ``r(x̂0(x_{t−1}))`` of the noisy samples themselves, not by the final image's label. The step
    pool (:class:`~lightning_pref.data.step_pool.StepPoolSampler`) builds such pairs with k=2
    candidates and a plug-in reward; TailorPO-G additionally pushes the winner along the reward
    gradient there (``reward_guidance``). The loss is DPO on the transition log-ratios:
    ``loss = −logσ(β·[(logp_θ(x_w) − logp_ref(x_w)) − (logp_θ(x_l) − logp_ref(x_l))])``.

    No code or hyperparameters are published. Defaults and why:

    - ``beta=10``: the log-probabilities are mean-reduced over C, h, w as in SPO, whose β=10 is
      the only published scale for that convention (D3PO's 0.1 is for its own setting).
    - ``clip=None``: the abstract motivates TailorPO by the *direction* of the DPO gradient; SPO's
      hard ratio clamp zeroes that gradient for pairs that moved more than ``clip``, so it is off
      by default and available for ablations (``clip=0.1`` gives exactly SPO's loss).

    The loss is SPO's with the clamp optional, so the class reuses :class:`SPO`'s ``forward``.

    Args:
        beta: β, the scale of the log-ratio difference.
        clip: optional ratio clamp as in :class:`~lightning_pref.objectives.SPO`.
    """

    def __init__(self, beta: float = 10.0, clip: float | None = None) -> None:
        super().__init__(beta=beta, clip=clip)
