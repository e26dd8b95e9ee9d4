"""InPO: Diffusion-DPO on DDIM-inverted latents."""

from __future__ import annotations

from lightning_pref.models.noising import DDIMInversion, NoisingStrategy
from lightning_pref.objectives.dpo import DiffusionDPO

__all__ = ["InPO"]


class InPO(DiffusionDPO):
    """InPO (JaydenLyh/InPO ``train.py --train_method ddiminpo``, METHODS §5).

    The loss is Diffusion-DPO's, ``-logsigmoid(-0.5·β·((mse_w - mse_l) - (ref_w - ref_l)))``, on
    human labels; what differs is the input: x_t comes from DDIM inversion of x0 with the policy on
    a grid of 10 with a small noise term (η = 0.1) after each step, and the target is the noise the
    inversion implies (:class:`~lightning_pref.models.noising.DDIMInversion`). SmPO without
    smoothing and without renoise.

    Args:
        beta: β in the -0.5·β convention (InPO SD1.5: 2000, SDXL: 5000).
        inversion_steps: grid of the default DDIM inversion.
        inversion_noise: η of the per-step noise term.
    """

    def __init__(
        self, beta: float = 2000.0, inversion_steps: int = 10, inversion_noise: float = 0.1
    ) -> None:
        super().__init__(beta)
        self.inversion_steps, self.inversion_noise = inversion_steps, inversion_noise

    def default_noising(self) -> NoisingStrategy:
        """DDIM inversion on a grid of ``inversion_steps`` with η = ``inversion_noise``."""
        return DDIMInversion(self.inversion_steps, self.inversion_noise)
