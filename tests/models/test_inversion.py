"""The inversion grid, landing level and InPO noise of diffusers 0.20.0, pinned by hand.

diffusers 0.20.0 (pinned by the official SmPO and InPO requirements.txt), ``DDIMInverseScheduler``:
``set_timesteps(n)``: forward grid ``k·Δ + steps_offset`` (Δ = 1000 // n, ``leading`` spacing), then
``np.roll(grid, 1)`` and ``grid[0] = grid[1] - Δ``; ``step(ε, τ, x)`` goes from level τ to τ + Δ.
The official loop takes every τ < t, so x lands at ``max{τ < t} + Δ``.

Both schedules here have ``steps_offset`` 1:

n = 5, Δ = 200: forward grid [1, 201, 401, 601, 801] → rolled [801, 1, 201, 401, 601] → first entry
1 - 200 = -199 → **[-199, 1, 201, 401, 601]**. Landing max{τ < t} + 200:
  t = 2:   τ ∈ {-199, 1}            → 1 + 200 = 201
  t = 150: τ ∈ {-199, 1}            → 201
  t = 300: τ ∈ {-199, 1, 201}       → 401
  t = 450: τ up to 401              → 601
  t = 700: τ up to 601 (all)        → 801
  t = 900: all                      → 801 (the top)
n = 10, Δ = 100: forward [1, 101, ..., 901] → **[-99, 1, 101, 201, ..., 801]**. Landing:
  t = 2 → 1 + 100 = 101; 150 → 101 + 100 = 201; 300 → 201 + 100 = 301; 450 → 401 + 100 = 501;
  700 → 601 + 100 = 701; 900 → 801 + 100 = 901.
The grids and landings depend on n, Δ and steps_offset only, so they are the same for MiniPick's and
SD1.5's schedules (both offset 1); the ā values differ.

InPO's noise std for the jump τ → τ + Δ: ``sqrt((1-ā_τ)/(1-ā_{τ+Δ}) · (1-ā_{τ+Δ}/ā_τ))``
(``DDIMScheduler._get_variance(τ+Δ, τ)``), ā at τ < 0 = 1 if ``set_alpha_to_one`` (MiniPick: the
key is absent, default True) else ā_0 (SD1.5: false).

ā_t = Π_{s≤t} (1 - β_s). MiniPick: β_s = 1e-4 + s·(0.02 - 1e-4)/999 (linear). SD1.5: β_s =
(sqrt(0.00085) + s·(sqrt(0.012) - sqrt(0.00085))/999)² (scaled linear). The products evaluate to
(float64, 7 significant digits):
  MiniPick: ā_1 = 0.9997801, ā_401 = 0.1920064, ā_501 = 0.07701248, ā_801 = 0.001483317,
            ā_901 = 0.0002653672
  SD1.5:    ā_0 = 0.99915, ā_1 = 0.998296, ā_401 = 0.4228815, ā_501 = 0.2749991,
            ā_801 = 0.03654652, ā_901 = 0.0140049
Jumps (n = 10), first factor · second factor = variance → std:
  MiniPick -99→1:   ā_lo = 1, so 1 - ā_lo = 0                                   → std 0
  MiniPick 401→501: (0.8079936/0.9229875)·(1 - 0.07701248/0.1920064)
                    = 0.875411·0.598907 = 0.524290                             → std 0.7241
  MiniPick 801→901: (0.9985167/0.9997346)·(1 - 0.0002653672/0.001483317)
                    = 0.998782·0.821099 = 0.820098                             → std 0.9056
  SD1.5 -99→1:      (0.00085/0.001703972)·(1 - 0.998296/0.99915)
                    = 0.498834·0.000855 = 0.000426                             → std 0.0206
  SD1.5 401→501:    (0.5771185/0.7250009)·(1 - 0.2749991/0.4228815)
                    = 0.796024·0.349702 = 0.278371                             → std 0.5276
  SD1.5 801→901:    (0.9634535/0.9859951)·(1 - 0.0140049/0.03654652)
                    = 0.977138·0.616793 = 0.602692                             → std 0.7763
"""

import json
from pathlib import Path

import pytest
import torch

from lightning_pref.errors import ConfigError
from lightning_pref.minipick.model import build_minipick_components
from lightning_pref.models.inversion import InversionGrid, invert

REALFILES = Path(__file__).resolve().parents[3] / "shared" / "realfiles"
SD15_SCHEDULER = REALFILES / "sd_configs/sd15_stable-diffusion-v1-5/scheduler/scheduler_config.json"
T_VALUES = [2, 150, 300, 450, 700, 900]


def _minipick_config():
    return dict(build_minipick_components().noise_scheduler.config)


