"""Commands over a pack's history: rollback, rebuild, repair (each adds a version), gc (frees space)."""

from __future__ import annotations

from typing import Annotated

import typer

from ..store import DEFAULT_GRACE_SECONDS
from ._options import (
    DEFAULT_BASE_MODEL,
    BaseModel,
    JsonOpt,
    MessageOpt,
    NoWaitOpt,
    PackFolderArg,
    takes_base_model,
)
from ._output import edit_progress, handles_errors, model_loader, repair_progress, report, say, writer


@handles_errors
@takes_base_model
def rollback(
    pack: PackFolderArg,
    to: Annotated[int, typer.Option("--to", min=1, help="Version whose state becomes current again.")],
    message: MessageOpt = None,
    base: BaseModel = DEFAULT_BASE_MODEL,
    no_wait: NoWaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Make version N's state current again (bit-identical weights and masks) as a new version.

    History is never rewritten: the versions after N stay in the log.

    [dim]Example: memoir rollback my-pack --to 3[/]
    """
    from ..history import rollback as roll_back

    result = roll_back(pack, to, model_loader(base), writer(message, no_wait))
    report(result, as_json, f"[green]rolled back[/] {pack} to version {to}'s state, as version {result.version}")


@handles_errors
@takes_base_model
def rebuild(
    pack: PackFolderArg,
    message: MessageOpt = None,
    base: BaseModel = DEFAULT_BASE_MODEL,
    no_wait: NoWaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Replay the active facts from scratch into a compact memory, as a new version.

    Reverted and replaced edits are dropped. On the same device with the same seed the result is
    bit-identical to editing the active facts into a fresh pack.

    [dim]Example: memoir rebuild my-pack[/]
    """
    from ..history import rebuild as rebuild_pack

    with edit_progress(enabled=not as_json) as hooks:
        result = rebuild_pack(
            pack,
            model_loader(base),
            writer(message, no_wait),
            on_start=hooks["on_start"],
            on_fact=hooks["on_fact"],
        )
    report(result, as_json, f"[green]rebuilt[/] {pack} as version {result.version}")


@handles_errors
@takes_base_model
def repair(
    pack: PackFolderArg,
    rounds: Annotated[
        int,
        typer.Option(
            min=1, help="Check and refit again up to this many times: a refit can move another edit's answer."
        ),
    ] = 1,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only check: list the forgotten edits, write nothing.")
    ] = False,
    message: MessageOpt = None,
    base: BaseModel = DEFAULT_BASE_MODEL,
    no_wait: NoWaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Find the active edits whose own question no longer gets their answer, and fit them again, as a new version.

    Each edit's question is asked the ways the pack was trained (bare; in a chat pack also in
    chat), routed as at inference; it holds when greedy decoding gives its answer. Later edits that
    share its memory columns can move it. A question routed to another edit is listed, not refitted:
    revert one of the two. Nothing forgotten, nothing written.

    [dim]Example: memoir repair my-pack --rounds 2[/]
    """
    from ..repair import repair_pack

    with repair_progress(enabled=not as_json) as hooks:
        result = repair_pack(pack, model_loader(base), writer(message, no_wait), rounds, dry_run, **hooks)
    if as_json:
        report(result, True, "")
        return
    for edit in result.forgotten:
        where = "" if edit.reached else f", asked, reaches {edit.routed_to or 'no edit'}: not refitted"
        say(f"[yellow]forgotten[/] {edit.edit_id} ({', '.join(edit.forms)}){where}")
    if result.dry_run:
        say(f"{len(result.forgotten)} of {result.checked} active edits forgotten (dry run: nothing written)")
    elif result.version is None:
        say(f"[green]nothing to repair[/] in {pack}: {result.checked} active edits checked")
    else:
        say(
            f"[green]repaired[/] {pack} as version {result.version}: {len(result.refits)} refit(s) in "
            f"{result.rounds} round(s); {len(result.still_forgotten)} of {result.checked} still forgotten"
        )


@handles_errors
def gc(
    pack: PackFolderArg,
    grace: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Keep unneeded files younger than this many seconds, for "
            "readers that opened an older version a moment ago.",
        ),
    ] = DEFAULT_GRACE_SECONDS,
    keep: Annotated[
        list[int] | None,
        typer.Option(
            "--keep", min=1, help="Also keep this version's files in full (repeatable), e.g. each pushed one."
        ),
    ] = None,
    no_wait: NoWaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete the files no kept version needs (the current one, every --snapshot-every-th, and --keep).

    Commits collect what is older than the grace period on their own; run this to free space at once
    (--grace 0) or to keep more versions readable without replay.

    [dim]Example: memoir gc my-pack --grace 0 --keep 12[/]
    """
    from ..store import collect_garbage, writing

    with writing(pack, writer(no_wait=no_wait)) as path:
        result = collect_garbage(path, grace, keep or [])
    report(
        result,
        as_json,
        f"[green]gc[/] {pack}: removed {result.removed_objects} object(s) ({result.removed_bytes:,} bytes) and "
        f"{result.removed_records} stray record(s); versions kept in full: "
        f"{', '.join(map(str, result.kept_versions))}",
    )


COMMANDS = {"rollback": rollback, "rebuild": rebuild, "repair": repair, "gc": gc}
