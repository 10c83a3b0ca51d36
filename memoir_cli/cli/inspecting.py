"""Commands that look at packs without changing them: show, log, diff."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ._options import (
    DEFAULT_BASE_MODEL,
    BaseModel,
    JsonOpt,
    PackArg,
    TokenOpt,
    takes_base_model,
)
from ._output import handles_errors, model_loader, out, print_json, threshold_line


@handles_errors
@takes_base_model
def show(
    pack: PackArg,
    facts: Annotated[int, typer.Option(min=0, help="How many facts to list.")] = 10,
    base: BaseModel = DEFAULT_BASE_MODEL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show what a pack is: base model, settings, size and facts.

    [dim]Example: memoir show my-pack --json[/]
    """
    from ..history import open_pack

    loaded = open_pack(pack, model_loader(base), token)
    summary = loaded.summary()
    listed = [dict(f.to_json(), active=a) for f, a in zip(loaded.facts, loaded.memory.bank.active.tolist())]
    if as_json:
        print_json(dict(summary, facts=listed))
        return
    table = Table(title=f"memoir pack {pack}", show_header=False)
    for key, value in summary.items():
        table.add_row(key, threshold_line(value) if key == "routing" else str(value))
    out.print(table)
    if listed:
        facts_table = Table(title=f"facts ({min(facts, len(listed))} of {len(listed)})")
        for column in ("id", "prompt", "target", "active"):
            facts_table.add_column(column, overflow="fold")
        for record in listed[:facts]:
            facts_table.add_row(record["id"], record["prompt"], record["target"], "yes" if record["active"] else "no")
        out.print(facts_table)


@handles_errors
def log(
    pack: Annotated[
        str, typer.Argument(help="Pack folder, PACK@N (its history up to version N), or a Hub repo user/pack\\[@vN].")
    ],
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List a pack's versions, newest first: what each added, replaced and deactivated, and why.

    [dim]Example: memoir log my-pack[/]
    """
    from ..history import log as version_log
    from ..hub import resolve
    from ..refs import parse_ref

    ref = resolve(parse_ref(pack), token)[0]
    entries = version_log(ref.path, ref.version)
    if as_json:
        print_json({"pack": str(pack), "versions": entries})
        return
    table = Table(title=f"memoir log {pack}")
    for column in ("v", "date (UTC)", "kind", "+add ~repl -deact", "active", "files", "message"):
        table.add_column(column, overflow="fold", no_wrap=column != "message")
    for e in reversed(entries):
        table.add_row(
            str(e["version"]),
            e["created_at"][:16].replace("T", " "),
            e["kind"] or "-",
            f"+{e['added']} ~{e['replaced']} -{e['deactivated']}",
            f"{e['active']}/{e['edits']}",
            "kept" if e["stored"] else "[dim]replay[/]",
            e["message"] or "",
        )
    out.print(table)


@handles_errors
@takes_base_model
def diff(
    a: Annotated[str, typer.Argument(help="Pack or version (PACK@N) to compare from.")],
    b: Annotated[str, typer.Argument(help="Pack or version to compare to.")],
    force: Annotated[bool, typer.Option("--force", help="Compare packs made for different base models.")] = False,
    base: BaseModel = DEFAULT_BASE_MODEL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Compare two packs, or two versions of one: facts added, removed and retargeted, conflicts,
    settings, and how much of the memory changed.

    [dim]Example: memoir diff my-pack@3 my-pack[/]
    """
    from ..diff import Side
    from ..diff import diff as compare
    from ..history import open_pack

    loader = model_loader(base)
    pack_a, pack_b = open_pack(a, loader, token), open_pack(b, loader, token)
    stacked = Path(pack_a.path or a).resolve() != Path(pack_b.path or b).resolve()
    report = compare(Side(a, pack_a), Side(b, pack_b), stacked, force, loader)
    if as_json:
        print_json(report)
        return
    _render_diff(report)


def _render_diff(report: dict) -> None:
    facts = report["facts"]
    table = Table(title=f"memoir diff {report['a']} -> {report['b']}", show_header=False)
    table.add_row("facts added", str(len(facts["added"])))
    table.add_row("facts removed", str(len(facts["removed"])))
    table.add_row("facts retargeted", str(len(facts["retargeted"])))
    memory = report["memory"]
    if memory:
        relative = f" ({memory['relative']:.1%} of A's norm)" if memory["relative"] is not None else ""
        table.add_row("memory columns touched", str(memory["columns_touched"]))
        table.add_row("norm of the change", f"{memory['norm']:.4g}{relative}")
    conflicts = report["conflicts"]
    table.add_row("new conflicts within B", str(len(conflicts["within_b"])))
    if report["stacked"]:
        table.add_row("conflicts across A and B", str(len(conflicts["across"])))
    out.print(table)
    details = Table(show_header=True, title="changes")
    for column in ("change", "id", "prompt", "target"):
        details.add_column(column, overflow="fold")
    for f in facts["added"]:
        details.add_row("[green]+ added[/]", f["id"], f["prompt"], f["target"])
    for f in facts["removed"]:
        details.add_row("[red]- removed[/]", f["id"], f["prompt"], f["target"])
    for f in facts["retargeted"]:
        details.add_row("[yellow]~ retargeted[/]", f["id_b"], f["prompt"], f"{f['target_a']} -> {f['target_b']}")
    for c in conflicts["within_b"] + conflicts["across"]:
        details.add_row("[magenta]! conflict[/]", f"{c['a']} / {c['b']}", f"mask overlap {c['overlap']:.2f}", "")
    for setting in report["settings"]:
        details.add_row("[cyan]setting[/]", setting["setting"], str(setting["a"]), str(setting["b"]))
    if details.row_count:
        out.print(details)


COMMANDS = {"show": show, "log": log, "diff": diff}
