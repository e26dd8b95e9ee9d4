"""The base-model cache gives exactly evaluate_policies' report, and samples the base only once."""

import json

import pytest
import torch
from torch import nn

import lightning_pref.evaluation.base_cache as base_cache
from lightning_pref.errors import ConfigError
from lightning_pref.evaluation.base_cache import BaseCache, evaluate_policies_cached, state_digest
from lightning_pref.evaluation.compare import SamplingOptions, evaluate_policies
from lightning_pref.models import TinyDiffusionPolicy
from lightning_pref.scoring import Scorer

PROMPTS = ["a red circle", "a blue square", "a green cross"]
SETTINGS = {"num_steps": 2, "guidance_scale": 5.0, "eta": 0.0, "batch_size": 2}
DIVERSITY = {"samples_per_prompt_for_diversity": 2, "num_diversity_prompts": 2}


class Brightness(Scorer):
    def forward(self, images, captions, timesteps=None):
        return images.float().mean(dim=(1, 2, 3))


class ScaledBrightness(Scorer):
    """A scorer with a weight, so that its identity is its weights."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale))

    def forward(self, images, captions, timesteps=None):
        return self.scale * images.float().mean(dim=(1, 2, 3))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _policy(seed: int) -> TinyDiffusionPolicy:
    policy = TinyDiffusionPolicy(sample_size=8, seed=seed)
    policy.build()
    return policy.eval()


@pytest.fixture(scope="module")
def policies():
    return _policy(0), _policy(1)


@pytest.fixture
def count_base_sampling(monkeypatch):
    calls = []
    real = base_cache._base_samples

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(base_cache, "_base_samples", counting)
    return calls


def _cached(base, tuned, cache, seed=0, scorers=None):
    scorers = scorers or {"gold": Brightness()}
    options = SamplingOptions(**SETTINGS, **DIVERSITY)
    return evaluate_policies_cached(cache, base, tuned, PROMPTS, scorers, "gold", 5, seed, options)


def test_cached_report_equals_evaluate_policies_on_miss_and_hit(policies, count_base_sampling):
    base, tuned = policies
    options = SamplingOptions(**SETTINGS, **DIVERSITY)
    expected = evaluate_policies(
        base, tuned, PROMPTS, {"gold": Brightness()}, "gold", 5, 0, options
    )
    cache = BaseCache()
    first, miss = _cached(base, tuned, cache)
    second, hit = _cached(base, tuned, cache)
    assert first.to_json() == expected.to_json()  # float64 scores: equal to the last bit
    assert second.to_json() == expected.to_json()
    assert (miss.hit, hit.hit) == (False, True)
    assert hit.seconds == miss.seconds > 0  # a hit saves the time the miss spent
    assert len(count_base_sampling) == 1
    assert expected.diversity_base is not None and expected.wins + expected.losses > 0


def test_cache_files_are_reused_by_a_new_process(policies, tmp_path, count_base_sampling):
    base, tuned = policies
    report, _ = _cached(base, tuned, BaseCache(tmp_path))
    (entry,) = tmp_path.glob("*.json")
    assert len(json.loads(entry.read_text())["scores"]["gold"]) == 5
    again, use = _cached(base, tuned, BaseCache(tmp_path))  # a fresh cache on the same folder
    assert use.hit and again.to_json() == report.to_json()
    assert len(count_base_sampling) == 1


def test_key_covers_weights_seed_and_scorers(policies, count_base_sampling):
    base, tuned = policies
    cache = BaseCache()
    _cached(base, tuned, cache)
    assert not _cached(base, tuned, cache, seed=1)[1].hit  # other evaluation seed
    assert not _cached(tuned, base, cache)[1].hit  # other base weights
    assert not _cached(base, tuned, cache, scorers={"gold": ScaledBrightness(2.0)})[1].hit
    assert not _cached(base, tuned, cache, scorers={"gold": ScaledBrightness(3.0)})[1].hit
    assert _cached(base, tuned, cache, scorers={"gold": ScaledBrightness(3.0)})[1].hit
    assert len(count_base_sampling) == 5


def test_unreadable_or_foreign_cache_file_is_a_miss(policies, tmp_path, count_base_sampling):
    base, tuned = policies
    _cached(base, tuned, BaseCache(tmp_path))
    (entry,) = tmp_path.glob("*.json")
    entry.write_text("{not json")
    assert not _cached(base, tuned, BaseCache(tmp_path))[1].hit
    data = json.loads(entry.read_text())
    entry.write_text(json.dumps({**data, "key": "another key"}))
    assert not _cached(base, tuned, BaseCache(tmp_path))[1].hit
    assert len(count_base_sampling) == 3


def test_state_digest_sees_one_changed_weight(policies):
    base, _ = policies
    copy = _policy(0)
    assert state_digest(copy) == state_digest(base)
    with torch.no_grad():
        next(copy.unet.parameters()).view(-1)[0] += 1e-6
    assert state_digest(copy) != state_digest(base)


def test_unknown_gold_scorer_is_a_config_error(policies):
    base, tuned = policies
    with pytest.raises(ConfigError, match="'pick' is not among the scorers"):
        evaluate_policies_cached(None, base, tuned, PROMPTS, {"gold": Brightness()}, "pick", 1, 0)
