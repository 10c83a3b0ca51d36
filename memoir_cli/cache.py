"""Files in a pack's cache/ folder: what one edit run computed and the next may reuse.

Why a file format of its own: a cache is no part of any version, so it is written without the
store's commit, and a reader must survive any file it finds there (another run's half-written
file, a damaged one, one of an older layout). Writes are atomic, and a file that cannot be read
is as good as none: the caller computes again.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write `tensors` and `metadata` to `path` atomically (a reader sees the old file or the new)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(partial), metadata=metadata)
    os.replace(partial, path)


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    """The tensors and metadata `save_tensors` wrote to `path`; None if it is missing or unreadable."""
    try:
        with safe_open(str(path), framework="pt") as file:
            return {name: file.get_tensor(name) for name in file.keys()}, dict(file.metadata() or {})
    except (OSError, SafetensorError):
        return None
