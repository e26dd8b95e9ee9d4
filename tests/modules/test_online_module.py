"""StepPoolModule and StepPoolSampler on a tiny policy: pools, log-probs, training, DDP."""

import inspect
import math

import pytest
import torch
from lightning import Trainer

from lightning_pref import objectives
from lightning_pref.data import PromptDataModule, StepPoolSampler
from lightning_pref.models import TinyDiffusionPolicy
from lightning_pref.models.sampling import ddim_step
from lightning_pref.modules import StepPoolModule
from lightning_pref.objectives import SPO, StepObjective, TailorPO
from lightning_pref.scoring.base import Scorer
from lightning_pref.types import PromptBatch

STEP_OBJECTIVES = [
    obj
    for obj in (getattr(objectives, name) for name in objectives.__all__)
    if inspect.isclass(obj) and issubclass(obj, StepObjective) and not inspect.isabstract(obj)
]
CAPTIONS = ["a red circle", "a blue square", "a green triangle", "a small star"]


class Brightness(Scorer):
    """A differentiable toy reward: 10 × mean pixel value."""

    def forward(self, images, captions, timesteps=None):
        return images.mean(dim=(1, 2, 3)) * 10


def make_module(objective=None, **pool_kwargs) -> StepPoolModule:
    policy = TinyDiffusionPolicy(sample_size=8, seed=0)
    kwargs = {"num_candidates": 3, "threshold": 0.0, "num_steps": 20} | pool_kwargs
    pool = StepPoolSampler(Brightness(), **kwargs)
    module = StepPoolModule(policy, objective or SPO(), pool, train_batch_size=4)
    module.configure_model()
    return module


def generate(module, seed=0, captions=CAPTIONS):
    return module.pool.generate(module.policy, captions, torch.Generator().manual_seed(seed))


def test_pool_transitions_follow_spo_schedule():
    """20 steps, max_timestep 751: branch at t=751; pairs at t = 751, 701, ..., 1 (16 a prompt)."""
    pool = generate(make_module())
    expected = torch.tensor([751 - 50 * i for i in range(16)]).repeat_interleave(len(CAPTIONS))
    assert torch.equal(pool.batch.timesteps, expected)
    assert torch.equal(pool.batch.prev_timesteps, expected - 50)
    assert len(pool) == 16 * len(CAPTIONS)
    assert pool.batch.captions[: len(CAPTIONS)] == CAPTIONS
    assert bool((pool.score_w >= pool.score_l).all())
    assert pool.final_scores.shape == (len(CAPTIONS) * 3,)


def test_threshold_keeps_pairs_by_tanh_gap():
    module = make_module(threshold=-1.0)
    gaps = torch.tanh((generate(module).score_w - generate(module).score_l) / 2)
    module.pool.threshold = float(gaps.median())
    pool = generate(module)
    expected = torch.tanh((pool.score_w - pool.score_l) / 2) > module.pool.threshold
    assert torch.equal(pool.valid, expected)
    assert 0 < int(pool.valid.sum()) < len(pool)


def test_both_candidates_branch_from_the_shared_state():
    """(x - μ(x_t)) / σ is standard normal for winner and loser: both were drawn around the
    posterior mean of the recorded x_t (a wrong x_t would give residuals far from N(0, 1))."""
    module = make_module()
    pool = generate(module)
    b = pool.batch
    with torch.no_grad():
        cond = module.policy.encode_prompt(b.captions)
        uncond = module.policy.encode_prompt([""] * len(b.captions))
        out = module.pool.predict(module.policy, b.x_t, b.timesteps, cond, uncond)
        step = ddim_step(module.policy, out, b.x_t, b.timesteps, b.prev_timesteps, 1.0, None, b.x_w)
    for x in (b.x_w, b.x_l):
        z = (x - step.mean) / step.std.view(-1, 1, 1, 1)
        assert abs(z.mean().item()) < 0.05
        assert z.std().item() == pytest.approx(1.0, abs=0.05)
    assert not torch.equal(b.x_w, b.x_l)


