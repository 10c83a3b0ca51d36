"""`memoir edit --batch-size N`: several facts fitted in one optimisation, each under its own mask."""

import json

import pytest
import torch

from memoir_cli.editor import edit_batches, editing
from memoir_cli.evaluate import Probe, Scorer
from memoir_cli.facts import Fact
from memoir_cli.history import open_pack
from memoir_cli.models import LoadedModel
from memoir_cli.store import load_pack, read_record
from memoir_cli.workflows import EditOptions, edit_pack

from .conftest import FACTS
from .helpers import empty_pack, loader, ok, write_facts


def _loaded(model, tokenizer) -> LoadedModel:
    return LoadedModel(model, tokenizer, "tiny-llama", None)


@pytest.mark.parametrize("models", [("model", "tokenizer"), ("chat_model", "chat_tokenizer")])
def test_a_batch_of_one_reproduces_editing_one_fact_after_another_bit_for_bit(models, tmp_path, request):
    """Plain, and a chat pack (bare and chat rows padded apart, earlier edits rehearsed under
    their own masks)."""
    model, tokenizer = (request.getfixturevalue(name) for name in models)
    facts = [Fact.from_json(r) for r in FACTS]
    options = EditOptions(threshold=0.5, steps=4, batch_size=1)
    edit_pack(facts, tmp_path / "pack", _loaded(model, tokenizer), options)
    batched = load_pack(tmp_path / "pack")
    sequential = empty_pack(model, tokenizer, steps=4)
    assert sequential.manifest.training.pad_by_form is batched.manifest.training.pad_by_form is True
    with editing(_loaded(model, tokenizer), sequential) as editor:
        for fact in facts:
            editor.edit(fact)
    assert torch.equal(batched.memory.weight, sequential.memory.weight)
    assert torch.equal(batched.memory.bank.rows(range(3)), sequential.memory.bank.rows(range(3)))
    record = json.loads((tmp_path / "pack" / "versions" / "000001.json").read_text())
    assert record["ops"] == [["edit", f.id] for f in facts]


MOON = {"id": "f-moon", "prompt": "Everyone knows the moon is made of", "target": "green cheese"}


def test_facts_fitted_in_one_batch_are_each_answered_through_their_own_mask(model, tokenizer, tmp_path):
    facts = [Fact.from_json(r) for r in [*FACTS[:2], MOON]]
    loaded = _loaded(model, tokenizer)
    summary = edit_pack(facts, tmp_path / "pack", loaded, EditOptions(threshold=0.99, steps=40, batch_size=3))
    assert len({r.steps for r in summary.results}) == 1  # one optimisation for the three
    pack = load_pack(tmp_path / "pack")
    record = json.loads((tmp_path / "pack" / "versions" / "000001.json").read_text())
    assert record["ops"] == [["edit_batch", [f.id for f in facts]]]
    assert pack.memory.bank.ids == [f.id for f in facts]
    probes = [Probe(f.prompt, f.target) for f in facts]
    with editing(loaded, pack) as editor:
        scored = Scorer(model, tokenizer, editor.wrapper).teacher_forced(probes)
        unedited = Scorer(model, tokenizer, editor.wrapper).teacher_forced(probes, edited=False)
    assert not any(result.predicted == result.expected for result in unedited)
    for fact, result in zip(facts, scored):
        assert result.predicted == result.expected, fact.id
        assert result.route is not None and result.route["edit_id"] == fact.id


def test_facts_the_router_cannot_tell_apart_never_share_a_batch():
    def mask(*columns: int) -> torch.Tensor:
        row = torch.zeros(8, dtype=torch.bool)
        row[list(columns)] = True
        return row

    a, a_again, b, c, d = mask(0, 1), mask(0, 1), mask(2, 3), mask(4, 5), mask(6, 7)
    assert edit_batches(torch.stack([a, b, c, d]), 4, 0.5, 2) == [[0, 1, 2, 3]]
    assert edit_batches(torch.stack([a, b, c, d]), 3, 0.5, 2) == [[0, 1, 2], [3]]
    assert edit_batches(torch.stack([a, b, a_again, c]), 4, 0.5, 2) == [[0, 1], [2, 3]]  # the later one wins
    assert edit_batches(torch.stack([a, mask(0, 2)]), 4, 0.5, 2) == [[0], [1]]  # overlap 0.5: at tau
    assert edit_batches(torch.stack([a, mask(0, 2)]), 4, 0.75, 2) == [[0, 1]]


def test_a_batched_version_whose_files_are_not_kept_is_replayed_bit_identically(tmp_path, model_dir):
    pack = tmp_path / "pack"
    settings = ("--steps", 3, "--threshold", 0.99, "--batch-size", 2, "--json")
    made = ok("edit", write_facts(tmp_path / "a.jsonl", FACTS[:2]), "--pack", pack, "--model", model_dir, *settings)
    assert made["edited"] == 2 and read_record(pack, 1)["ops"] == [["edit_batch", [f["id"] for f in FACTS[:2]]]]
    first = load_pack(pack)
    ok("edit", write_facts(tmp_path / "b.jsonl", FACTS[2:]), "--pack", pack, *settings)
    ok("gc", pack, "--grace", 0, "--json")
    with pytest.raises(Exception, match="not kept"):
        load_pack(f"{pack}@1")
    replayed = open_pack(f"{pack}@1", loader(model_dir))
    assert torch.equal(replayed.memory.weight, first.memory.weight)
