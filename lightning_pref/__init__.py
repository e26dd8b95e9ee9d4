"""lightning_pref: aligning text-to-image diffusion models with human preferences, on Lightning."""

import os as _os

import torch as _torch

# Without a GPU, `import deepspeed` (pulled in by Lightning's DeepSpeed support) prints
# "Setting accelerator to CPU..." on stdout, which corrupts `--print_config` output. Naming the
# accelerator up front keeps it quiet; a user's own DS_ACCELERATOR wins.
if "DS_ACCELERATOR" not in _os.environ and not _torch.cuda.is_available():
    _os.environ["DS_ACCELERATOR"] = "cpu"

__version__ = "0.1.0"
__all__ = ["__version__"]
