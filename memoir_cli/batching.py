"""Tokenising for the model: left-padded batches, and where a target's tokens start.

Training and scoring must agree on which tokens are "the target", so both use `prompt_target_ids`.
"""

from __future__ import annotations

import torch


def prompt_target_ids(tokenizer, prompt: str, target: str) -> tuple[list[int], int]:
    """Token ids of `prompt + " " + target` and how many of them belong to the prompt.

    The prompt's share is the longest run of leading tokens the text has in common with the prompt
    tokenised alone: when a tokenizer merges the joining space (or more) into the target's first
    token, that token counts as the target's.
    """
    prompt_ids = tokenizer(prompt)["input_ids"]
    full_ids = tokenizer(f"{prompt} {target}")["input_ids"]
    n = 0
    while n < min(len(prompt_ids), len(full_ids)) and prompt_ids[n] == full_ids[n]:
        n += 1
    return full_ids, n


def encode_left_padded(tokenizer, texts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
    """Tokenise with left padding and position ids that start at 0 on each row's first real token."""
    rows = [tokenizer(text)["input_ids"] for text in texts]
    return pad_left(rows, tokenizer.pad_token_id, device)


def pad_left(rows: list[list[int]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, width - len(row) :] = 1
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp_min(0)
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
        "position_ids": position_ids.to(device),
    }
