"""The `memoir` command line: one thin function per command; logic lives in the library.

Exit codes: 0 success, 1 unexpected failure, 2 bad input (facts file, arguments), 3 pack problem
(missing, corrupt, tampered, made for another model), 4 model problem (cannot load, unsupported),
5 pack busy (--no-wait), 6 Hub problem (not found, no token, offline, network), 130 interrupted.
"""
from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Annotated, Callable, Iterator, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ._version import __version__
from .errors import BadInputError, MemoirError

app = typer.Typer(
    name="memoir",
    help="Keep a language model's knowledge up to date with MEMOIR edit packs.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
out = Console()
err = Console(stderr=True)

ModelOpt = Annotated[
    Optional[str],
    typer.Option("--model", "-m", help="Hub repo id, local folder or .gguf file. Default: the pack's base model, "
                 "else the built-in SmolLM2-135M-Instruct."),
]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")]
DtypeOpt = Annotated[str, typer.Option(help="float32, bfloat16 or float16.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
NoWaitOpt = Annotated[bool, typer.Option("--no-wait", help="Fail at once (exit 5) if another process is writing the pack.")]
def _folder_not_version(value: Path | str) -> Path | str:
    """Commands that write a pack take its folder: a version `PACK@N` is read-only."""
    from .store import parse_ref

    ref = parse_ref(value)
    if ref.version is not None:
        raise typer.BadParameter(f"{value} names version {ref.version}, and versions never change: give the pack "
                                 f"folder {ref.path} (memoir rollback {ref.path} --to {ref.version} restores it)")
    return value


MessageOpt = Annotated[Optional[str], typer.Option("--message", help="Why: recorded with the new version (memoir log).")]
PacksArg = Annotated[list[str], typer.Argument(help="Packs: PATH, PATH@N (version N), or a Hub repo user/pack[@vN]; "
                                                   "stacked, the best-matching edit wins.")]
TokenOpt = Annotated[Optional[str], typer.Option("--token", help="Hugging Face token (default: HF_TOKEN or the saved login).")]


def _handles_errors(command: Callable) -> Callable:
    """Turn library errors into one clear message and the command's exit code, never a traceback."""

    @wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except MemoirError as error:
            err.print(f"[bold red]error:[/] {error.message}", highlight=False, soft_wrap=True)
            for line in error.details:
                err.print(f"  {line}", highlight=False, soft_wrap=True)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]; nothing was written")
            raise typer.Exit(130) from None

    return run


def _version(value: bool) -> None:
    if value:
        out.print(f"memoir {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False,
) -> None:
    """Keep a language model's knowledge up to date with MEMOIR edit packs."""


@app.command()
@_handles_errors
def validate(
    facts: Annotated[Path, typer.Argument(help="Facts file to check (JSONL, or ZsRE JSON).")],
    fmt: Annotated[str, typer.Option("--format", help="jsonl, zsre or auto (by extension).")] = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Check a facts file against the schema without loading a model.

    [dim]Example: memoir validate examples/facts.jsonl[/]
    """
    from .facts import read_facts

    records = read_facts(facts, fmt)
    if as_json:
        out.print_json(json.dumps({"file": str(facts), "facts": len(records), "valid": True}))
    else:
        out.print(f"[green]ok[/] {facts}: {len(records)} fact(s)")


@app.command()
@_handles_errors
def edit(
    facts: Annotated[Path, typer.Argument(help="Facts to add: JSONL (see schemas/fact.schema.json) or ZsRE JSON.")],
    pack: Annotated[Path, typer.Option("--pack", "-p", help="Pack folder to create, or to add a version to.",
                                       callback=_folder_not_version)],
    model: ModelOpt = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl, zsre or auto (by extension).")] = "auto",
    skip_invalid: Annotated[bool, typer.Option(help="Leave out bad records (each reported) instead of refusing the file.")] = False,
    limit: Annotated[Optional[int], typer.Option(help="Edit only the first N records.")] = None,
    layer: Annotated[Optional[int], typer.Option(help="Block whose MLP down-projection is edited (default ~0.85 of depth).")] = None,
    top_k: Annotated[Optional[int], typer.Option(help="Features per TopHash mask (default round(0.286 * d_ff)).")] = None,
    threshold: Annotated[Optional[float], typer.Option(help="Routing threshold tau: minimum mask overlap to apply an edit.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Maximum optimisation steps per fact.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="SGD learning rate (default 1.0 for d_ff >= 8192, else 4.0).")] = None,
    rehearse: Annotated[Optional[int], typer.Option(help="Earlier similar edits kept in each fact's batch (0 = the paper's procedure).")] = None,
    rehearse_overlap: Annotated[Optional[float], typer.Option(help="Minimum mask overlap of a rehearsed edit (default: the threshold).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the TopHash permutation and the training prefixes.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be added, replaced and skipped; train nothing.")] = False,
    message: MessageOpt = None,
    checkpoint_every: Annotated[int, typer.Option(help="Commit a version every N facts, so a killed run loses at most N.")] = 50,
    snapshot_every: Annotated[Optional[int], typer.Option(help="Keep every N-th version's files in full (others are replayed on demand; default 10).")] = None,
    no_wait: NoWaitOpt = False,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "float32",
    as_json: JsonOpt = False,
) -> None:
    """Edit FACTS into the pack at --pack (created if missing) as a new version, one fact at a time.

    A fact whose prompt already has an active edit with the same target is skipped (rerunning a
    nightly job is a no-op); with a different target it replaces that edit. A killed run is
    finished by running the same command again.

    [dim]Example: memoir edit examples/facts.jsonl --pack my-pack[/]
    """
    from .facts import read_facts
    from .workflows import EditOptions, edit_pack

    _check_limit(limit)
    records = read_facts(facts, fmt, on_skip=_warn_skipped if skip_invalid else None, limit=limit)
    options = EditOptions(layer=layer, top_k=top_k, threshold=threshold, seed=seed, steps=steps, lr=lr, rehearse=rehearse,
                          rehearse_overlap=rehearse_overlap,
                          device=device, dtype=dtype)
    with _edit_progress(enabled=not (as_json or dry_run)) as hooks:
        summary = edit_pack(records, pack, model, options, dry_run=dry_run, wait=not no_wait, on_wait=_say_waiting,
                            message=message, checkpoint_every=checkpoint_every, snapshot_every=snapshot_every, **hooks)
    if as_json:
        out.print_json(json.dumps(summary.to_json()))
        return
    report = summary.to_json()
    title = f"memoir edit -> {pack}" + (" (dry run: nothing was trained or written)" if dry_run else "")
    table = Table(title=title, show_header=False)
    table.add_row("pack", f"{pack} ({'new' if summary.created else 'existing'})")
    table.add_row("to add" if dry_run else "edited", str(report["planned"] if dry_run else report["edited"]))
    table.add_row("replacing an active edit", str(report["replaced"]))
    table.add_row("skipped (already in pack)", str(report["skipped"]))
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


class _edit_progress:
    """A rich progress bar (fact i/N, loss, step) fed by edit_pack's callbacks."""

    def __init__(self, enabled: bool) -> None:
        self.progress = _progress_bar("editing", enabled, TextColumn("loss {task.fields[loss]}"),
                                      TextColumn("step {task.fields[step]}"))
        self.task = None

    def __enter__(self) -> dict:
        self.progress.start()

        def on_start(total: int) -> None:
            self.task = self.progress.add_task("edit", total=total, loss="-", step="-")

        def on_step(_number, _fact, step: int, loss: float) -> None:
            self.progress.update(self.task, loss=f"{loss:.4f}", step=step)

        def on_fact(_number, _result) -> None:
            self.progress.advance(self.task)

        return {"on_start": on_start, "on_step": on_step, "on_fact": on_fact}

    def __exit__(self, *exc) -> None:
        self.progress.stop()


def _progress_bar(label: str, enabled: bool, *fields: TextColumn) -> Progress:
    """A bar on stderr (stdout stays clean for --json and pipes): label, bar, done/total, fields, time."""
    return Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), *fields, TimeElapsedColumn(),
                    console=err, disable=not enabled, transient=False)


@contextmanager
def _eval_progress(enabled: bool) -> Iterator[Callable[[int, int], None]]:
    """A bar of sequences scored or generated, fed by evaluate's progress callback."""
    progress = _progress_bar("scoring", enabled, TextColumn("sequences"))
    task = progress.add_task("eval", total=None)
    with progress:
        yield lambda done, total: progress.update(task, completed=done, total=total)


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise BadInputError(f"--limit {limit} must be positive")


def _say_waiting(message: str) -> None:
    err.print(f"[yellow]{message}[/]", highlight=False, soft_wrap=True)


def _warn_skipped(problem: str) -> None:
    err.print(f"[yellow]skipped[/] {problem}", highlight=False)


@app.command()
@_handles_errors
def apply(
    packs: PacksArg,
    model: ModelOpt = None,
    prompt: Annotated[Optional[list[str]], typer.Option("--prompt", help="A prompt (repeatable).")] = None,
    prompts: Annotated[Optional[Path], typer.Option("--prompts", help="JSONL file of {\"prompt\": ...} lines.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate per prompt.")] = 32,
    compare: Annotated[bool, typer.Option(help="Also show the base model's answer.")] = False,
    batch_size: Annotated[int, typer.Option(help="Prompts generated together.")] = 8,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "float32",
    as_json: JsonOpt = False,
) -> None:
    """Answer prompts with the packs applied to the base model (interactive when no prompt is given).

    [dim]Example: memoir apply my-pack --prompt "What university did Watts Humphrey attend?" --compare[/]
    """
    from .facts import read_prompts_jsonl
    from .workflows import Session

    texts = list(prompt or []) + (read_prompts_jsonl(prompts) if prompts else [])
    session = Session(packs, model, device, dtype)
    if not texts:
        _interactive(session, max_new_tokens, compare)
        return
    answers = session.answer(texts, max_new_tokens, compare, batch_size)
    if as_json:
        out.print_json(json.dumps([a.to_json() for a in answers]))
        return
    table = Table(title="memoir apply", show_lines=True)
    for column in ["prompt", "edited answer"] + (["base answer"] if compare else []) + ["routed to", "overlap"]:
        table.add_column(column, overflow="fold")
    for a in answers:
        routed = f"{a.pack}:{a.edit_id}" if a.edit_id else "[dim]base model[/]"
        row = [a.prompt, a.output.strip()] + ([a.base_output.strip()] if compare else []) + [routed, f"{a.overlap:.2f}"]
        table.add_row(*row)
    out.print(table)


def _interactive(session, max_new_tokens: int, compare: bool) -> None:
    if not sys.stdin.isatty():
        raise BadInputError("no prompt given: pass --prompt TEXT or --prompts FILE (or run in a terminal)")
    err.print("[dim]Type a prompt, empty line to quit.[/]")
    while True:
        text = typer.prompt("prompt", default="", show_default=False)
        if not text.strip():
            return
        answer = session.answer([text], max_new_tokens, compare)[0]
        out.print(f"[bold]{answer.output.strip()}[/]", highlight=False)
        if compare:
            out.print(f"[dim]base: {answer.base_output.strip()}[/]", highlight=False)
        out.print(f"[dim]routed to {answer.edit_id or 'base model'} (overlap {answer.overlap:.2f})[/]")


@app.command()
@_handles_errors
def revert(
    pack: Annotated[Path, typer.Argument(help="Pack folder.", callback=_folder_not_version)],
    edit_ids: Annotated[Optional[list[str]], typer.Argument(help="Ids of the edits to deactivate.")] = None,
    prompt: Annotated[Optional[list[str]], typer.Option("--prompt", help="Deactivate the active edit of this exact prompt (repeatable).")] = None,
    message: MessageOpt = None,
    no_wait: NoWaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Deactivate single edits, as a new version: routing never selects them again; every other edit is untouched.

    [dim]Example: memoir revert my-pack watts-humphrey-university[/]
    """
    from .workflows import revert_edits

    reverted, version = revert_edits(pack, edit_ids or [], prompt or [], wait=not no_wait, on_wait=_say_waiting,
                                     message=message)
    if as_json:
        out.print_json(json.dumps({"pack": str(pack), "reverted": reverted, "version": version}))
    else:
        out.print(f"[green]reverted[/] {len(reverted)} edit(s) in {pack} (version {version}): {', '.join(reverted)}",
                  highlight=False)


@app.command("eval")
@_handles_errors
def eval_(
    packs: PacksArg,
    model: ModelOpt = None,
    data: Annotated[Optional[Path], typer.Option(help="Records to score: facts JSONL or ZsRE JSON. Default: the packs' own facts.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl, zsre or auto (by extension).")] = "auto",
    skip_invalid: Annotated[bool, typer.Option(help="Leave out bad records (each reported) instead of refusing the file.")] = False,
    limit: Annotated[Optional[int], typer.Option(help="Score only the first N records.")] = None,
    generate: Annotated[bool, typer.Option("--generate", help="Also require greedy generation to start with the target.")] = False,
    baseline: Annotated[bool, typer.Option("--baseline", help="Also score the unedited model on the same records.")] = False,
    out_file: Annotated[Optional[Path], typer.Option("--out", help="Write the full report, per record, to this JSON file.")] = None,
    batch_size: Annotated[int, typer.Option(help="Sequences scored together.")] = 16,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "float32",
    as_json: JsonOpt = False,
) -> None:
    """Score reliability, generalisation and locality (the MEMOIR paper's protocol) with routing statistics.

    [dim]Example: memoir eval my-pack --data ../shared/data/zsre/zsre_dev.json --limit 100 --baseline[/]
    """
    from .facts import read_facts
    from .workflows import Session

    _check_limit(limit)
    records = read_facts(data, fmt, on_skip=_warn_skipped if skip_invalid else None, limit=limit) if data else None
    session = Session(packs, model, device, dtype)
    facts = (records if records is not None else session.pack_facts())[:limit]
    if not facts:
        raise BadInputError("nothing to score: the packs hold no active facts (pass --data)")
    with _eval_progress(enabled=not as_json) as on_progress:
        report = session.evaluate(facts, check_generation=generate, baseline=baseline, batch_size=batch_size,
                                  on_progress=on_progress)
    _remember_scores(packs, session, report, data)
    if out_file:
        out_file.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    if as_json:
        out.print_json(json.dumps(report.summary()))
        return
    _render_eval(report, [p.memory.threshold for p in session.packs])


def _remember_scores(refs: list[str], session, report, data: Path | None) -> None:
    """One local pack at its current version: keep the scores for its model card (memoir push)."""
    from .hub import remember_scores
    from .store import parse_ref

    if len(refs) == 1 and parse_ref(refs[0]).version is None and session.packs[0].path == parse_ref(refs[0]).path:
        remember_scores(session.packs[0].path, session.packs[0].version, report.summary(), str(data) if data else None)


def _render_eval(report, thresholds: list[float]) -> None:
    def fmt_score(value) -> str:
        return "-" if value is None else f"{value:.3f}"

    scores = Table(title=f"memoir eval: {len(report.records)} record(s)")
    columns = [("edited (teacher-forced)", report.scores)]
    if report.baseline is not None:
        columns.append(("unedited model", report.baseline))
    if report.generate is not None:
        columns.append(("edited (greedy generation)", report.generate))
    scores.add_column("metric")
    for title, _ in columns:
        scores.add_column(title, justify="right")
    for key, name in (("rel", "Reliability"), ("gen", "Generalisation"), ("loc", "Locality"), ("avg", "Average")):
        scores.add_row(name, *(fmt_score(values[key]) for _, values in columns))
    out.print(scores)
    routing = report.routing
    table = Table(title=f"routing (threshold {', '.join(str(t) for t in thresholds)})")
    table.add_column("prompts -> intended route", no_wrap=True)
    for column in ("share", "overlap min", "q1", "median", "q3", "max"):
        table.add_column(column, justify="right")
    rows = (("edit prompt -> own edit", "rel_to_own_edit", "rel"), ("rephrasing -> right edit", "gen_to_right_edit", "gen"),
            ("rephrasing -> an edit with its answer", "gen_to_same_answer", None),
            ("locality -> no edit", "loc_to_no_edit", "loc"))
    for label, share_key, overlap_key in rows:
        spread = routing["overlap"][overlap_key] if overlap_key else None
        cells = [f"{spread[k]:.2f}" for k in ("min", "q1", "median", "q3", "max")] if spread else ["-" if overlap_key else ""] * 5
        table.add_row(label, fmt_score(routing[share_key]), *cells)
    out.print(table)


@app.command()
@_handles_errors
def show(
    pack: Annotated[str, typer.Argument(help="Pack folder, or PACK@N for version N.")],
    facts: Annotated[int, typer.Option(help="How many facts to list.")] = 10,
    model: ModelOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "float32",
    as_json: JsonOpt = False,
) -> None:
    """Show what a pack is: base model, settings, size and facts.

    [dim]Example: memoir show my-pack --json[/]
    """
    from .history import open_pack

    loaded = open_pack(pack, _model_loader(model, device, dtype))
    summary = loaded.summary()
    active = loaded.memory.bank.active.tolist()
    listed = [dict(f.to_json(), active=a) for f, a in zip(loaded.facts, active)]
    if as_json:
        out.print_json(json.dumps(dict(summary, facts=listed)))
        return
    table = Table(title=f"memoir pack {pack}", show_header=False)
    for key, value in summary.items():
        table.add_row(key, str(value))
    out.print(table)
    if listed:
        facts_table = Table(title=f"facts ({min(facts, len(listed))} of {len(listed)})")
        for column in ("id", "prompt", "target", "active"):
            facts_table.add_column(column, overflow="fold")
        for record in listed[:facts]:
            facts_table.add_row(record["id"], record["prompt"], record["target"], "yes" if record["active"] else "no")
        out.print(facts_table)


def _model_loader(model: str | None, device: str, dtype: str):
    """Loads the base model the first time a command needs it (replaying a version, hashing prompts)."""
    cache = {}

    def load(pack):
        from .models import load_model
        from .workflows import model_spec_for

        if "model" not in cache:
            err.print("[dim]loading the base model to replay a version...[/]")
            cache["model"] = load_model(model or model_spec_for(pack), device, dtype)
        return cache["model"]

    return load


@app.command()
@_handles_errors
def log(
    pack: Annotated[str, typer.Argument(help="Pack folder, PACK@N (its history up to version N), or a Hub repo "
                                              "user/pack[@vN].")],
    as_json: JsonOpt = False,
) -> None:
    """List a pack's versions, newest first: what each added, replaced and deactivated, and why.

    [dim]Example: memoir log my-pack[/]
    """
    from .history import log as version_log
    from .hub import resolve_reference

    ref = resolve_reference(pack)[0]
    entries = version_log(ref.path, ref.version)
    if as_json:
        out.print_json(json.dumps({"pack": str(pack), "versions": entries}))
        return
    table = Table(title=f"memoir log {pack}")
    for column in ("v", "date (UTC)", "kind", "+add ~repl -deact", "active", "files", "message"):
        table.add_column(column, overflow="fold", no_wrap=column != "message")
    for e in reversed(entries):
        table.add_row(str(e["version"]), e["created_at"][:16].replace("T", " "), e["kind"] or "-",
                      f"+{e['added']} ~{e['replaced']} -{e['deactivated']}", f"{e['active']}/{e['edits']}",
                      "kept" if e["stored"] else "[dim]replay[/]", e["message"] or "")
    out.print(table)


@app.command()
@_handles_errors
def rollback(
    pack: Annotated[Path, typer.Argument(help="Pack folder.", callback=_folder_not_version)],
    to: Annotated[int, typer.Option("--to", help="Version whose state becomes current again.")],
    message: MessageOpt = None,
    model: ModelOpt = None,
    no_wait: NoWaitOpt = False,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "float32",
    as_json: JsonOpt = False,
) -> None:
    """Make version N's state current again (bit-identical weights and masks) as a new version.

    History is never rewritten: the versions after N stay in the log.

    [dim]Example: memoir rollback my-pack --to 3[/]
    """
    from .history import rollback as roll_back

    version = roll_back(pack, to, _model_loader(model, device, dtype), message, wait=not no_wait, on_wait=_say_waiting)
    if as_json:
        out.print_json(json.dumps({"pack": str(pack), "restored": to, "version": version}))
    else:
        out.print(f"[green]rolled back[/] {pack} to version {to}'s state, as version {version}", highlight=False)


@app.command()
@_handles_errors
def rebuild(
    pack: Annotated[Path, typer.Argument(help="Pack folder.", callback=_folder_not_version)],
    message: MessageOpt = None,
    model: ModelOpt = None,
    no_wait: NoWaitOpt = False,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "float32",
    as_json: JsonOpt = False,
) -> None:
    """Replay the active facts from scratch into a compact memory, as a new version.

    Reverted and replaced edits are dropped. On the same device with the same seed the result is
    bit-identical to editing the active facts into a fresh pack.

    [dim]Example: memoir rebuild my-pack[/]
    """
    from .history import rebuild as rebuild_pack

    with _edit_progress(enabled=not as_json) as hooks:
        version = rebuild_pack(pack, _model_loader(model, device, dtype), dtype, message, wait=not no_wait,
                               on_wait=_say_waiting, on_start=hooks["on_start"], on_fact=hooks["on_fact"])
    if as_json:
        out.print_json(json.dumps({"pack": str(pack), "version": version}))
    else:
        out.print(f"[green]rebuilt[/] {pack} as version {version}", highlight=False)


@app.command()
@_handles_errors
def diff(
    a: Annotated[str, typer.Argument(help="Pack or version (PACK@N) to compare from.")],
    b: Annotated[str, typer.Argument(help="Pack or version to compare to.")],
    force: Annotated[bool, typer.Option("--force", help="Compare packs made for different base models.")] = False,
    model: ModelOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "float32",
    as_json: JsonOpt = False,
) -> None:
    """Compare two packs, or two versions of one: facts added, removed and retargeted, conflicts,
    settings, and how much of the memory changed.

    [dim]Example: memoir diff my-pack@3 my-pack[/]
    """
    from .diff import Side, diff as compare
    from .history import open_pack
    from .hub import resolve_reference

    loader = _model_loader(model, device, dtype)
    (ref_a, _), (ref_b, _) = resolve_reference(a), resolve_reference(b)
    stacked = ref_a.path.resolve() != ref_b.path.resolve()
    report = compare(Side(a, open_pack(ref_a, loader)), Side(b, open_pack(ref_b, loader)), stacked, force, loader)
    if as_json:
        out.print_json(json.dumps(report))
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
    table.add_row("conflicts within B", f"{len(conflicts['within_b'])} ({sum(c['new'] for c in conflicts['within_b'])} new)")
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


@app.command()
@_handles_errors
def push(
    pack: Annotated[Path, typer.Argument(help="Pack folder.", callback=_folder_not_version)],
    repo_id: Annotated[str, typer.Argument(help="Hub model repo, user/name (created if missing).")],
    private: Annotated[bool, typer.Option("--private", help="Create the repo as private.")] = False,
    token: TokenOpt = None,
    message: Annotated[Optional[str], typer.Option("--message", help="Commit message (default: each version's own).")] = None,
    license: Annotated[Optional[str], typer.Option("--license", help="License id for the model card, e.g. apache-2.0.")] = None,
    model: ModelOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "float32",
    as_json: JsonOpt = False,
) -> None:
    """Push the pack's versions to the Hub: each version a commit tagged vN; only new versions are sent.

    [dim]Example: memoir push my-pack my-user/my-pack --private[/]
    """
    from .hub import push as push_pack

    def said(number: int) -> None:
        if not as_json:
            err.print(f"pushed version {number} as tag v{number}", highlight=False)

    result = push_pack(pack, repo_id, _model_loader(model, device, dtype), private, token, message, license, said)
    if as_json:
        out.print_json(json.dumps({"repo_id": result.repo_id, "url": result.url, "pushed": result.pushed,
                                   "already_on_hub": result.already}))
    elif result.pushed:
        out.print(f"[green]pushed[/] versions {', '.join(map(str, result.pushed))} of {pack} to {result.url}", highlight=False)
    else:
        out.print(f"{result.url} already has every version of {pack}", highlight=False)


@app.command()
@_handles_errors
def pull(
    ref: Annotated[str, typer.Argument(help="user/pack, user/pack@v3 or user/pack@<commit>.")],
    to: Annotated[Optional[Path], typer.Option("--to", help="Copy the pack into this folder (default: keep it in the Hugging Face cache).")] = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Download a pack from the Hub (through the Hugging Face cache) and check it in full.

    Commands that take a pack also take the Hub reference directly; pull ahead of time to work
    offline (HF_HUB_OFFLINE=1), or with --to to get a local copy to add versions to.

    [dim]Example: memoir pull my-user/my-pack@v2 --to my-pack[/]
    """
    from .hub import pull as pull_pack
    from .store import load_pack

    folder = pull_pack(ref, to, token)
    pack = load_pack(folder)
    if as_json:
        out.print_json(json.dumps({"ref": ref, "path": str(folder), "version": pack.version,
                                   "edits": len(pack.facts), "active": int(pack.memory.bank.active.sum())}))
    else:
        out.print(f"[green]pulled[/] {ref} (version {pack.version}, {len(pack.facts)} facts) to {folder}", highlight=False)


def main() -> None:
    import transformers

    # Our own progress bars cover long work; transformers' per-load bars and notices are noise here.
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    app()
