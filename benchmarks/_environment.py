"""What a benchmark's JSON records about where it ran: the machine, the threads and the libraries."""

from __future__ import annotations

import datetime as dt
import platform
from importlib import metadata

import torch

from memoir_cli._version import __version__


def environment() -> dict:
    return {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "versions": {
            name: metadata.version(name)
            for name in ("torch", "transformers", "huggingface-hub", "numpy", "safetensors")
        }
        | {"memoir-cli": __version__},  # from the source, so that a checkout run without installing records it
    }
