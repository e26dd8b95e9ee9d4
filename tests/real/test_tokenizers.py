"""Token ids of the real prompt sets through each real SD tokenizer folder.

Our ids are ``DiffusionPolicy._token_ids`` on the tokenizer :func:`load_components` loads from a
folder made from the real configs (:mod:`sd_folders`). They must equal transformers' own
``CLIPTokenizer`` called as the diffusers pipelines call it (pad to 77, truncate), and, apart
from the padding, the original CLIP tokenizer's: OpenAI's BPE written out below on open_clip's
``bpe_simple_vocab_16e6.txt.gz`` (start token, at most 75 BPE tokens, end token). The pad id is
the folder's: ``<|endoftext|>`` (49407) for SD1.5 and SDXL's first tokenizer, ``!`` (0) for SD2.1
(whose tokenizer_config and special_tokens_map disagree; the map wins) and SDXL's second. The CRLF
``merges.txt`` committed to an SD2.1 mirror gives the same ids.
"""

from __future__ import annotations

import gzip
import html
import shutil
from functools import lru_cache
from pathlib import Path

import pytest
import regex
import torch
from sd_folders import SD15, SD21, SDXL, random_weights_folder
from transformers import CLIPTokenizer

from lightning_pref.data.prompt_files import read_prompt_file
from lightning_pref.models import DiffusionPolicy

# (folder, tokenizer subfolder) -> pad id
PAD = {(SD15, "tokenizer"): 49407, (SD21, "tokenizer"): 0, (SDXL, "tokenizer"): 49407}
PAD[SDXL, "tokenizer_2"] = 0
SOT, EOT = 49406, 49407
# prompts of PartiPrompts + DrawBench holding a "!": under a "!"-padded tokenizer (SD2.1, SDXL's
# second) transformers gives each "!" the pad id 0 (an added token), OpenAI's BPE "!</w>" = 256
N_EXCLAIM = 5


@pytest.fixture(scope="module")
def prompts(realfiles: Path) -> list[str]:
    parti = read_prompt_file(realfiles / "prompts" / "PartiPrompts.tsv")
    drawbench = read_prompt_file(realfiles / "prompts" / "DrawBench.csv")
    assert len(parti) == 1632 and len(drawbench) == 200
    return parti + drawbench


@pytest.fixture(scope="module")
def policies(realfiles: Path, tmp_path_factory) -> dict[str, DiffusionPolicy]:
    root = tmp_path_factory.mktemp("tok")
    made = {}
    for name in (SD15, SD21, SDXL):
        folder = random_weights_folder(realfiles / "sd_configs" / name, root / name)
        made[name] = DiffusionPolicy(pretrained=str(folder))
        made[name].build()
    return made


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable character table, in its order (printable bytes first:
    the vocabulary's first 256 ids follow it)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    table = {b: chr(b) for b in keep}
    for extra, b in enumerate(b for b in range(256) if b not in table):
        table[b] = chr(256 + extra)
    return table


class OpenAIBPE:
    """OpenAI CLIP's ``simple_tokenizer`` on the open_clip vocabulary file (no ftfy here)."""

    PATTERN = regex.compile(
        r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"
        r"[^\s\p{L}\p{N}]+",
        regex.IGNORECASE,
    )

    def __init__(self, vocab_file: Path) -> None:
        lines = gzip.open(vocab_file).read().decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
        self.byte = _bytes_to_unicode()
        vocab = list(self.byte.values())
        vocab += [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = {v: i for i, v in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.bpe = lru_cache(maxsize=None)(self._bpe)

    def _bpe(self, token: str) -> str:
        word = (*token[:-1], token[-1] + "</w>")
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        return " ".join(word)

    def encode(self, text: str, added: dict[str, int] | None = None) -> list[int]:
        """BPE ids of ``text``; ``added`` tokens are split out first, as transformers does for
        a tokenizer's added (special) tokens."""
        for token, token_id in (added or {}).items():
            parts = [self.encode(part) for part in text.split(token)]
            return [i for part in parts for i in [*part, token_id]][:-1]
        text = " ".join(html.unescape(html.unescape(text)).strip().split()).lower()
        ids = []
        for token in self.PATTERN.findall(text):
            token = "".join(self.byte[b] for b in token.encode("utf-8"))
            ids += [self.encoder[t] for t in self.bpe(token).split(" ")]
        return ids


@pytest.mark.parametrize(("name", "sub"), list(PAD))
def test_our_ids_equal_transformers_and_openai_bpe(realfiles, policies, prompts, name, sub):
    policy = policies[name]
    tokenizer = policy.tokenizer if sub == "tokenizer" else policy.tokenizer_2
    ours = policy._token_ids(tokenizer, prompts)  # [N, 77]
    folder = realfiles / "sd_configs" / name / sub
    theirs = CLIPTokenizer.from_pretrained(folder)(
        prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    assert torch.equal(ours, theirs)
    bpe = OpenAIBPE(realfiles / "clip" / "bpe_simple_vocab_16e6.txt.gz")
    pad = PAD[name, sub]
    added = {"!": 0} if pad == 0 else None  # the pad token "!" is an added token
    for row, prompt in zip(ours.tolist(), prompts, strict=True):
        expected = [SOT, *bpe.encode(prompt, added)[:75], EOT]
        assert row == expected + [pad] * (77 - len(expected)), prompt
    assert sum(len(bpe.encode(p)) > 75 for p in prompts) > 0  # some prompts are truncated
    changed = sum(bpe.encode(p) != bpe.encode(p, {"!": 0}) for p in prompts)
    assert changed == N_EXCLAIM  # prompts whose "!" is 0 where OpenAI's tokenizer has 256


def test_crlf_merges_give_the_same_ids(realfiles, prompts, tmp_path):
    """The ``merges.txt`` committed with CRLF line endings tokenizes as the LF one."""
    folder = realfiles / "sd_configs" / SD21 / "tokenizer"
    crlf = shutil.copytree(folder, tmp_path / "tokenizer")
    shutil.copy(
        realfiles / "edge_cases" / "sd21_tokenizer_merges_CRLF_as_committed.txt",
        crlf / "merges.txt",
    )
    assert b"\r\n" in (crlf / "merges.txt").read_bytes()
    call = {"padding": "max_length", "max_length": 77, "truncation": True}
    assert CLIPTokenizer.from_pretrained(crlf)(prompts, **call).input_ids == (
        CLIPTokenizer.from_pretrained(folder)(prompts, **call).input_ids
    )
