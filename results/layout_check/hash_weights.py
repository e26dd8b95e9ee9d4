"""Print a short SHA-256 of every checkpoint's tensors under a folder (names and float32 bytes)."""

import hashlib
import pathlib
import sys

import torch

for ckpt in sorted(pathlib.Path(sys.argv[1]).rglob("*.ckpt")):
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.split("policy.", 1)[-1].encode())
        digest.update(state[key].float().contiguous().numpy().tobytes())
    print(ckpt.relative_to(sys.argv[1]), len(state), digest.hexdigest()[:16])
