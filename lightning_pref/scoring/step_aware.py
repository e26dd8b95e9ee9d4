"""SPO's step-aware preference model (SPM): PickScore whose vision tower is timestep-conditioned.

SPO (Liang et al. 2024, arXiv 2406.04314; official code ``time_conditioned_clip.py``,
``spm_task.py``). A sinusoidal (256) → MLP timestep embedding ``c`` drives an adaLN modulation of
every CLIP vision encoder layer and a (shift, scale) modulation of the pooled image output::

    shift1, scale1, gate1, shift2, scale2, gate2 = Linear(SiLU(c)).chunk(6)     # per layer
    h = h + gate1 * attn(LN1(h) * (1 + scale1) + shift1)
    h = h + gate2 * mlp(LN2(h) * (1 + scale2) + shift2)
    pooled = post_layernorm(h[:, 0]) * (1 + scale) + shift                      # (shift, scale)

Initialisation: the final linears get zero weights, and bias 1 only on the two gate slices
(``[2D:3D]`` and ``[5D:6D]``); every shift and scale bias is 0. A fresh model therefore computes
exactly plain CLIP (``(1 + 0) * x + 0``, gate 1) at every timestep. METHODS.md's "bias init ones"
would, under this ``(1 + scale)`` form, double every LayerNorm output and add 1, so it can only
hold for the gates. DiT's adaLN-Zero (all zero) would instead drop every attention/MLP branch.
(SPO's constructor fills the whole bias with ones; whether transformers' ``post_init`` /
``from_pretrained`` later resets it was not checked. Trained weights are unaffected: only the
formula above must match.)

The modulation is injected with forward hooks on ``layer_norm1``, ``self_attn``, ``layer_norm2``
and ``mlp`` of each ``CLIPEncoderLayer`` and on ``post_layernorm``: transformers' code is not
forked and CLIP's state-dict keys stay those of ``CLIPModel``. Hooks read the modulation computed
for the current call, so gradient checkpointing of the vision tower (which recomputes layers
during backward) is refused.

Real checkpoints: SPO's SPM weights are on HF ``SPO-Diffusion-Models/Step-Aware_Preference_Models``.
Their file names and key layout were **not verified here** (no network). If they are a
``torch.save`` of SPO's ``StepAwarePreferenceModel`` state dict, :func:`split_spo_state_dict`
gives the key mapping (read from SPO's model code, which uses this same parameterisation and
chunk order): ``model.t_embedder.mlp.{0,2}`` → ``timestep_mlp.{0,2}``,
``model.vision_model.encoder.layers.{i}.adaLN_modulation.1`` → ``layers.{i}.1``,
``model.vision_model.adaLN_modulation.1`` → ``pooled.1``, all other ``model.*`` → ``CLIPModel``.
Load those into :meth:`StepAwarePickScore.from_pretrained` of PickScore_v1 (processor from the
laion CLIP-ViT-H-14 repo) and ``save_pretrained`` once to get this package's layout.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import CLIPModel, PreTrainedTokenizerBase

from lightning_pref.errors import ConfigError, ModelLoadError
from lightning_pref.scoring.clip import ClipPreprocess, load_clip_parts
from lightning_pref.scoring.pickscore import PickScore

__all__ = [
    "MODULATION_FILE",
    "StepAwarePickScore",
    "TimestepModulation",
    "split_spo_state_dict",
    "timestep_sinusoid",
]

MODULATION_FILE = "timestep_modules.safetensors"


def timestep_sinusoid(timesteps: Tensor, dim: int = 256, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding ``[N, dim]`` = ``[cos(t f_k), sin(t f_k)]``, ``f_k = P^(-k / half)``.

    The GLIDE/DiT timestep embedding (``k = 0 .. dim/2 - 1``, ``P = max_period``), in float32.
    """
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(-math.log(max_period) * k / half)  # [half]
    args = timesteps.float()[:, None] * freqs[None]  # [N, half]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # [N, 2 * half]
    return torch.cat([emb, emb.new_zeros(len(emb), dim % 2)], dim=-1)


