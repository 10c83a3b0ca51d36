"""TopHash: a prompt's feature at the edit layer -> de-centred top-k -> permuted 0/1 mask.

The feature is the edit layer's input (the MLP activation, width d_ff) averaged over the prompt's
real tokens. Subtracting the background mean keeps the same few large features from winning for
every prompt; the fixed permutation spreads the memory columns different edits touch.
"""

from __future__ import annotations

from enum import Enum
from importlib import resources

import torch
from torch import nn

from .batching import encode_left_padded
from .chat import chat_inputs, conversation
from .models import input_device, input_of


def background_prompts() -> list[str]:
    """The built-in generic prompts whose mean feature de-centres every prompt feature."""
    text = resources.files("memoir_cli").joinpath("data/background_prompts.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def make_permutation(d_ff: int, seed: int) -> torch.Tensor:
    """The fixed random permutation of range(d_ff) drawn from `seed` (CPU generator: portable)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(d_ff, generator=generator)


class Aggregation(str, Enum):
    """How a prompt's token features are pooled (TopHashConfig.aggregation; see pool())."""

    mean = "mean"
    mean_after_first = "mean_after_first"


def masked_mean(x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of x [batch, seq, d] over the positions where attention_mask [batch, seq] is 1."""
    if attention_mask is None:
        return x.float().mean(dim=1)
    weights = attention_mask.to(device=x.device, dtype=torch.float32).unsqueeze(-1)
    return (x.float() * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def pool(x: torch.Tensor, attention_mask: torch.Tensor | None, aggregation: str) -> torch.Tensor:
    """A prompt's feature [batch, d] from its token features x [batch, seq, d]: the mean over the
    positions attention_mask marks (mean, the paper's), or over all of them but the first
    (mean_after_first; a one-token prompt keeps its token).

    Why leave the first out: the first token of a prompt starts the sequence, or follows the chat
    template's role header, and its activations are large and much the same whatever the question.
    They pull a question's bare and chat features apart, and every question towards every other;
    without them its two forms' masks overlap more, and so do a question and its rephrasings
    (docs/BENCHMARKS.md, "Routing variants").
    """
    if aggregation == Aggregation.mean:
        return masked_mean(x, attention_mask)
    marked = torch.ones(x.shape[:2], device=x.device) if attention_mask is None else attention_mask.to(x.device)
    marked = marked.to(torch.float32)
    after_first = marked * (marked.cumsum(dim=1) > 1)  # [batch, seq]
    return masked_mean(x, torch.where(after_first.sum(dim=1, keepdim=True) > 0, after_first, marked))


def tophash(features: torch.Tensor, background: torch.Tensor, k: int, permutation: torch.Tensor) -> torch.Tensor:
    """Masks [batch, d_ff] (bool) for prompt features [batch, d_ff]."""
    centred = (features.float() - background.to(features.device).float()).abs()
    top = centred.topk(k, dim=-1).indices
    masks = torch.zeros_like(centred, dtype=torch.bool)
    masks.scatter_(1, permutation.to(features.device)[top], True)
    return masks


@torch.no_grad()
def prompt_features(
    model: nn.Module,
    tokenizer,
    layer_module: nn.Module,
    prompts: list[str],
    batch_size: int = 16,
    chat: bool = False,
    system: str | None = None,
    aggregation: str = Aggregation.mean,
) -> torch.Tensor:
    """The edit layer's input pooled over each prompt (`aggregation`: see pool()), [len(prompts),
    d_ff] in float32.

    Prompts run one batch at a time with left padding; the forward pass stops at the edit layer,
    since nothing above it matters here. With `chat`, each prompt is a question asked through the
    chat template (after the `system` prompt, if any), and pooling reads the question's tokens only,
    as routing reads a chat question (chat.py).
    """
    captured: list[torch.Tensor] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        if chat:
            batch = chat_inputs(tokenizer, [conversation(p, system) for p in chunk], input_device(model))
            mask = batch.pop("routing_mask")
        else:
            batch = encode_left_padded(tokenizer, chunk, input_device(model))
            mask = batch["attention_mask"]
        captured.append(pool(input_of(model, layer_module, batch), mask, aggregation).cpu())
    return torch.cat(captured)
