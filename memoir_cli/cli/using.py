"""Commands that use packs on the base model: apply (answer prompts), eval (score them)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..chat import ChatMode
from ..errors import BadInputError
from ..evaluate import Protocol
from ..facts import FactsFormat
from ..release import AfterTarget
from ..wild import Context
from ._options import (
    DEFAULT_BASE_MODEL,
    AfterTargetOpt,
    AskChatOpt,
    BaseModel,
    FormatOpt,
    JsonOpt,
    LimitOpt,
    PacksArg,
    SkipInvalidOpt,
    SystemOpt,
    TokenOpt,
    takes_base_model,
)
from ._output import err, eval_progress, handles_errors, out, print_json, threshold_line, warn_skipped


@handles_errors
@takes_base_model
def apply(
    packs: PacksArg,
    base: BaseModel = DEFAULT_BASE_MODEL,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", help="A prompt (repeatable).")] = None,
    prompts: Annotated[Path | None, typer.Option("--prompts", help='JSONL file of {"prompt": ...} lines.')] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens to generate per prompt.")] = 32,
    compare: Annotated[bool, typer.Option(help="Also show the base model's answer.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Prompts generated together.")] = 8,
    chat: AskChatOpt = ChatMode.auto,
    system: SystemOpt = None,
    after_target: AfterTargetOpt = AfterTarget.auto,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Answer prompts with the packs applied to the base model (interactive when no prompt is given).

    [dim]Example: memoir apply my-pack --prompt "What university did Watts Humphrey attend?" --compare[/]
    """
    from ..facts import read_prompts_jsonl
    from ..session import Session

    texts = list(prompt or []) + (read_prompts_jsonl(prompts) if prompts else [])
    session = Session(packs, base.model, base.device, base.dtype, token, after_target.value, base.device_map)
    asking = session.asking(chat.value, system)
    if not texts:
        _interactive(session, max_new_tokens, compare, asking)
        return
    answers = session.answer(texts, max_new_tokens, compare, batch_size, asking)
    if as_json:
        print_json([a.to_json() for a in answers])
        return
    table = Table(title="memoir apply", show_lines=True)
    for column in ["prompt", "edited answer"] + (["base answer"] if compare else []) + ["routed to", "overlap"]:
        table.add_column(column, overflow="fold")
    for a in answers:
        routed = f"{a.pack}:{a.edit_id}" if a.edit_id else "[dim]base model[/]"
        base_answer = [(a.base_output or "").strip()] if compare else []
        row = [a.prompt, a.output.strip(), *base_answer, routed, f"{a.overlap:.2f}"]
        table.add_row(*row)
    out.print(table)


def _interactive(session, max_new_tokens: int, compare: bool, asking) -> None:
    if not sys.stdin.isatty():
        raise BadInputError("no prompt given: pass --prompt TEXT or --prompts FILE (or run in a terminal)")
    err.print("[dim]Type a prompt, empty line to quit.[/]")
    while True:
        text = typer.prompt("prompt", default="", show_default=False)
        if not text.strip():
            return
        answer = session.answer([text], max_new_tokens, compare, asking=asking)[0]
        out.print(f"[bold]{answer.output.strip()}[/]", highlight=False)
        if compare:
            out.print(f"[dim]base: {answer.base_output.strip()}[/]", highlight=False)
        out.print(f"[dim]routed to {answer.edit_id or 'base model'} (overlap {answer.overlap:.2f})[/]")


