"""A benchmark's `--variant name=field:value,...`: a named set of training settings to measure."""

from __future__ import annotations

import dataclasses

from memoir_cli.config import TrainingConfig


def parse_variant(text: str) -> tuple[str, dict]:
    """`name=field:value,field:value` (values typed as the TrainingConfig field's default)."""
    name, _, body = text.partition("=")
    fields = {f.name: f for f in dataclasses.fields(TrainingConfig)}
    overrides: dict = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition(":")
        if key not in fields:
            raise SystemExit(f"variant {name!r}: no training setting {key!r}")
        default = fields[key].default
        try:
            if isinstance(default, bool):
                overrides[key] = value.lower() in ("1", "true", "on", "yes")
            elif isinstance(default, int):
                overrides[key] = int(float(value))
            elif isinstance(default, float):
                overrides[key] = float(value)
            else:
                overrides[key] = value
        except ValueError:
            raise SystemExit(f"variant {name!r}: {key} takes a number, not {value!r}") from None
    return name, overrides
