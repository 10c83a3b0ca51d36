"""Option and argument types shared by the commands, each declared once.

Help texts of pack settings come from config.py, where the settings themselves are defined.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer

from ..chat import ChatMode
from ..config import LayerConfig, Manifest, RoutingConfig, TopHashConfig, TrainingConfig, help_for
from ..conflicts import OnConflict
from ..editor import MixedPrecision, Optimizer
from ..facts import FactsFormat
from ..models import Dtype
from ..refs import local_ref
from ..release import AfterTarget
from ..tophash import Aggregation
from ..workflows import AUTO, EditOptions, MemoryDtype


def _folder_not_version(value: Path | str) -> Path | str:
    """Commands that write a pack take its folder: a version `PACK@N` is read-only."""
    ref = local_ref(value)
    if ref.version is not None:
        raise typer.BadParameter(
            f"{value} names version {ref.version}, and versions never change: give the pack "
            f"folder {ref.path} (memoir rollback {ref.path} --to {ref.version} restores it)"
        )
    return value


ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Hub repo id, local folder or .gguf file. Default: the pack's base model, "
        "else the built-in SmolLM2-135M-Instruct.",
    ),
]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")]
DtypeOpt = Annotated[Dtype, typer.Option(help="Model dtype (auto: the checkpoint's own on a GPU, float32 on the CPU).")]
DeviceMapOpt = Annotated[
    str | None,
    typer.Option(
        help="Place the model with accelerate's device map instead of --device (auto: across the GPUs, and the "
        "CPU, for a model larger than one GPU); the memory lives on the edited layer's device."
    ),
]


@dataclass(frozen=True)
class BaseModel:
    """--model, --device, --dtype and --device-map: which base model a command loads, on what, in
    which precision."""

    model: str | None  # None: the pack's base model, else the built-in one
    device: str
    dtype: str
    device_map: str | None = None


DEFAULT_BASE_MODEL = BaseModel(None, "cpu", Dtype.auto.value)
"""What a command gets without the options (its `base` parameter's default)."""


def _keyword(name: str, default: Any, annotation: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def option_group(
    name: str, options: list[inspect.Parameter], build: Callable[..., Any]
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator that gives a command `options`, passed to it as one parameter `name`, the value
    `build(**options' values)`.

    Typer reads a command's options from its signature (and, in older releases, its annotations),
    so the wrapper's signature lists the group's options where the command has `name`: a group of
    options is declared once instead of in every command that takes it.
    """
    names = [option.name for option in options]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command, eval_str=True)
        parameters: list[inspect.Parameter] = []
        for parameter in signature.parameters.values():
            if parameter.name != name:
                parameters.append(parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))
            else:
                parameters.extend(options)

        @wraps(command)
        def run(*args: Any, **kwargs: Any) -> Any:
            group = build(**{key: kwargs.pop(key) for key in names})
            return command(*args, **{name: group}, **kwargs)

        run.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": signature.return_annotation}
        return run

    return decorate


takes_base_model = option_group(
    "base",
    [
        _keyword("model", DEFAULT_BASE_MODEL.model, ModelOpt),
        _keyword("device", DEFAULT_BASE_MODEL.device, DeviceOpt),
        _keyword("dtype", Dtype(DEFAULT_BASE_MODEL.dtype), DtypeOpt),
        _keyword("device_map", DEFAULT_BASE_MODEL.device_map, DeviceMapOpt),
    ],
    lambda model, device, dtype, device_map: BaseModel(model, device, dtype.value, device_map),
)
"""--model, --device, --dtype and --device-map, passed to the command as `base: BaseModel`."""


JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
NoWaitOpt = Annotated[
    bool, typer.Option("--no-wait", help="Fail at once (exit 5) if another process is writing the pack.")
]
MessageOpt = Annotated[str | None, typer.Option("--message", help="Why: recorded with the new version (memoir log).")]
TokenOpt = Annotated[
    str | None, typer.Option("--token", help="Hugging Face token (default: HF_TOKEN or the saved login).")
]
PacksArg = Annotated[
    list[str],
    typer.Argument(
        help="Packs: PATH, PATH@N (version N), or a Hub repo user/pack\\[@vN]; stacked, the best-matching edit wins."
    ),
]
PackArg = Annotated[str, typer.Argument(help="Pack: PATH, PATH@N (version N), or a Hub repo user/pack\\[@vN].")]
PackFolderArg = Annotated[Path, typer.Argument(help="Pack folder.", callback=_folder_not_version)]
FormatOpt = Annotated[FactsFormat, typer.Option("--format", help="Facts format: jsonl, zsre, or auto (.json is ZsRE).")]
SkipInvalidOpt = Annotated[
    bool, typer.Option(help="Leave out bad records (each reported) instead of refusing the file.")
]
LimitOpt = Annotated[int | None, typer.Option(min=1, help="Only the first N records.")]

# `memoir edit`'s settings: None means the pack's value, else the default for the model (config.py).
LayerOpt = Annotated[int | None, typer.Option(min=0, help=help_for(LayerConfig, "index"))]
TopKOpt = Annotated[int | None, typer.Option(min=1, help=help_for(TopHashConfig, "k"))]
SeedOpt = Annotated[int | None, typer.Option(help=help_for(TopHashConfig, "seed"))]


def _threshold(value: str | None) -> float | str | None:
    """`auto` or a number in [0, 1]."""
    if value is None or value == AUTO:
        return value
    try:
        number = float(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is neither 'auto' nor a number") from None
    if not 0.0 <= number <= 1.0:
        raise typer.BadParameter(f"{number} is not in the range 0 to 1")
    return number


ThresholdOpt = Annotated[
    str | None,
    typer.Option(
        callback=_threshold,
        metavar="auto|TAU",
        help=f"{help_for(RoutingConfig, 'threshold')} A number fixes it; auto: {help_for(RoutingConfig, 'auto')}",
    ),
]
StepsOpt = Annotated[int | None, typer.Option(min=1, help=help_for(TrainingConfig, "steps"))]


def _positive(value: float | None) -> float | None:
    if value is not None and value <= 0:
        raise typer.BadParameter(f"{value} is not positive")
    return value


OptimizerOpt = Annotated[Optimizer | None, typer.Option(help=help_for(TrainingConfig, "optimizer"))]
LrOpt = Annotated[float | None, typer.Option(callback=_positive, help=help_for(TrainingConfig, "lr"))]
PrefixedOpt = Annotated[int | None, typer.Option(min=0, help=help_for(TrainingConfig, "prefixed"))]
RehearseOpt = Annotated[int | None, typer.Option(min=0, help=help_for(TrainingConfig, "rehearse"))]
RehearseOverlapOpt = Annotated[
    float | None, typer.Option(min=0.0, max=1.0, help=help_for(TrainingConfig, "rehearse_overlap"))
]
RehearseChatOpt = Annotated[
    bool | None,
    typer.Option("--rehearse-chat/--no-rehearse-chat", help=help_for(TrainingConfig, "rehearse_chat")),
]
ProtectOpt = Annotated[float | None, typer.Option(min=0.0, help=help_for(TrainingConfig, "protect"))]
MixedPrecisionOpt = Annotated[
    MixedPrecision | None,
    typer.Option(
        help=f"{help_for(TrainingConfig, 'mixed_precision')} auto: bf16 for a float32 model on such hardware."
    ),
]
EditChatOpt = Annotated[
    ChatMode,
    typer.Option(
        "--chat",
        help="Train the chat form too (auto: a new pack does when the tokenizer has a chat template; "
        "an existing pack keeps its choice).",
    ),
]
ExtraKeysOpt = Annotated[
    bool | None,
    typer.Option(
        "--extra-keys/--no-extra-keys", help=f"{help_for(RoutingConfig, 'extra_keys')} Fixed when the pack is made."
    ),
]
MemoryDtypeOpt = Annotated[
    MemoryDtype | None,
    typer.Option(help=f"{help_for(Manifest, 'memory_dtype')} Fixed when the pack is made (default float32)."),
]
AggregationOpt = Annotated[
    Aggregation | None,
    typer.Option(help=f"{help_for(TopHashConfig, 'aggregation')} Fixed when the pack is made."),
]
AskChatOpt = Annotated[
    ChatMode,
    typer.Option("--chat", help="Ask through the chat template (auto: when a pack was trained in chat form)."),
]
AfterTargetOpt = Annotated[
    AfterTarget,
    typer.Option(
        help="Once an answer has generated its edit's target: release (the base model goes on), keep (the "
        "paper's rule: the edit at every position), auto (release only packs trained without an end after the answer)."
    ),
]
SystemOpt = Annotated[str | None, typer.Option("--system", help="System prompt of each chat question.")]
CheckpointEveryOpt = Annotated[
    int, typer.Option(min=1, help="Commit a version every N facts, so a killed run loses at most N.")
]
SnapshotEveryOpt = Annotated[
    int | None,
    typer.Option(min=1, help="Keep every N-th version's files in full (others are replayed on demand; default 10)."),
]


OnConflictOpt = Annotated[
    OnConflict,
    typer.Option(
        help="A new fact that the router cannot tell from an active edit (or an earlier fact) with another "
        "answer: keep-both edits both and warns, replace deactivates the older one, fail writes nothing."
    ),
]

BatchSizeOpt = Annotated[
    int,
    typer.Option(
        min=1,
        help="Fit up to N facts in one optimisation, each under its own mask: a GPU's way through a large "
        "refresh. Facts the router cannot tell apart still go one after the other. 1: one fact at a time.",
    ),
]

DEFAULT_EDIT_SETTINGS = EditOptions()
"""What `memoir edit` gets without the options: each setting the pack's, else the model's default."""

takes_edit_settings = option_group(
    "settings",
    [
        _keyword("layer", None, LayerOpt),
        _keyword("top_k", None, TopKOpt),
        _keyword("threshold", None, ThresholdOpt),
        _keyword("steps", None, StepsOpt),
        _keyword("optimizer", None, OptimizerOpt),
        _keyword("lr", None, LrOpt),
        _keyword("prefixed", None, PrefixedOpt),
        _keyword("rehearse", None, RehearseOpt),
        _keyword("rehearse_overlap", None, RehearseOverlapOpt),
        _keyword("rehearse_chat", None, RehearseChatOpt),
        _keyword("protect", None, ProtectOpt),
        _keyword("mixed_precision", None, MixedPrecisionOpt),
        _keyword("chat", ChatMode.auto, EditChatOpt),
        _keyword("extra_keys", None, ExtraKeysOpt),
        _keyword("aggregation", None, AggregationOpt),
        _keyword("memory_dtype", None, MemoryDtypeOpt),
        _keyword("seed", None, SeedOpt),
        _keyword("on_conflict", OnConflict.keep_both, OnConflictOpt),
        _keyword("batch_size", 1, BatchSizeOpt),
    ],
    EditOptions,
)
"""`memoir edit`'s settings, passed to it as `settings: EditOptions` (the device and dtype are --device
and --dtype: see takes_base_model)."""