def _sd15_config():
    if not SD15_SCHEDULER.exists():
        pytest.skip(f"real SD1.5 scheduler config not found at {SD15_SCHEDULER}")
    return json.loads(SD15_SCHEDULER.read_text())


SCHEDULES = {"minipick": _minipick_config, "sd15": _sd15_config}


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize(
    ("n", "grid", "landing"),
    [
        (5, [-199, 1, 201, 401, 601], [201, 201, 401, 601, 801, 801]),
        (10, [-99, 1, 101, 201, 301, 401, 501, 601, 701, 801], [101, 201, 301, 501, 701, 901]),
    ],
)
def test_grid_and_landing_level_as_diffusers_0_20(schedule, n, grid, landing):
    """See the module docstring for the hand-worked grids and landings."""
    g = InversionGrid.from_config(SCHEDULES[schedule](), n)
    assert g.timesteps == grid
    assert g.landing_levels(torch.tensor(T_VALUES)).tolist() == landing
    # every step goes τ → τ + Δ with the UNet told τ (its starting level)
    assert all(s.end - s.start == 1000 // n and s.told == s.start for s in g.steps)


@pytest.mark.parametrize(
    ("schedule", "initial", "expected"),
    [
        ("minipick", 1.0, {(-99, 1): 0.0, (401, 501): 0.7241, (801, 901): 0.9056}),
        ("sd15", 0.999150, {(-99, 1): 0.0206, (401, 501): 0.5276, (801, 901): 0.7763}),
    ],
)
def test_inpo_noise_std_is_the_ddim_variance_of_the_jump(schedule, initial, expected):
    """See the module docstring for the arithmetic (n = 10)."""
    g = InversionGrid.from_config(SCHEDULES[schedule](), 10)
    assert g.initial_alpha_cumprod == pytest.approx(initial, abs=1e-6)
    by_jump = {(s.start, s.end): s for s in g.steps}
    for jump, std in expected.items():
        assert g.jump_std(by_jump[jump]) == pytest.approx(std, abs=1e-4), jump


def test_the_042_placement_is_one_grid_step_lower():
    """``landing="below"`` (diffusers 0.42's DDIMInverseScheduler): grid [1, 201, ..., 801], the
    step at τ goes from τ - 200 to τ, so t = 300 stops at 201 (0.20.0: 401); t = 1 takes no step."""
    g = InversionGrid.from_config(_minipick_config(), 5, landing="below")
    assert g.timesteps == [1, 201, 401, 601, 801]
    assert g.landing_levels(torch.tensor([1, *T_VALUES])).tolist() == [1, 1, 1, 201, 401, 601, 801]


def test_one_step_with_the_noise_term_by_hand():
    """t = 1 on SD1.5's grid of 10 takes one step, -99 → 1. With a denoiser that predicts ε = 0:
    x̂0 = x / sqrt(ā_0) and x' = sqrt(ā_1)·x̂0 + 0 = sqrt(0.998296/0.999150)·x; InPO then adds
    0.1 · z · 0.0206 with z the generator's next normal draw."""
    g = InversionGrid.from_config(_sd15_config(), 10)
    x0 = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    embeds = torch.zeros(2, 1, 1)

    def zero_eps(x, t, e):
        assert t.tolist() == [-99, -99]  # told the step's starting level
        return torch.zeros_like(x)

    out = invert(zero_eps, g, x0, torch.tensor([1, 1]), embeds, extra_noise=0.1,
                 generator=torch.Generator().manual_seed(5))  # fmt: skip
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
    scale = (0.998296 / 0.999150) ** 0.5
    torch.testing.assert_close(out, scale * x0 + 0.1 * 0.0206 * z, rtol=0, atol=2e-5)


def test_clip_sample_clamps_the_predicted_x0():
    """MiniPick's config has clip_sample: x̂0 is clamped to [-1, 1] before the step (as 0.20.0)."""
    g = InversionGrid.from_config(_minipick_config(), 5)
    step = g.steps[2]  # 201 → 401
    x, eps = torch.full((1, 1, 1, 1), 3.0), torch.zeros(1, 1, 1, 1)
    a_lo, a_hi = g.alpha(201), g.alpha(401)
    assert 3.0 / a_lo**0.5 > 1  # the unclamped x̂0 would be outside [-1, 1]
    assert g.step(eps, step, x).item() == pytest.approx(a_hi**0.5 * 1.0)


def test_unsupported_spacing_and_grid_are_named():
    with pytest.raises(ConfigError, match="timestep_spacing"):
        InversionGrid.from_config({"timestep_spacing": "linspace"}, 5)
    with pytest.raises(ConfigError, match="num_steps"):
        InversionGrid.from_config({}, 1)
