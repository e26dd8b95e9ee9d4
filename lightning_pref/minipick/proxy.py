"""MiniPickScore: MiniPick's proxy reward, a small PickScore trained on the MiniPick pairs.

PickScore (Kirstain et al. 2023, arXiv 2305.01569) fine-tunes CLIP on Pick-a-Pic: the score is
``exp(logit_scale) * cos(image_emb, text_emb)`` and the objective is a 2-way cross-entropy over the
two images of a pair against the human label ``[label_0, label_1]`` (official code:
``yuvalkirstain/PickScore``, ``trainer/criterions/clip_criterion.py``, ``in_batch_negatives`` off).
MiniPickScore keeps the score and the objective and shrinks the towers: a CNN over ``S x S`` RGB and
a mean-pooled word embedding over :func:`~lightning_pref.minipick.model.minipick_tokenizer` ids.
PickScore starts from CLIP, which already matches captions to images; these towers start from
scratch, so training adds CLIP's image-to-caption InfoNCE over the batch (:mod:`.proxy_train`) as
a stand-in for that pretraining (on 2048 pairs: validation accuracy 0.62 -> 0.73). Trained only on
the labelled pairs, never on the gold rater, it is an imperfect, exploitable proxy, like PickScore.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from lightning_pref.minipick.model import MAX_TEXT_LENGTH, minipick_tokenizer, minipick_vocab
from lightning_pref.scoring.base import Scorer

__all__ = [
    "MiniPickScore",
    "ProxyConfig",
    "caption_contrastive_loss",
    "pickscore_loss",
    "save_config_and_weights",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass(frozen=True)
class ProxyConfig:
    """Architecture of :class:`MiniPickScore` (saved as ``config.json``)."""

    image_size: int = 16
    """Side the images are resized to before the image tower, in pixels."""
    channels: tuple[int, ...] = (32, 64, 96)
    """Conv widths; every block after the first halves the resolution."""
    pool_size: int = 4
    """Side of the adaptive average pool before the image projection (keeps where things are)."""
    text_width: int = 64
    """Word embedding width."""
    embed_dim: int = 64
    """Width of the joint embedding space."""
    vocab_size: int = field(default_factory=lambda: len(minipick_vocab()))
    """Number of word ids (MiniPick's vocabulary, specials included)."""
    logit_scale_init: float = math.log(1.0 / 0.07)
    """Initial log temperature, CLIP's ``log(1 / 0.07)``."""
    seed: int = 0
    """Initialisation seed."""


def save_config_and_weights(model: nn.Module, config: dict, folder: str | Path) -> None:
    """Write ``config`` as ``config.json`` and ``model``'s tensors as ``model.safetensors``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=1))
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(folder / WEIGHTS_NAME))


class MiniPickScore(Scorer):
    """A CLIP-style dual encoder scoring ``exp(logit_scale) * cos(image_emb, text_emb)``.

    Not step-aware: ``timesteps`` is accepted and ignored.

    Args:
        config: architecture; None = :class:`ProxyConfig` defaults.
    """

    max_logit_scale = math.log(100.0)  # CLIP/open_clip clamp the learned log temperature here

    def __init__(self, config: ProxyConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ProxyConfig()
        self.tokenizer = minipick_tokenizer()
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
            torch.manual_seed(config.seed)
            blocks: list[nn.Module] = []
            width = 3
            for i, out in enumerate(config.channels):  # 3x3 convs; all but the first stride 2
                blocks += [nn.Conv2d(width, out, 3, 1 if i == 0 else 2, 1), nn.GELU()]
                width = out
            self.image_tower = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(config.pool_size))
            self.image_proj = nn.Linear(width * config.pool_size**2, config.embed_dim)
            self.word_embed = nn.Embedding(config.vocab_size, config.text_width, padding_idx=0)
            self.text_mlp = nn.Sequential(
                nn.Linear(config.text_width, config.text_width),
                nn.GELU(),
                nn.Linear(config.text_width, config.embed_dim),
            )
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))

    def tokenize(self, captions: Sequence[str]) -> Tensor:
        """``[N, L]`` word ids (``[BOS] words [EOS] [PAD]...``, truncated to ``L = 12``)."""
        return self.tokenizer(
            list(captions),
            padding="max_length",
            truncation=True,
            max_length=MAX_TEXT_LENGTH,
            return_tensors="pt",
        ).input_ids.to(self.logit_scale.device)

    def encode_images(self, images: Tensor) -> Tensor:
        """Unnormalised ``[N, D]`` embeddings of ``[N, 3, H, W]`` images in ``[-1, 1]``."""
        size = self.config.image_size
        x = images.to(self.logit_scale)  # the model's device and dtype
        if x.shape[-2:] != (size, size):  # PickScore's processor resizes too (to 224)
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        features = self.image_tower(x)  # [N, C, p, p]
        return self.image_proj(features.flatten(1))  # [N, D]

    def encode_text(self, input_ids: Tensor) -> Tensor:
        """Unnormalised ``[N, D]`` embeddings of ``[N, L]`` word ids: masked mean, then an MLP."""
        mask = (input_ids != 0).to(self.logit_scale.dtype)[:, :, None]  # [N, L, 1]
        words = self.word_embed(input_ids)  # [N, L, W]
        pooled = (words * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # [N, W]
        return self.text_mlp(pooled)  # [N, D]

    def scale(self) -> Tensor:
        """``exp(logit_scale)``, with the log clamped at ``log 100``."""
        return self.logit_scale.clamp(max=self.max_logit_scale).exp()

    def score_ids(self, images: Tensor, input_ids: Tensor) -> Tensor:
        """``[N]`` scores for images and pre-tokenized captions (see :meth:`tokenize`)."""
        image_emb = F.normalize(self.encode_images(images), dim=-1)  # [N, D]
        text_emb = F.normalize(self.encode_text(input_ids), dim=-1)  # [N, D]
        return self.scale() * (image_emb * text_emb).sum(-1)  # [N]

    def similarity(self, images: Tensor, input_ids: Tensor) -> Tensor:
        """``[T, N]`` scores of every caption (``[T, L]`` ids) against every image."""
        image_emb = F.normalize(self.encode_images(images), dim=-1)  # [N, D]
        text_emb = F.normalize(self.encode_text(input_ids), dim=-1)  # [T, D]
        return self.scale() * text_emb @ image_emb.T  # [T, N]

    def forward(
        self, images: Tensor, captions: Sequence[str], timesteps: Tensor | None = None
    ) -> Tensor:
        """Return ``[N]`` scores for images ``[N, 3, H, W]`` in [-1, 1] and N captions.

        Raises:
            ValueError: if the number of captions differs from the number of images.
        """
        if len(captions) != images.shape[0]:
            raise ValueError(f"got {images.shape[0]} images and {len(captions)} captions")
        return self.score_ids(images, self.tokenize(captions))

    def save_pretrained(self, folder: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` into ``folder``."""
        save_config_and_weights(self, asdict(self.config), folder)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> MiniPickScore:
        """Load a model written by :meth:`save_pretrained` (tensors only, strict), in eval mode."""
        folder = Path(folder)
        values = json.loads((folder / CONFIG_NAME).read_text())
        values["channels"] = tuple(values["channels"])
        model = cls(ProxyConfig(**values))
        model.load_state_dict(load_file(str(folder / WEIGHTS_NAME)), strict=True)
        return model.eval().requires_grad_(False)


def pickscore_loss(
    scores_0: Tensor, scores_1: Tensor, label_0: Tensor, weights: Tensor | None = None
) -> Tensor:
    """PickScore's pair loss: 2-way cross-entropy against ``[label_0, 1 - label_0]``.

    As in ``clip_criterion.py``: a tie (0.5/0.5) gets ``+log 0.5`` so that its best loss is 0
    (a constant: no gradient), and examples are weighted by ``weights / weights.sum()``
    (the official ``1 / num_examples_per_prompt``; None = uniform).

    Args:
        scores_0: ``[B]`` scores (logits) of the first images.
        scores_1: ``[B]`` scores of the second images.
        label_0: ``[B]`` target probability of the first image, in ``{0, 0.5, 1}`` or ``[0, 1]``.
        weights: ``[B]`` unnormalised example weights.

    Returns:
        Scalar loss.
    """
    logp = torch.stack([scores_0, scores_1], dim=-1).log_softmax(-1)  # [B, 2]
    label_0 = label_0.to(logp.dtype)
    ce = -(label_0 * logp[:, 0] + (1.0 - label_0) * logp[:, 1])  # [B]
    ce = ce + (label_0 == 0.5).to(ce.dtype) * math.log(0.5)
    weights = torch.ones_like(ce) if weights is None else weights.to(ce.dtype)  # [B]
    return (ce * weights).sum() / weights.sum()


def caption_contrastive_loss(logits: Tensor, input_ids: Tensor) -> Tensor:
    """CLIP's image-to-caption InfoNCE over a batch of pairs: each image picks its own caption.

    A batch holds ``b`` captions and both images of each pair (``[image_0s; image_1s]``). Other
    pairs with the same caption are not negatives (MiniPick repeats prompts), so they are masked.

    Args:
        logits: ``[b, 2b]`` caption-by-image scores (:meth:`MiniPickScore.similarity`).
        input_ids: ``[b, L]`` word ids of the ``b`` captions.

    Returns:
        Scalar mean cross-entropy over the ``2b`` images.
    """
    b = input_ids.shape[0]
    eye = torch.eye(b, dtype=torch.bool, device=logits.device)
    same = (input_ids[:, None, :] == input_ids[None, :, :]).all(-1) & ~eye  # [b, b]
    per_image = logits.T.masked_fill(same.repeat(2, 1), float("-inf"))  # [2b, b]
    target = torch.arange(b, device=logits.device).repeat(2)  # [2b]
    return F.cross_entropy(per_image, target)
