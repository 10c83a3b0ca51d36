"""Commands that change what a pack knows: validate, edit, revert."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..config import DEFAULT_CHECKPOINT_EVERY
from ..facts import FactsFormat
from ..workflows import EditOptions
from ._options import (
    DEFAULT_BASE_MODEL,
    DEFAULT_EDIT_SETTINGS,
    BaseModel,
    CheckpointEveryOpt,
    FormatOpt,
    JsonOpt,
    LimitOpt,
    MessageOpt,
    NoWaitOpt,
    PackFolderArg,
    SkipInvalidOpt,
    SnapshotEveryOpt,
    _folder_not_version,
    takes_base_model,
    takes_edit_settings,
)
from ._output import edit_progress, handles_errors, out, print_json, report, warn, warn_skipped, writer


@handles_errors
def validate(
    facts: Annotated[Path, typer.Argument(help="Facts file to check (JSONL, or ZsRE JSON).")],
    fmt: FormatOpt = FactsFormat.auto,
    as_json: JsonOpt = False,
) -> None:
    """Check a facts file against the schema without loading a model.

    [dim]Example: memoir validate examples/facts.jsonl[/]
    """
    from ..facts import read_facts

    records = read_facts(facts, fmt.value)
    if as_json:
        print_json({"file": str(facts), "facts": len(records), "valid": True})
    else:
        out.print(f"[green]ok[/] {facts}: {len(records)} fact(s)")


@handles_errors
@takes_base_model
@takes_edit_settings
def edit(
    facts: Annotated[Path, typer.Argument(help="Facts to add: JSONL (see schemas/fact.schema.json) or ZsRE JSON.")],
    pack: Annotated[
        Path,
        typer.Option(
            "--pack", "-p", help="Pack folder to create, or to add a version to.", callback=_folder_not_version
        ),
    ],
    base: BaseModel = DEFAULT_BASE_MODEL,
    fmt: FormatOpt = FactsFormat.auto,
    skip_invalid: SkipInvalidOpt = False,
    limit: LimitOpt = None,
    settings: EditOptions = DEFAULT_EDIT_SETTINGS,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be added, replaced and skipped; train nothing.")
    ] = False,
    message: MessageOpt = None,
    checkpoint_every: CheckpointEveryOpt = DEFAULT_CHECKPOINT_EVERY,
    snapshot_every: SnapshotEveryOpt = None,
    no_wait: NoWaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Edit FACTS into the pack at --pack (created if missing) as a new version, one fact at a time.

    A fact whose prompt already has an active edit with the same target is skipped (rerunning a
    nightly job is a no-op); with a different target it replaces that edit. A killed run is
    finished by running the same command again.

    [dim]Example: memoir edit examples/facts.jsonl --pack my-pack[/]
    """
    from ..facts import read_facts
    from ..workflows import edit_pack

    records = read_facts(facts, fmt.value, on_skip=warn_skipped if skip_invalid else None, limit=limit)
    options = dataclasses.replace(settings, device=base.device, dtype=base.dtype, device_map=base.device_map)
    with edit_progress(enabled=not (as_json or dry_run)) as hooks:
        summary = edit_pack(
            records,
            pack,
            base.model,
            options,
            dry_run=dry_run,
            write=writer(message, no_wait),
            checkpoint_every=checkpoint_every,
            snapshot_every=snapshot_every,
            **hooks,
        )
    report = summary.to_json()
    for conflict in summary.plan.conflicts:
        warn("conflict", conflict.describe())
    overlap = summary.calibration.warning() if summary.calibration is not None else None
    if overlap:
        warn("warning", overlap)
    if as_json:
        print_json(report)
        return
    title = f"memoir edit -> {pack}" + (" (dry run: nothing was trained or written)" if dry_run else "")
    table = Table(title=title, show_header=False)
    table.add_row("pack", f"{pack} ({'new' if summary.created else 'existing'})")
    table.add_row("to add" if dry_run else "edited", str(report["planned"] if dry_run else report["edited"]))
    table.add_row("replacing an active edit", str(report["replaced"]))
    table.add_row("skipped (already in pack)", str(report["skipped"]))
    if report["conflicts"]:
        action = "replaced" if settings.on_conflict == "replace" else "kept both"
        table.add_row("conflicts (see above)", f"{len(report['conflicts'])} ({action})")
    if summary.calibration is not None:
        c = summary.calibration
        margin = f"margin {c.margin:+.2f}" if c.margin is not None else "no edits yet"
        table.add_row("routing threshold (auto)", f"{c.threshold:.4f} ({margin})")
    if report["superseded_ids"]:
        table.add_row("superseded by a later line", str(len(report["superseded_ids"])))
    if not dry_run:
        table.add_row("converged (stop rule met)", f"{report['converged']} of {report['edited']}")
    if report["seconds_per_edit"] is not None:
        table.add_row("seconds per fact", f"{report['seconds_per_edit']:.2f}")
    table.add_row("total seconds", f"{report['seconds']:.1f}")
    if not dry_run:
        table.add_row("new versions", ", ".join(map(str, summary.versions)) or "none (nothing changed)")
    out.print(table)


@handles_errors
def revert(
    pack: PackFolderArg,
    edit_ids: Annotated[list[str] | None, typer.Argument(help="Ids of the edits to deactivate.")] = None,
    prompt: Annotated[
        list[str] | None,
        typer.Option("--prompt", help="Deactivate the active edit of this exact prompt (repeatable)."),
    ] = None,
    message: MessageOpt = None,
    no_wait: NoWaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Deactivate single edits, as a new version: routing never selects them again; every other edit is untouched.

    [dim]Example: memoir revert my-pack watts-humphrey-university[/]
    """
    from ..workflows import revert_edits

    result = revert_edits(pack, edit_ids or [], prompt or [], writer(message, no_wait))
    report(
        result,
        as_json,
        f"[green]reverted[/] {len(result.reverted or [])} edit(s) in {pack} (version {result.version}): "
        f"{', '.join(result.reverted or [])}",
    )


COMMANDS = {"validate": validate, "edit": edit, "revert": revert}
