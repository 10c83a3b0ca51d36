"""The WILD protocol ("The Mirage of Model Editing", ACL 2025): score the answer a user reads.

- Greedy generation of at most 50 new tokens, cut at the first ".", newline or end of sequence.
- An answer counts when its normalised text (lower case, no punctuation, no articles, spaces
  collapsed) starts with the normalised target.
- Locality: the cut answer to an unrelated question equals the base model's cut answer.

One deviation, so that a target with a period of its own can count at all ("St. Louis", "J. R. R.
Tolkien"): when an answer starts with its target, the cut is looked for after the target.

Besides the scores, the repetition rate: the share of reliability answers (uncut, 50 tokens) in
which the target occurs twice or more, the failure a residual applied at every position shows.
An optional judge (any OpenAI-compatible chat endpoint) is asked whether each answer states its
target; it never replaces the rule's score, and a judge that fails is an error, never a score.
"""

from __future__ import annotations

import json
import re
import string
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from .chat import Asking
from .errors import MemoirError
from .facts import Fact

if TYPE_CHECKING:
    from .evaluate import ProbeSet

MAX_NEW_TOKENS = 50
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans({c: " " for c in string.punctuation + "\u2018\u2019\u201c\u201d\u2013\u2014"})


class JudgeError(MemoirError):
    """The judge endpoint cannot be reached or answers something other than a verdict."""

    exit_code = 7


def cut(answer: str, target: str = "") -> str:
    """`answer` up to its first ".", newline or end (after `target`, when it starts with it)."""
    text = answer.strip()
    start = len(target) if target and text.lower().startswith(target.lower()) else 0
    ends = [i for i in (text.find(".", start), text.find("\n", start)) if i >= 0]
    return text[: min(ends)] if ends else text


def normalise(text: str) -> str:
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def hits(answer: str, target: str) -> bool:
    """The answer, cut, starts with the target (both normalised)."""
    expected = normalise(target)
    return bool(expected) and normalise(cut(answer, target)).startswith(expected)


def same_answer(edited: str, base: str) -> bool:
    """Locality: the edited model's cut answer is the base model's."""
    return cut(edited) == cut(base)


def repeats(answer: str, target: str) -> bool:
    """The target occurs twice or more in the (uncut) answer, as whole words. The occurrences are
    counted with a lookahead, so that two in a row ("Paris Paris") share the space between them."""
    expected = normalise(target)
    occurrences = re.findall(f"(?= {re.escape(expected)} )", f" {normalise(answer)} ")
    return bool(expected) and len(occurrences) >= 2


