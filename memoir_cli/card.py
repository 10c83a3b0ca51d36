"""A pack's model card (README.md): the Hub's YAML metadata, then what the pack is and how to use it.

The metadata is huggingface_hub's `ModelCardData`, so the Hub indexes `base_model`, `library_name`,
`license` and `tags` as it does for any adapter. The settings table reads config.SETTINGS, the same
list `memoir show` and `memoir diff` use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import SETTINGS, setting_value
from .refs import is_repo_id

if TYPE_CHECKING:
    from .pack import Pack

TAGS = ["memoir", "model-editing"]


def model_card(pack: Pack, license: str | None = None, scores: dict[str, Any] | None = None) -> str:
    """The card of `pack`'s current version, with its latest `memoir eval` scores when known."""
    from huggingface_hub import ModelCard, ModelCardData

    m = pack.manifest
    base = m.base_model.id
    hub_id = base.split("@")[0]  # the built-in model is "<repo>@<gguf package>:<quant>"
    data = ModelCardData(
        base_model=hub_id if is_repo_id(hub_id) else None,
        library_name="memoir",
        license=license,
        tags=TAGS,
    )
    n, active = len(pack.memory.bank), int(pack.memory.bank.active.sum())
    examples = "\n".join(f"- {f.prompt!r} -> {f.target!r}" for f in pack.facts[:5]) or "- (no facts yet)"
    settings = "\n".join(f"| {label} | {setting_value(m, label)} |" for label in SETTINGS)
    model_arg = base if "@" not in base else "default"
    sections = [
        "# memoir edit pack\n",
        f"A MEMOIR residual memory (lifelong model editing with a sparse, routed memory) for `{base}`, "
        f"version {m.version or 1}: {n} edited fact(s), {active} active, k = {m.tophash.k} of "
        f"{m.layer.d_ff} features.\n",
        f"| setting | value |\n|---|---|\n{settings}\n",
        f"Some facts:\n{examples}\n",
        "Apply it (the base model is downloaded as usual; the pack is checked against it):\n",
        f'```bash\npip install memoir-cli\nmemoir apply PACK --model {model_arg} --prompt "..."\n```\n',
        "where PACK is this repo's id (`user/pack`, or `user/pack@v3` for version 3) or a local folder.\n",
    ]
    if scores:
        s = {key: "-" if value is None else f"{value:.3f}" for key, value in scores["scores"].items()}
        sections.append(
            f"Latest `memoir eval` of this version ({scores['records']} records"
            f"{', ' + scores['data'] if scores.get('data') else ''}):\n\n"
            "| Reliability | Generalisation | Locality | Average |\n|---|---|---|---|\n"
            f"| {s['rel']} | {s['gen']} | {s['loc']} | {s['avg']} |\n"
        )
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(sections)))
