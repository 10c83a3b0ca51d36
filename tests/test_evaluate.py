"""The metric definitions, pinned on hand-built cases (a model whose predictions we choose)."""

import math
from contextlib import contextmanager

import pytest
import torch
from torch import nn

from memoir_cli.batching import prompt_target_ids
from memoir_cli.evaluate import Probe, Scorer, evaluate, quartiles, token_accuracy
from memoir_cli.facts import Fact


class ScriptedLM(nn.Module):
    """Predicts, after each token, the token `script` names (else token 0). While `edited`,
    `edits` overrides some of those predictions, the way a routed memory would."""

    def __init__(self, vocab: int, script: dict[int, int], edits: dict[int, int] | None = None) -> None:
        super().__init__()
        self.vocab, self.script, self.edits, self.edited = vocab, script, edits or {}, True
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, **_):
        table = {**self.script, **(self.edits if self.edited else {})}
        nxt = torch.tensor([[table.get(t, 0) for t in row] for row in input_ids.tolist()])
        return type("Out", (), {"logits": nn.functional.one_hot(nxt, self.vocab).float()})()


class ScriptedWrapper:
    """Stands in for MemoirLinear: records the routing span and switches the model to base."""

    def __init__(self, model: ScriptedLM) -> None:
        self.model, self.spans = model, []
        self._routes = []

    def describe_routes(self):
        return self._routes

    @contextmanager
    def routing_from(self, mask):
        self.spans.append(mask.clone())
        self._routes = [{"pack": "p", "edit_id": "e", "overlap": 1.0}] * mask.shape[0]
        yield

    @contextmanager
    def bypassed(self):
        self.model.edited = False
        try:
            yield
        finally:
            self.model.edited = True


def test_token_accuracy_counts_matching_positions_of_a_several_token_target():
    assert token_accuracy([5, 6, 9], [5, 6, 7]) == 2 / 3
    assert token_accuracy([5, 6, 7], [5, 6, 7]) == 1.0
    assert token_accuracy([], []) == 0.0


def test_the_target_owns_the_leading_space_a_byte_level_tokenizer_merges_into_it(tokenizer):
    prompt, target = "My favourite colour has always been", "blue green"
    ids, n_prompt = prompt_target_ids(tokenizer, prompt, target)
    assert tokenizer.decode(ids[:n_prompt]) == prompt
    assert tokenizer.decode(ids[n_prompt:]) == " blue green"
    assert len(ids) - n_prompt >= 2


def test_a_prompt_token_merged_across_the_boundary_counts_as_target():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    # A BPE that merges "c", " " and "b" into one token, as some tokenizers merge across a boundary.
    vocab = {"a": 0, "b": 1, "c": 2, " ": 3, "c ": 4, "c b": 5}
    merged = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE(vocab, [("c", " "), ("c ", "b")])))
    ids, n_prompt = prompt_target_ids(merged, "abc", "b")
    assert merged.convert_ids_to_tokens(ids) == ["a", "b", "c b"]
    assert n_prompt == 2  # "c" is no longer a token of its own, so the scored token is "c b"


class _Vocab:
    """A whitespace tokenizer over a fixed word list (token = word index + 1; 0 is padding)."""

    pad_token_id = 0

    def __init__(self, words):
        self.ids = {w: i + 1 for i, w in enumerate(words)}

    def __call__(self, text):
        return {"input_ids": [self.ids[w] for w in text.split()]}


def test_reliability_scores_teacher_forced_argmax_over_the_target_tokens_and_routes_on_the_prompt():
    vocab = _Vocab(["where", "is", "it", "far", "away", "town", "a", "b"])
    v = vocab.ids
    # After "it" the model says "far", after "far" it says "town" (wrong: the target says "away"),
    # after "away" it says "town": 2 of the 3 target tokens are right.
    model = ScriptedLM(10, {v["it"]: v["far"], v["far"]: v["town"], v["away"]: v["town"]})
    wrapper = ScriptedWrapper(model)
    scorer = Scorer(model, vocab, wrapper)
    (scored,) = scorer.teacher_forced([Probe("where is it", "far away town")])
    assert scored.expected == [v["far"], v["away"], v["town"]]
    assert scored.predicted == [v["far"], v["town"], v["town"]]
    assert token_accuracy(scored.predicted, scored.expected) == 2 / 3
    assert wrapper.spans[0].tolist() == [[1, 1, 1, 0, 0, 0]]  # the target never steers routing


def test_a_probe_carries_the_mean_nll_of_its_target_tokens():
    vocab = _Vocab(["where", "is", "it", "far", "away", "town", "a", "b"])
    v = vocab.ids
    model = ScriptedLM(10, {v["it"]: v["far"], v["far"]: v["town"], v["away"]: v["town"]})
    (scored,) = Scorer(model, vocab, ScriptedWrapper(model)).teacher_forced([Probe("where is it", "far away town")])
    # One-hot logits over 10 tokens: a right token costs log(e + 9) - 1, a wrong one log(e + 9).
    right, wrong = math.log(math.e + 9) - 1, math.log(math.e + 9)
    assert scored.nll == pytest.approx((2 * right + wrong) / 3)