@handles_errors
@takes_base_model
def eval_(
    packs: PacksArg,
    base: BaseModel = DEFAULT_BASE_MODEL,
    data: Annotated[
        Path | None, typer.Option(help="Records to score: facts JSONL or ZsRE JSON. Default: the packs' own facts.")
    ] = None,
    fmt: FormatOpt = FactsFormat.auto,
    skip_invalid: SkipInvalidOpt = False,
    limit: LimitOpt = None,
    generate: Annotated[
        bool, typer.Option("--generate", help="Also require greedy generation to start with the target.")
    ] = False,
    baseline: Annotated[
        bool, typer.Option("--baseline", help="Also score the unedited model on the same records.")
    ] = False,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the full report, per record, to this JSON file.")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Sequences scored together.")] = 16,
    protocol: Annotated[
        Protocol,
        typer.Option(
            help="paper: teacher-forced token accuracy (the published tables); wild: also the generated "
            "answer, cut at the first '.', newline or EOS, must start with the target (wild.py)."
        ),
    ] = Protocol.paper,
    context: Annotated[
        Context, typer.Option(help="WILD: ask the bare question, through the chat template, or both.")
    ] = Context.question,
    judge: Annotated[
        str | None, typer.Option(help="WILD: an OpenAI-compatible API base URL whose model judges each answer.")
    ] = None,
    judge_model: Annotated[str, typer.Option(help="WILD: the judge's model name.")] = "judge",
    after_target: AfterTargetOpt = AfterTarget.auto,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Score reliability, generalisation and locality (the MEMOIR paper's protocol) with routing statistics.

    [dim]Example: memoir eval my-pack --data ../shared/data/zsre/zsre_dev.json --limit 100 --baseline[/]
    """
    from ..facts import read_facts
    from ..session import Session
    from ..wild import Judge

    records = read_facts(data, fmt.value, on_skip=warn_skipped if skip_invalid else None, limit=limit) if data else None
    session = Session(packs, base.model, base.device, base.dtype, token, after_target.value, base.device_map)
    facts = (records if records is not None else session.pack_facts())[:limit]
    if not facts:
        raise BadInputError("nothing to score: the packs hold no active facts (pass --data)")
    if protocol is Protocol.paper and (judge or context is not Context.question):
        raise BadInputError("--context and --judge belong to the WILD protocol: add --protocol wild")
    contexts = context.asked() if protocol is Protocol.wild else []
    referee = Judge(judge, judge_model, os.environ.get("MEMOIR_JUDGE_API_KEY")) if judge else None
    with eval_progress(enabled=not as_json) as on_progress:
        report = session.evaluate(
            facts,
            check_generation=generate,
            baseline=baseline,
            batch_size=batch_size,
            on_progress=on_progress,
            wild_contexts=contexts,
            judge=referee,
        )
    session.remember_scores(packs, report, str(data) if data else None)
    if out_file:
        out_file.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    thresholds = [pack.routing_summary() for pack in session.packs]
    if as_json:
        print_json(dict(report.summary(), thresholds=thresholds))
        return
    _render_eval(report, thresholds)


def _render_eval(report, thresholds: list[dict]) -> None:
    def fmt_score(value) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = [("edited, teacher-forced", report.scores)]
    if report.baseline is not None:
        lines.append(("unedited, teacher-forced", report.baseline))
    if report.generate is not None:
        lines.append(("edited, greedy generation", report.generate))
    for context, values in (report.wild or {}).items():
        lines.append((f"edited, WILD, {context}", values))
    for context, values in (report.wild_baseline or {}).items():
        lines.append((f"unedited, WILD, {context}", values))
    metrics = [
        (key, name)
        for key, name in (
            ("rel", "Rel"),
            ("gen", "Gen"),
            ("loc", "Loc"),
            ("avg", "Avg"),
            ("repetition", "Repeats"),
            ("judge_rel", "Judge Rel"),
            ("judge_gen", "Judge Gen"),
        )
        if any(key in values for _, values in lines)
    ]
    scores = Table(
        title=f"memoir eval: {len(report.records)} record(s)",
        caption="Rel: reliability, Gen: generalisation, Loc: locality, Avg: their mean; "
        "Repeats: share of answers that repeat their target",
    )
    scores.add_column("model, protocol", no_wrap=True)
    for _, name in metrics:
        scores.add_column(name, justify="right")
    for title, values in lines:
        scores.add_row(title, *(fmt_score(values.get(key)) for key, _ in metrics))
    out.print(scores)
    routing = report.routing
    table = Table(title=f"routing (threshold {'; '.join(threshold_line(t) for t in thresholds)})")
    table.add_column("prompts -> intended route", no_wrap=True)
    for column in ("share", "overlap min", "q1", "median", "q3", "max"):
        table.add_column(column, justify="right")
    rows = (
        ("edit prompt -> own edit", "rel_to_own_edit", "rel"),
        ("rephrasing -> right edit", "gen_to_right_edit", "gen"),
        ("rephrasing -> an edit with its answer", "gen_to_same_answer", None),
        ("locality -> no edit", "loc_to_no_edit", "loc"),
    )
    for label, share_key, overlap_key in rows:
        spread = routing["overlap"][overlap_key] if overlap_key else None
        cells = (
            [f"{spread[k]:.2f}" for k in ("min", "q1", "median", "q3", "max")]
            if spread
            else ["-" if overlap_key else ""] * 5
        )
        table.add_row(label, fmt_score(routing[share_key]), *cells)
    out.print(table)


COMMANDS = {"apply": apply, "eval": eval_}
