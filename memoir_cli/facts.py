"""Fact records and their readers: our JSONL format (schema-validated) and the ZsRE JSON of the paper.

Every problem is reported as `file:line: message`, all of them at once, so a user fixes a file in
one pass instead of one error per run.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from enum import Enum
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from .errors import BadInputError


class FactsFormat(str, Enum):
    """How a facts file is read: our JSONL, the paper's ZsRE JSON, or auto (by the file's suffix)."""

    auto = "auto"
    jsonl = "jsonl"
    zsre = "zsre"


@dataclass(frozen=True)
class Fact:
    """One edit: `prompt` must be continued with `target`; the rest feeds evaluation."""

    prompt: str
    target: str
    id: str = ""
    rephrases: tuple[str, ...] = ()
    locality: tuple[dict[str, str], ...] = ()
    subject: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record["rephrases"] = list(self.rephrases)
        record["locality"] = [dict(item) for item in self.locality]
        return {key: value for key, value in record.items() if value not in (None, [], {})}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> Fact:
        prompt, target = record["prompt"], record["target"]
        return cls(
            prompt=prompt,
            target=target,
            id=record.get("id") or fact_id(prompt, target),
            rephrases=tuple(record.get("rephrases", ())),
            locality=tuple(dict(item) for item in record.get("locality", ())),
            subject=record.get("subject"),
            meta=dict(record.get("meta", {})),
        )


def fact_id(prompt: str, target: str) -> str:
    """A stable id from the content, so the same fact gets the same id on every machine and run."""
    digest = hashlib.sha256(f"{prompt}\x1f{target}".encode()).hexdigest()
    return f"e-{digest[:12]}"


@cache
def load_schema(name: str) -> dict[str, Any]:
    """A JSON schema shipped in `schemas/`. In a source checkout (pyproject.toml beside the package)
    that is the checkout's own folder, even when another checkout is pip-installed in editable mode
    and a worktree is run from PYTHONPATH; once installed from a wheel, the package `memoir_cli.schemas`."""
    checkout = Path(__file__).resolve().parent.parent
    folder: Any = checkout / "schemas"
    if not (checkout / "pyproject.toml").is_file() or not folder.joinpath(name).is_file():
        folder = resources.files("memoir_cli.schemas")
    return json.loads(folder.joinpath(name).read_text(encoding="utf-8"))


@cache
def _fact_validator() -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(load_schema("fact.schema.json"))


def _schema_messages(record: Any) -> list[str]:
    """One message per problem, in the words of our format rather than of JSON Schema."""
    messages: list[str] = []
    for error in sorted(_fact_validator().iter_errors(record), key=lambda e: [str(p) for p in e.absolute_path]):
        where = "/".join(str(part) for part in error.absolute_path)
        prefix = f"{where}/" if where else ""
        if error.validator == "required":
            missing = [name for name in error.validator_value if name not in error.instance]
            messages.extend(f"'{prefix}{name}' is required" for name in missing)
        elif error.validator == "additionalProperties":
            known = error.schema.get("properties", {})
            unknown = [repr(name) for name in error.instance if name not in known]
            verb = "was" if len(unknown) == 1 else "were"
            messages.append(f"unknown field ({', '.join(unknown)} {verb} unexpected)")
        elif error.validator == "pattern" and where in ("prompt", "target"):
            messages.append(f"'{where}' must not be blank")
        else:
            messages.append(f"'{where or '(record)'}': {error.message}")
    return list(dict.fromkeys(messages))  # jsonschema reports each missing name once per `required` list


def read_facts_jsonl(
    path: str | Path, on_skip: Callable[[str], None] | None = None, limit: int | None = None
) -> list[Fact]:
    """Read and validate a facts JSONL file; raise BadInputError listing every bad line.

    With `on_skip`, bad lines are passed to it and left out instead (the caller reports them).
    With `limit`, only the first `limit` records are read (and checked).
    """
    path = Path(path)
    facts: list[Fact] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for number, record in itertools.islice(_jsonl_records(path, problems), limit):
        messages = _schema_messages(record)
        if messages:
            problems.extend(f"{path}:{number}: {message}" for message in messages)
            continue
        fact = Fact.from_json(record)
        if fact.id in seen:
            problems.append(f"{path}:{number}: 'id' {fact.id!r} repeats line {seen[fact.id]}")
            continue
        seen[fact.id] = number
        facts.append(fact)
    _raise_or_skip(path, problems, on_skip)
    if not facts:
        raise BadInputError(f"{path}: no facts found (the file is empty)")
    return facts


def read_zsre_json(
    path: str | Path, on_skip: Callable[[str], None] | None = None, limit: int | None = None
) -> list[Fact]:
    """Read ZsRE records as the paper and EasyEdit use them (src, alt, rephrase, loc, loc_ans).

    Targets keep their text but lose surrounding whitespace (a few published targets start with a
    space); an empty target is bad input and is reported with its record number (or passed to
    `on_skip` and left out).
    """
    path = Path(path)
    try:
        records = json.loads(_read_text(path))
    except json.JSONDecodeError as error:
        raise BadInputError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
    if not isinstance(records, list):
        raise BadInputError(f"{path}: expected a JSON array of ZsRE records")
    facts, problems = [], []
    for number, record in enumerate(records[:limit], start=1):
        where = f"{path}: record {number}"
        if not isinstance(record, dict):
            problems.append(f"{where}: not an object")
            continue
        missing = [key for key in ("src", "alt") if not isinstance(record.get(key), str)]
        if missing:
            problems.append(f"{where}: '{missing[0]}' is required")
            continue
        prompt, target = " ".join(record["src"].split()), record["alt"].strip()
        if not target:
            problems.append(f"{where}: 'alt' (the target) is empty")
            continue
        rephrase = record.get("rephrase")
        locality: tuple[dict[str, str], ...] = ()
        if isinstance(record.get("loc"), str):
            loc_prompt = record["loc"].removeprefix("nq question: ")
            locality = ({"prompt": loc_prompt, "target": str(record.get("loc_ans", "")).strip()},)
        facts.append(
            Fact(
                prompt=prompt,
                target=target,
                id=f"zsre-{number - 1}",
                rephrases=(" ".join(rephrase.split()),) if isinstance(rephrase, str) else (),
                locality=locality,
                subject=record.get("subject"),
            )
        )
    _raise_or_skip(path, problems, on_skip)
    return facts


def read_facts(
    path: str | Path,
    fmt: FactsFormat | str = FactsFormat.auto,
    on_skip: Callable[[str], None] | None = None,
    limit: int | None = None,
) -> list[Fact]:
    """Read the first `limit` (default all) facts in `fmt` (see FactsFormat: .json is ZsRE)."""
    try:
        fmt = FactsFormat(fmt)
    except ValueError:
        raise BadInputError(f"unknown facts format {fmt!r} (expected one of {', '.join(FactsFormat)})") from None
    if fmt is FactsFormat.auto:
        fmt = FactsFormat.zsre if str(path).endswith(".json") else FactsFormat.jsonl
    reader = read_zsre_json if fmt is FactsFormat.zsre else read_facts_jsonl
    return reader(path, on_skip, limit)


def read_prompts_jsonl(path: str | Path) -> list[str]:
    """Prompts for `memoir apply --prompts`: one `{"prompt": ...}` object a line."""
    path = Path(path)
    prompts: list[str] = []
    problems: list[str] = []
    for number, record in _jsonl_records(path, problems):
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or not record["prompt"].strip():
            problems.append(f"{path}:{number}: 'prompt' is required (a non-empty string)")
            continue
        prompts.append(record["prompt"])
    _raise_or_skip(path, problems, None)
    return prompts


def _jsonl_records(path: Path, problems: list[str]) -> Iterator[tuple[int, Any]]:
    """(line number, parsed record) for each non-blank line; unparsable lines go to `problems`."""
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as error:
            problems.append(f"{path}:{number}: not valid JSON ({error.msg} at column {error.colno})")


def _raise_or_skip(path: Path, problems: list[str], on_skip: Callable[[str], None] | None) -> None:
    if not problems:
        return
    if on_skip is None:
        raise BadInputError(f"{path}: {len(problems)} problem(s) in the file", problems)
    for problem in problems:
        on_skip(problem)


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise BadInputError(f"{path}: no such file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise BadInputError(f"{path}: not UTF-8 text (byte {error.start})") from None