@dataclass(frozen=True)
class Judge:
    """An OpenAI-compatible chat endpoint asked, for each answer, whether it states the target.

    `url` is the API base (`http://host:port/v1`); the request goes to `{url}/chat/completions`.
    """

    url: str
    model: str = "judge"
    api_key: str | None = None
    timeout: float = 60.0

    def states(self, question: str, answer: str, target: str) -> bool:
        body = {
            "model": self.model,
            "temperature": 0,
            "max_tokens": 3,
            "messages": [
                {"role": "system", "content": "You grade answers. Reply with exactly one word: YES or NO."},
                {
                    "role": "user",
                    "content": f"Question: {question}\nExpected answer: {target}\nModel answer: {answer}\n"
                    "Does the model answer state the expected answer?",
                },
            ],
        }
        reply = self._post(body)
        try:
            verdict = str(reply["choices"][0]["message"]["content"]).strip().upper()
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"judge {self.url}: the reply is not a chat completion") from None
        word = verdict.split()[0].strip(string.punctuation) if verdict.split() else ""
        if word not in ("YES", "NO"):
            raise JudgeError(f"judge {self.url}: expected YES or NO, got {verdict[:40]!r}")
        return word == "YES"

    def _post(self, body: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(
            f"{self.url.rstrip('/')}/chat/completions", json.dumps(body).encode(), headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise JudgeError(f"judge {self.url}: HTTP {error.code} ({error.reason})") from None
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise JudgeError(f"judge {self.url}: cannot reach it ({reason})") from None
        except json.JSONDecodeError:
            raise JudgeError(f"judge {self.url}: the reply is not JSON") from None


CONTEXTS = {"question": Asking(chat=False), "chat": Asking(chat=True)}


class Context(str, Enum):
    """Where WILD asks each question: bare, through the chat template, or both (scored apart)."""

    question = "question"
    chat = "chat"
    both = "both"

    def asked(self) -> list[str]:
        """The contexts scored, keys of CONTEXTS."""
        return list(CONTEXTS) if self is Context.both else [self.value]


def check(
    facts: list[Fact],
    probes: ProbeSet,
    generate: Callable[[list[str], int, bool, Asking | None], list[str]],
    contexts: list[str],
    records: list[dict],
    judge: Judge | None = None,
) -> dict[str, dict]:
    """WILD scores per context ("question": bare, "chat": through the chat template), with the
    repetition rate and, given a judge, its verdicts; every answer goes into `records`."""
    report = {}
    for context in contexts:
        asking = CONTEXTS[context]
        rel = generate([p.prompt for p in probes.rel], MAX_NEW_TOKENS, True, asking)
        gen = generate([p.prompt for p in probes.gen], MAX_NEW_TOKENS, True, asking)
        loc_edited = generate([p.prompt for p in probes.loc], MAX_NEW_TOKENS, True, asking)
        loc_base = generate([p.prompt for p in probes.loc], MAX_NEW_TOKENS, False, asking)
        rows = []
        for index, fact in enumerate(facts):
            gens = probes.gen_of(index, gen)
            locs = probes.loc_of(index, list(zip(loc_edited, loc_base)))
            row: dict = {
                "rel": float(hits(rel[index], fact.target)),
                "gen": _mean([float(hits(answer, fact.target)) for answer in gens]),
                "loc": _mean([float(same_answer(e, b)) for e, b in locs]),
                "repeats": repeats(rel[index], fact.target),
                "answer": rel[index],
                "rephrase_answers": gens,
                "locality_answers": [{"edited": e, "base": b} for e, b in locs],
            }
            if judge is not None:
                row["judge_rel"] = float(judge.states(fact.prompt, cut(rel[index], fact.target), fact.target))
                questions = probes.gen_of(index, [p.prompt for p in probes.gen])
                row["judge_gen"] = _mean(
                    [float(judge.states(q, cut(a, fact.target), fact.target)) for q, a in zip(questions, gens)]
                )
            records[index].setdefault("wild", {})[context] = row
            rows.append(row)
        report[context] = _summary(rows, judge is not None)
    return report


def unedited(
    facts: list[Fact],
    probes: ProbeSet,
    generate: Callable[[list[str], int, bool, Asking | None], list[str]],
    contexts: list[str],
) -> dict[str, dict]:
    """The unedited model's WILD scores per context, asked as `check` asks the edited one: how often
    the base model already gives each target, the floor every editor is compared with. Its
    locality is 1.0 by definition, since its own answer is the reference."""
    report = {}
    for context in contexts:
        asking = CONTEXTS[context]
        rel = generate([p.prompt for p in probes.rel], MAX_NEW_TOKENS, False, asking)
        gen = generate([p.prompt for p in probes.gen], MAX_NEW_TOKENS, False, asking)
        rows = [
            {
                "rel": float(hits(rel[index], fact.target)),
                "gen": _mean([float(hits(answer, fact.target)) for answer in probes.gen_of(index, gen)]),
                "loc": 1.0 if probes.loc_of(index, probes.loc) else None,
                "repeats": repeats(rel[index], fact.target),
            }
            for index, fact in enumerate(facts)
        ]
        report[context] = _summary(rows, judged=False)
    return report


def _summary(rows: list[dict], judged: bool) -> dict:
    keys = ["rel", "gen", "loc"] + (["judge_rel", "judge_gen"] if judged else [])
    scores = {key: _mean([r[key] for r in rows if r[key] is not None]) for key in keys}
    present = [value for key in ("rel", "gen", "loc") if (value := scores[key]) is not None]
    scores["avg"] = sum(present) / len(present) if present else None
    scores["repetition"] = _mean([float(r["repeats"]) for r in rows])
    return scores


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
