"""What every command shares on the way out: the two consoles, errors as one line and an exit
code, progress bars, JSON, and the base-model loader for commands that may need one.

stdout carries results (tables, or JSON with --json); stderr carries progress, warnings and errors.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from ..errors import MemoirError
from ..store import WriteOptions
from ._options import BaseModel

out = Console()
err = Console(stderr=True)


def handles_errors(command: Callable) -> Callable:
    """Turn library errors into one clear message and the command's exit code, never a traceback."""

    @wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except MemoirError as error:
            err.print(f"[bold red]error:[/] {error_line(error)}", highlight=False, soft_wrap=True)
            for line in error.details:
                err.print(f"  {line}", highlight=False, soft_wrap=True)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]; nothing was written")
            raise typer.Exit(130) from None

    return run


def error_line(error: MemoirError) -> str:
    """The error's message, and the flag that changes the outcome (Typer's flag for its parameter)."""
    if error.option is None:
        return error.message
    flag = "--" + error.option.replace("_", "-")
    return f"{error.message}; pass {flag} {error.remedy}" if error.remedy else f"{error.message} ({flag})"


def print_json(document: Any) -> None:
    """JSON on stdout: highlighted on a terminal; plain for a script, where rich's re-parsing and
    highlighting would cost seconds for a large pack's `show --json`."""
    text = json.dumps(document, indent=2, ensure_ascii=False)
    if out.is_terminal:
        out.print_json(text)
    else:
        out.file.write(text + "\n")


def report(result: Any, as_json: bool, line: str) -> None:
    """A command's result: its `to_json()` with --json, else one line for a person."""
    if as_json:
        print_json(result.to_json())
    else:
        say(line)


def say(message: str) -> None:
    """A plain result line on stdout (no markup guessing on paths and numbers)."""
    out.print(message, highlight=False)


def say_waiting(message: str) -> None:
    err.print(f"[yellow]{message}[/]", highlight=False, soft_wrap=True)


def writer(message: str | None = None, no_wait: bool = False) -> WriteOptions:
    """How a command writes its version: --message, and --no-wait or else waiting with a notice."""
    return WriteOptions(message, wait=not no_wait, on_wait=say_waiting)


def threshold_line(routing: dict) -> str:
    """A pack's tau for a person (Pack.routing_summary): fixed, or calibrated with its margins."""
    if not routing["auto"]:
        return f"{routing['threshold']} (fixed)"
    if routing.get("margin") is None:
        return f"{routing['threshold']:.4f} (auto, not calibrated yet)"
    return (
        f"{routing['threshold']:.4f} (auto, margin {routing['margin']:+.2f}: {routing['unrelated_routed']:.1%} of "
        f"{routing['unrelated']} unrelated prompts routed, {routing['variants_below']:.1%} of {routing['variants']} "
        "edit variants below)"
    )


def warn(label: str, problem: str) -> None:
    """A warning on stderr: a yellow label, then what the user should know."""
    err.print(f"[yellow]{label}[/] {problem}", highlight=False, soft_wrap=True)


def warn_skipped(problem: str) -> None:
    warn("skipped", problem)


def progress_bar(label: str, enabled: bool, *fields: TextColumn) -> Progress:
    """A bar on stderr (stdout stays clean for --json and pipes): label, bar, done/total, fields, time."""
    return Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        *fields,
        TimeElapsedColumn(),
        console=err,
        disable=not enabled,
        transient=False,
    )


class edit_progress:
    """A rich progress bar (fact i/N, loss, step) fed by the editing callbacks."""

    def __init__(self, enabled: bool) -> None:
        self.progress = progress_bar(
            "editing", enabled, TextColumn("loss {task.fields[loss]}"), TextColumn("step {task.fields[step]}")
        )
        self.task: TaskID | None = None

    def __enter__(self) -> dict:
        self.progress.start()

        def on_start(total: int) -> None:
            self.task = self.progress.add_task("edit", total=total, loss="-", step="-")

        def on_step(_number, _fact, step: int, loss: float) -> None:
            if self.task is not None:
                self.progress.update(self.task, loss=f"{loss:.4f}", step=step)

        def on_fact(_number, _result) -> None:
            if self.task is not None:
                self.progress.advance(self.task)

        return {"on_start": on_start, "on_step": on_step, "on_fact": on_fact}

    def __exit__(self, *exc) -> None:
        self.progress.stop()


@contextmanager
def repair_progress(enabled: bool) -> Iterator[dict]:
    """Two bars fed by repair_pack: questions checked, and forgotten edits refitted (per round).
    Each appears with its first report, so a pack that fails to open leaves no empty bars."""
    progress = progress_bar("repair", enabled, TextColumn("{task.description}"))
    tasks: dict[str, TaskID] = {}

    def bar(name: str) -> Callable[[int, int], None]:
        def update(done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = progress.add_task(name, total=total)
            progress.update(tasks[name], completed=done, total=total)

        return update

    with progress:
        yield {"on_check": bar("questions checked"), "on_refit": bar("edits refitted")}


@contextmanager
def eval_progress(enabled: bool) -> Iterator[Callable[[int, int], None]]:
    """A bar of sequences scored or generated, fed by evaluate's progress callback."""
    progress = progress_bar("scoring", enabled, TextColumn("sequences"))
    task = progress.add_task("eval", total=None)
    with progress:
        yield lambda done, total: progress.update(task, completed=done, total=total)


def model_loader(base: BaseModel):
    """Loads the base model the first time a command needs it (replaying a version, hashing prompts)."""
    cache = {}

    def load(pack):
        from ..models import load_model
        from ..workflows import model_spec_for

        if "model" not in cache:
            err.print("[dim]loading the base model...[/]")
            cache["model"] = load_model(base.model or model_spec_for(pack), base.device, base.dtype, base.device_map)
        return cache["model"]

    return load
