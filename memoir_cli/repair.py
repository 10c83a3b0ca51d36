"""Finding the edits a pack has forgotten, and fitting them again (`memoir repair`).

Why: each edit changes the memory's columns of its mask, and every other edit reads some of them.
Rehearsal and protection (editor.py, protection.py) keep most earlier answers, not all: at T = 998
an edit 300 edits old still answers its own question right only 0.66-0.71 of the time, in
generated answers (docs/BENCHMARKS.md). A pack that grows night after night needs a way to find
those edits and restore them, as a new version that can be rolled back like any other.

The check is one teacher-forced pass per question, and exact: an edit holds when, asked its own
question the ways the pack was trained (bare; in a chat pack also through the chat template with no
system prompt), routed as at inference, every token of its answer is the model's greedy choice.
That is the same as greedy generation starting with the answer. A question that routing sends to
another edit cannot be mended by refitting: it is reported with `reached` false and `routed_to`,
a conflict for the user (memoir revert, or `memoir edit --on-conflict replace`).

A repair refits each forgotten edit (Editor.refit: its own rows under its stored mask, its
neighbours rehearsed, every other edit protected), checks again, and with `rounds` > 1 refits
what the refits broke in turn. The version's record holds `["refit", ID]` operations, so a replay
reproduces it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .chat import chat_answer_ids, chat_prompt, conversation
from .editor import Editor, EditResult, editing
from .errors import BadInputError
from .evaluate import Probe, Progress, Row, Scorer, Tally
from .facts import Fact
from .history import ModelLoader, edit_record, replay_info, weight_change
from .store import WriteOptions, commit, load_pack, protection_cache, writing

QUESTION, CHAT = "question", "chat"


@dataclass
class Asked:
    """One edit's question, in one form, as a row to score."""

    edit_id: str
    form: str  # QUESTION or CHAT
    row: Row


@dataclass
class Forgotten:
    """An active edit whose own question, asked in the `forms` listed, does not get its answer."""

    edit_id: str
    forms: list[str]
    reached: bool = True  # whether each of those questions reached this edit: if not, a refit cannot help
    routed_to: str | None = None  # where one that did not went (None: no edit)

    def to_json(self) -> dict:
        return {"id": self.edit_id, "forms": self.forms, "reached": self.reached, "routed_to": self.routed_to}


def questions(editor: Editor, facts: list[Fact]) -> list[Asked]:
    """Each fact's question as the pack was trained on it: bare, and in a chat pack through the
    chat template (no system prompt), with the answer's tokens (not the end token) after it."""
    tokenizer = editor.tokenizer
    asked = []
    for fact in facts:
        asked.append(Asked(fact.id, QUESTION, Row.of(tokenizer, Probe(fact.prompt, fact.target))))
        if editor.settings.chat:
            messages = conversation(fact.prompt)
            prompt = chat_prompt(tokenizer, messages)
            answer = chat_answer_ids(tokenizer, messages, fact.target)[:-1]  # without the end-of-turn token
            row = Row(prompt.ids + answer, prompt.route_mask() + [0] * len(answer), len(prompt.ids))
            asked.append(Asked(fact.id, CHAT, row))
    return asked


def check(editor: Editor, batch_size: int = 16, on_progress: Progress | None = None) -> tuple[int, list[Forgotten]]:
    """How many active edits were checked, and those forgotten (see the module docstring)."""
    facts = editor.pack.active_facts()
    asked = questions(editor, facts)
    scorer = Scorer(editor.model, editor.tokenizer, editor.wrapper, batch_size)
    if on_progress:
        scorer.on_batch = Tally(len(asked), on_progress)
    failed: dict[str, Forgotten] = {}
    for item, scored in zip(asked, scorer.score([a.row for a in asked])):
        routed_to = scored.route["edit_id"] if scored.route else None
        if scored.greedy and routed_to == item.edit_id:
            continue
        entry = failed.setdefault(item.edit_id, Forgotten(item.edit_id, []))
        entry.forms.append(item.form)
        if routed_to != item.edit_id:
            entry.reached, entry.routed_to = False, routed_to
    order = {fact.id: n for n, fact in enumerate(facts)}
    return len(facts), sorted(failed.values(), key=lambda f: order[f.edit_id])


def refittable(forgotten: list[Forgotten]) -> list[Forgotten]:
    """The forgotten edits that a refit can mend: those whose questions reached them."""
    return [f for f in forgotten if f.reached]


@dataclass
class RepairReport:
    """What `memoir repair` found and did."""

    pack: str
    checked: int
    forgotten: list[Forgotten]  # the first check's finding
    dry_run: bool = False
    refits: list[EditResult] = field(default_factory=list)
    rounds: int = 0  # rounds of refits run
    still_forgotten: list[Forgotten] = field(default_factory=list)  # the last check's finding
    version: int | None = None
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {
            "pack": self.pack,
            "dry_run": self.dry_run,
            "checked": self.checked,
            "forgotten": [f.to_json() for f in self.forgotten],
            "rounds": self.rounds,
            "refitted": [
                {"id": r.edit_id, "loss": round(r.loss, 5), "steps": r.steps, "converged": r.converged}
                for r in self.refits
            ],
            "still_forgotten": [f.to_json() for f in self.still_forgotten],
            "version": self.version,
            "seconds": round(self.seconds, 3),
        }


def repair_pack(
    pack_path: str | Path,
    model_loader: ModelLoader,
    write: WriteOptions = WriteOptions(),
    rounds: int = 1,
    dry_run: bool = False,
    on_check: Progress | None = None,
    on_refit: Progress | None = None,
) -> RepairReport:
    """Check every active edit of the pack at `pack_path` and refit the forgotten ones, up to
    `rounds` times, as one new version (none when nothing was refitted, or with `dry_run`)."""
    if rounds < 1:
        raise BadInputError("--rounds must be at least 1")
    start = time.perf_counter()
    if dry_run:
        pack = load_pack(pack_path)
        with editing(model_loader(pack), pack) as editor:
            checked, found = check(editor, on_progress=on_check)
        report = RepairReport(str(pack_path), checked, found, dry_run=True, still_forgotten=found)
        report.seconds = time.perf_counter() - start
        return report
    with writing(pack_path, write) as path:
        pack = load_pack(path)
        loaded = model_loader(pack)
        before = pack.memory.weight.clone()
        with editing(loaded, pack, protection_cache=protection_cache(path)) as editor:
            checked, found = check(editor, on_progress=on_check)
            report = RepairReport(str(path), checked, found, still_forgotten=found)
            todo = refittable(found)
            while todo and report.rounds < rounds:
                report.rounds += 1
                for done, edit in enumerate(todo, start=1):
                    report.refits.append(editor.refit(edit.edit_id))
                    if on_refit:
                        on_refit(done, len(todo))
                _, report.still_forgotten = check(editor, on_progress=on_check)
                todo = refittable(report.still_forgotten)
        if report.refits:
            refitted = list(dict.fromkeys(r.edit_id for r in report.refits))
            record = edit_record(
                "repair",
                write.message,
                [["refit", r.edit_id] for r in report.refits],
                [],
                change=weight_change(before, pack.memory.weight),
                refitted=refitted,
            )
            record["replay"] = replay_info(loaded)
            report.version = commit(pack, path, record)
            editor.save_protection()
    report.seconds = time.perf_counter() - start
    return report
