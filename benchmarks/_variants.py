"""A benchmark's `--variant name=field:value,...`: a named set of training settings to measure."""

from __future__ import annotations

import typing

from memoir_cli.config import TrainingConfig


def parse_variant(text: str) -> tuple[str, dict]:
    """`name=field:value,field:value` (values typed as the TrainingConfig field is: `int | None`
    takes an int)."""
    name, _, body = text.partition("=")
    types = {key: set(typing.get_args(hint)) or {hint} for key, hint in typing.get_type_hints(TrainingConfig).items()}
    overrides: dict = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition(":")
        if key not in types:
            raise SystemExit(f"variant {name!r}: no training setting {key!r}")
        try:
            if bool in types[key]:
                overrides[key] = value.lower() in ("1", "true", "on", "yes")
            elif int in types[key]:
                overrides[key] = int(float(value))
            elif float in types[key]:
                overrides[key] = float(value)
            else:
                overrides[key] = value
        except ValueError:
            raise SystemExit(f"variant {name!r}: {key} takes a number, not {value!r}") from None
    return name, overrides