def test_generation_is_seeded():
    module = make_module()
    a, b, c = generate(module, 0), generate(module, 0), generate(module, 1)
    assert torch.equal(a.batch.x_w, b.batch.x_w)
    assert not torch.equal(a.batch.x_w, c.batch.x_w)


def test_reward_guidance_widens_the_gap():
    """TailorPO-G: pushing the winner along the reward gradient raises its score."""
    plain = generate(make_module())
    guided = generate(make_module(reward_guidance=1.0))
    assert (guided.score_w - guided.score_l).mean() > (plain.score_w - plain.score_l).mean()


def test_policy_equals_reference_gives_ratio_one_and_log2():
    module = make_module()
    pair = module.step_pair(generate(module).batch)
    assert torch.equal(pair.logp_w, pair.ref_logp_w)
    assert torch.equal(pair.logp_l, pair.ref_logp_l)
    assert SPO()(pair).loss.item() == pytest.approx(math.log(2), abs=1e-6)


@pytest.mark.parametrize("objective_cls", STEP_OBJECTIVES, ids=lambda c: c.__name__)
def test_parameters_change_after_two_steps(objective_cls):
    module = make_module(objective_cls())
    pool = generate(module)
    before = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    for step in range(2):
        index = torch.arange(4 * step, 4 * step + 4)
        loss = module.objective(module.step_pair(pool.select(index))).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    changed = [n for n, p in module.named_parameters() if p.requires_grad]
    changed = [n for n in changed if not torch.equal(module.get_parameter(n), before[n])]
    assert len(changed) > 0.5 * len(before)
    ref = module.reference_unet
    assert all(not p.requires_grad for p in ref.parameters())


def fit(module, max_steps=3, **trainer_kwargs):
    data = PromptDataModule(train_prompts=CAPTIONS, val_prompts=CAPTIONS[:2], batch_size=2)
    kwargs = dict(
        accelerator="cpu",
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        limit_val_batches=1,
        num_sanity_val_steps=0,
    )
    trainer = Trainer(**(kwargs | trainer_kwargs))
    trainer.fit(module, data)
    return trainer


def test_fit_counts_optimizer_steps_and_logs_pool_metrics():
    module = make_module(TailorPO(), num_steps=5)
    trainer = fit(module, max_steps=3)
    assert trainer.global_step == 3
    for key in ("train/loss", "train/pool_valid_frac", "train/pool_pairs_per_s", "val/loss"):
        assert key in trainer.callback_metrics, key
    assert "train/ratio_win" in trainer.callback_metrics


def test_round_takes_one_pass_over_the_valid_pairs():
    """5 steps (801, 601, ..., 1), max_timestep 751: 4 transitions x 2 prompts = 8 pairs, all
    valid at threshold -1: 8 / 4 = 2 optimizer steps for the first round."""
    module = make_module(num_steps=5, threshold=-1.0)
    trainer = fit(module, max_steps=100, max_epochs=1, limit_train_batches=1)
    assert trainer.global_step == 2


def test_prompt_batch_type():
    module = make_module(num_steps=5)
    pool = module.generate_pool(PromptBatch(CAPTIONS[:2]), torch.Generator().manual_seed(0))
    assert len(pool) == 2 * 4  # t = 601, 401, 201, 1


def test_resumed_run_matches_uninterrupted_run(tmp_path):
    """Rounds are seeded by (seed, epoch, round, rank): a run stopped after one epoch and resumed
    from its checkpoint ends with exactly the weights of an uninterrupted two-epoch run."""

    def run(max_epochs):
        module = make_module(TailorPO(), num_steps=5)
        trainer = fit(module, max_steps=-1, max_epochs=max_epochs, limit_val_batches=0)
        return module, trainer

    full, _ = run(2)
    _, trainer = run(1)
    ckpt = tmp_path / "part.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed = make_module(TailorPO(), num_steps=5)
    data = PromptDataModule(train_prompts=CAPTIONS, val_prompts=CAPTIONS[:2], batch_size=2)
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        limit_val_batches=0,
    )
    trainer.fit(resumed, data, ckpt_path=str(ckpt))
    assert trainer.global_step > 0
    after = resumed.policy.unet.state_dict()
    for name, value in full.policy.unet.state_dict().items():
        assert torch.equal(value, after[name]), name