class TimestepModulation(nn.Module):
    """The SPM's trainable timestep modules: embedder, per-layer adaLN and pooled modulation.

    Args:
        hidden_size: width ``D`` of the CLIP vision tower.
        num_layers: number of vision encoder layers.
        frequency_dim: width of the sinusoidal embedding (256 in SPO).
    """

    def __init__(self, hidden_size: int, num_layers: int, frequency_dim: int = 256) -> None:
        super().__init__()
        d = hidden_size
        self.hidden_size = d
        self.frequency_dim = frequency_dim
        self.timestep_mlp = nn.Sequential(nn.Linear(frequency_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.layers = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d)) for _ in range(num_layers)
        )
        self.pooled = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Identity modulation: zero weights, biases 0 except the gates (1). MLP ~ N(0, 0.02)."""
        d = self.hidden_size
        for linear in (self.timestep_mlp[0], self.timestep_mlp[2]):
            nn.init.normal_(linear.weight, std=0.02)  # DiT's TimestepEmbedder init
            nn.init.zeros_(linear.bias)
        for head in (*self.layers, self.pooled):
            nn.init.zeros_(head[1].weight)
            nn.init.zeros_(head[1].bias)
        for head in self.layers:
            head[1].bias[2 * d : 3 * d] = 1.0  # gate of the attention branch
            head[1].bias[5 * d :] = 1.0  # gate of the MLP branch

    def embed(self, timesteps: Tensor) -> Tensor:
        """Timestep embedding ``[N, D]`` of timesteps ``[N]``."""
        freq = timestep_sinusoid(timesteps, self.frequency_dim)  # [N, 256]
        return self.timestep_mlp(freq.to(self.timestep_mlp[0].weight.dtype))


class StepAwarePickScore(PickScore):
    """SPO's step-aware PickScore: scores noisy or predicted images at diffusion timestep ``t``.

    See the module docstring for the architecture, initialisation and checkpoint layout.

    Args:
        clip: the CLIP model (PickScore_v1 in SPO).
        tokenizer: its tokenizer.
        preprocess: image preprocessing; None = OpenAI CLIP statistics at the vision image size.
        modulation: the timestep modules; None = a fresh, identity-initialised one.
    """

    def __init__(
        self,
        clip: CLIPModel,
        tokenizer: PreTrainedTokenizerBase,
        preprocess: ClipPreprocess | None = None,
        modulation: TimestepModulation | None = None,
    ) -> None:
        super().__init__(clip, tokenizer, preprocess)
        vision = clip.vision_model
        layers = vision.encoder.layers
        if modulation is None:
            modulation = TimestepModulation(clip.config.vision_config.hidden_size, len(layers))
            modulation.to(clip.logit_scale.dtype)
        if len(modulation.layers) != len(layers):
            raise ConfigError(
                f"modulation has {len(modulation.layers)} layers, the vision tower {len(layers)}"
            )
        self.modulation = modulation
        self._cond: tuple[list[tuple[Tensor, ...]], tuple[Tensor, ...]] | None = None
        for i, layer in enumerate(layers):
            layer.layer_norm1.register_forward_hook(partial(self._modulate_hook, i, 0))
            layer.self_attn.register_forward_hook(partial(self._gate_hook, i, 2))
            layer.layer_norm2.register_forward_hook(partial(self._modulate_hook, i, 3))
            layer.mlp.register_forward_hook(partial(self._gate_hook, i, 5))
        vision.post_layernorm.register_forward_hook(self._pooled_hook)

    def _modulate_hook(
        self, index: int, first: int, module: nn.Module, args: tuple, out: Tensor
    ) -> Tensor | None:
        if self._cond is None:  # the CLIP model called directly: plain CLIP
            return None
        shift, scale = self._cond[0][index][first : first + 2]  # [N, D] each
        return out * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)

    def _gate_hook(
        self, index: int, which: int, module: nn.Module, args: tuple, out: Tensor | tuple
    ) -> Tensor | tuple | None:
        if self._cond is None:
            return None
        gate = self._cond[0][index][which].unsqueeze(1)  # [N, 1, D]
        if isinstance(out, tuple):  # CLIPAttention returns (attn_output, attn_weights)
            return (out[0] * gate, *out[1:])
        return out * gate

    def _pooled_hook(self, module: nn.Module, args: tuple, out: Tensor) -> Tensor | None:
        if self._cond is None:
            return None
        shift, scale = self._cond[1]  # [N, D] each
        return out * (1 + scale) + shift

    def image_features(self, pixel_values: Tensor, timesteps: Tensor | None = None) -> Tensor:
        """Projected image embeddings ``[N, P]`` at ``timesteps`` (``[N]`` or scalar; None = 0)."""
        if any(
            getattr(m, "gradient_checkpointing", False) for m in self.clip.vision_model.modules()
        ):
            raise ConfigError(
                "StepAwarePickScore does not support gradient checkpointing of CLIP: its adaLN "
                "hooks would see no timestep when layers are recomputed in backward"
            )
        n = pixel_values.shape[0]
        if timesteps is None:
            timesteps = torch.zeros(n, device=pixel_values.device)
        t = torch.as_tensor(timesteps, device=pixel_values.device).reshape(-1).expand(n)  # [N]
        c = self.modulation.embed(t)  # [N, D]
        per_layer = [head(c).chunk(6, dim=-1) for head in self.modulation.layers]
        self._cond = (per_layer, self.modulation.pooled(c).chunk(2, dim=-1))
        try:
            return super().image_features(pixel_values)
        finally:
            self._cond = None

    @classmethod
    def from_pretrained(
        cls, pretrained: str, processor_path: str | None = None, antialias: bool = False
    ) -> StepAwarePickScore:
        """Load CLIP plus, if present, ``timestep_modules.safetensors`` from the same folder.

        Without that file the modulation is freshly initialised (plain PickScore at every
        timestep), the starting point of SPM training. Never runs remote code.

        Args:
            pretrained: folder or hub id with ``config.json``, CLIP weights and optionally
                ``timestep_modules.safetensors`` (written by :meth:`save_pretrained`).
            processor_path: folder or hub id with the tokenizer and ``preprocessor_config.json``;
                None = ``pretrained``.
            antialias: antialias the bicubic resize; False as in SPO's SPM training.

        Raises:
            ModelLoadError: one line naming what is missing and how to fix it.
        """
        clip, tokenizer, preprocess, folder = load_clip_parts(pretrained, processor_path, antialias)
        scorer = cls(clip, tokenizer, preprocess)
        path = folder / MODULATION_FILE
        if path.is_file():
            try:
                scorer.modulation.load_state_dict(load_file(str(path)))
            except Exception as err:  # shape or key mismatch, corrupt file
                first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                raise ModelLoadError(
                    f"'{path}' does not match the CLIP vision tower: {type(err).__name__}: {first}"
                ) from err
        return scorer.eval()

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write CLIP, tokenizer, preprocessor config and ``timestep_modules.safetensors``."""
        root = super().save_pretrained(folder)
        tensors = {k: v.detach().contiguous() for k, v in self.modulation.state_dict().items()}
        save_file(tensors, str(root / MODULATION_FILE))
        return root


_SPO_RENAMES = (
    (re.compile(r"^t_embedder\.mlp\.(\d+)\."), r"timestep_mlp.\1."),
    (re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.adaLN_modulation\.1\."), r"layers.\1.1."),
    (re.compile(r"^vision_model\.adaLN_modulation\.1\."), "pooled.1."),
)


def split_spo_state_dict(
    state_dict: Mapping[str, Tensor],
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split an SPO SPM state dict into ``CLIPModel`` and :class:`TimestepModulation` state dicts.

    Unverified against the released files (see the module docstring). Keys may carry SPO's
    ``model.`` prefix. Load the first with ``clip.load_state_dict(..., strict=False)`` (old
    checkpoints carry ``text_model.embeddings.position_ids`` and
    ``vision_model.embeddings.position_ids`` buffers) and the second strictly.
    """
    clip_sd: dict[str, Tensor] = {}
    mod_sd: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        key = key.removeprefix("model.")
        for pattern, repl in _SPO_RENAMES:
            if pattern.match(key):
                mod_sd[pattern.sub(repl, key)] = value
                break
        else:
            clip_sd[key] = value
    return clip_sd, mod_sd