def test_locality_is_agreement_with_the_unedited_model_when_the_edit_changes_one_token_of_three():
    vocab = _Vocab(["who", "sang", "x", "y", "z", "w"])
    v = vocab.ids
    base = {v["sang"]: v["x"], v["x"]: v["y"], v["y"]: v["z"]}
    # The edit changes the prediction after "x" only: one answer position of three differs.
    model = ScriptedLM(10, base, edits={v["x"]: v["w"]})
    fact = Fact(
        prompt="who", target="x", id="e", locality=({"prompt": "who sang", "target": "z z z"},)
    )  # the answer's own tokens do not matter
    scorer = Scorer(model, vocab, ScriptedWrapper(model))
    report = evaluate(scorer, [fact], generate_fn=lambda prompts, n, edited, asking: ["" for _ in prompts])
    # Answer positions predict after "sang", "z", "z": base says x, 0, 0 and the edit agrees on all three...
    assert report.records[0]["loc"] == 1.0
    fact = Fact(prompt="who", target="x", id="e", locality=({"prompt": "who sang", "target": "x y z"},))
    report = evaluate(scorer, [fact], generate_fn=lambda prompts, n, edited, asking: ["" for _ in prompts])
    # ...while on "x y z" the predictions after "sang", "x", "y" are base x, y, z and edited x, w, z.
    assert report.records[0]["loc"] == 2 / 3
    assert report.scores["loc"] == 2 / 3


def test_scores_average_the_metrics_that_exist_and_overlaps_get_quartiles():
    vocab = _Vocab(["q", "a", "r"])
    v = vocab.ids
    model = ScriptedLM(5, {v["q"]: v["a"], v["r"]: v["q"]})
    facts = [Fact(prompt="q", target="a", id="e", rephrases=("r",))]
    report = evaluate(Scorer(model, vocab, ScriptedWrapper(model)), facts, lambda p, n, e, a: ["" for _ in p])
    assert report.scores == {"rel": 1.0, "gen": 0.0, "loc": None, "avg": 0.5}
    assert report.routing["rel_to_own_edit"] == 1.0 and report.routing["loc_to_no_edit"] is None
    assert quartiles([0.1, 0.2, 0.3, 0.4, 0.5]) == {"min": 0.1, "q1": 0.2, "median": 0.3, "q3": 0.4, "max": 0.5}


def test_progress_counts_every_scored_and_generated_sequence_and_ends_at_its_total():
    vocab = _Vocab(["q", "a", "r", "l", "m"])
    v = vocab.ids
    model = ScriptedLM(8, {v["q"]: v["a"]})
    facts = [
        Fact(
            prompt="q",
            target="a",
            id=f"e{i}",
            rephrases=("r",),
            locality=({"prompt": "l", "target": "m"}, {"prompt": "m"}),
        )  # the second has no answer
        for i in range(3)
    ]
    calls = []
    scorer = Scorer(model, vocab, ScriptedWrapper(model), batch_size=2)
    evaluate(
        scorer,
        facts,
        lambda prompts, n, edited, asking: ["a" for _ in prompts],
        check_generation=True,
        baseline=True,
        on_progress=lambda done, total: calls.append((done, total)),
    )
    # 3 rel + 3 gen + 6 loc twice (edited, base) + 3 loc answers generated, then the baseline's
    # 3 rel + 3 gen, then generation of 3 rel + 3 gen + 6 loc twice.
    total = 3 + 3 + 12 + 3 + 6 + 18
    assert {t for _, t in calls} == {total}
    assert calls[0][0] == 0 and calls[-1][0] == total
    assert all(a <= b for (a, _), (b, _) in zip(calls, calls[1:]))
    assert max(b - a for (a, _), (b, _) in zip(calls, calls[1:])) <= 2  # one batch at a time


def test_a_rephrasing_routed_to_a_sibling_edit_with_the_same_target_counts_as_reaching_its_answer():
    vocab = _Vocab(["q", "a", "b", "r", "s", "t"])
    model = ScriptedLM(8, {})
    # ScriptedWrapper routes every prompt to edit "e" of pack "p", whose target is "a".
    facts = [
        Fact(prompt="q", target="a", id="e", rephrases=("r",)),
        Fact(prompt="q", target="a", id="f", rephrases=("s",)),
        Fact(prompt="q", target="b", id="g", rephrases=("t",)),
    ]
    scorer = Scorer(model, vocab, ScriptedWrapper(model))
    report = evaluate(
        scorer, facts, lambda p, n, e, a: ["" for _ in p], edit_targets={("p", "e"): "a", ("p", "g"): "b"}
    )
    assert report.routing["gen_to_right_edit"] == 1 / 3  # only e's own rephrasing reaches e
    assert report.routing["gen_to_same_answer"] == 2 / 3  # f's reaches e, which also answers "a"; g's does not
    unknown = evaluate(scorer, facts, lambda p, n, e, a: ["" for _ in p])
    assert unknown.routing["gen_to_same_answer"] is None  # no targets of the pack's edits given: not guessed
