"""The editor: the fast replay equals the full procedure; only the fact's columns change."""

import pytest
import torch

from memoir_cli.config import TrainingConfig
from memoir_cli.editor import Editor, make_optimiser, target_loss
from memoir_cli.facts import Fact
from memoir_cli.memory import TrainingState, attach, detach

from .conftest import FACTS, tiny_model
from .helpers import empty_pack


def _editor(model, tokenizer, fast=True, steps=5, mixed_precision="no", **options):
    pack = empty_pack(model, tokenizer, **options)
    pack.manifest.training = TrainingConfig(steps=steps, mixed_precision=mixed_precision)
    editor = Editor(model, tokenizer, attach(model, pack), pack, fast=fast)
    return editor, pack


@pytest.mark.parametrize("architecture", ["llama", "gemma3_text", "qwen2", "mistral", "phi3"])
def test_fast_replay_gives_the_same_loss_and_gradient_as_the_full_model(architecture, tokenizer):
    model = tiny_model(architecture, tokenizer)
    editor, pack = _editor(model, tokenizer, layer=1)  # replays blocks 1-3: sliding and global for Gemma 3
    fact = Fact.from_json(FACTS[2])
    [group] = editor.training_batch([fact])  # every row padded together
    batch, labels = group.batch, group.labels
    columns = editor.mask_for(fact.prompt).nonzero().squeeze(1)
    grads = []
    for loss_fn in (editor._replay_loss(batch, labels), editor._full_loss(batch, labels)):
        start = torch.randn(64, len(columns), generator=torch.Generator().manual_seed(0))
        weight = start.requires_grad_(True)
        with editor.wrapper.fitting(TrainingState(columns, weight)):
            loss = loss_fn()
            loss.backward()
        grads.append((loss.item(), weight.grad.clone()))
    (fast_loss, fast_grad), (full_loss, full_grad) = grads
    assert abs(fast_loss - full_loss) < 1e-5
    assert torch.allclose(fast_grad, full_grad, atol=1e-6)


def test_in_bf16_the_replay_still_follows_the_full_model_and_trains_in_float32(model, tokenizer):
    editor, _ = _editor(model, tokenizer, mixed_precision="bf16")
    fact = Fact.from_json(FACTS[2])
    [group] = editor.training_batch([fact])
    columns = editor.mask_for(fact.prompt).nonzero().squeeze(1)
    results = []
    for loss_fn in (editor._replay_loss(group.batch, group.labels), editor._full_loss(group.batch, group.labels)):
        weight = torch.randn(64, len(columns), generator=torch.Generator().manual_seed(0)).requires_grad_(True)
        with editor.wrapper.fitting(TrainingState(columns, weight)):
            loss = loss_fn()
            loss.backward()
        assert loss.dtype == weight.grad.dtype == torch.float32
        results.append((loss.item(), weight.grad.flatten()))
    with editor.wrapper.fitting(TrainingState(columns, weight)), torch.no_grad():
        float32_loss = target_loss(model(**group.batch).logits, group.labels).item()
    editor.bf16_weights = lambda module: {}  # autocast casting the weights at every step instead
    weight.grad = None
    with editor.wrapper.fitting(TrainingState(columns, weight)):
        loss = editor._replay_loss(group.batch, group.labels)()
        loss.backward()
    assert loss.item() == results[0][0] and torch.equal(weight.grad.flatten(), results[0][1])  # the same bits
    (fast_loss, fast_grad), (full_loss, full_grad) = results
    assert abs(fast_loss - full_loss) < 1e-2 * full_loss
    assert torch.nn.functional.cosine_similarity(fast_grad, full_grad, dim=0) > 0.99
    assert fast_loss != float32_loss and abs(fast_loss - float32_loss) < 0.05 * float32_loss  # bf16, and close


def test_a_bf16_edit_fits_its_fact_the_same_way_twice_and_leaves_the_base_model_in_float32(model, tokenizer):
    unrelated = tokenizer("zz qq", return_tensors="pt")
    before = model(**unrelated).logits
    memories = []
    for _ in range(2):
        editor, pack = _editor(model, tokenizer, steps=30, mixed_precision="bf16")
        fact = Fact.from_json(FACTS[0])
        [group] = editor.training_batch([fact])
        result = editor.edit(fact)
        assert result.loss < 0.9 * _unedited_loss(model, group.batch, group.labels, editor)
        assert pack.memory.weight.dtype == torch.float32
        memories.append(pack.memory.weight.clone())
        with editor.wrapper.bypassed():
            assert torch.equal(model(**unrelated).logits, before)  # the autocast ends with the edit
        detach(model)
    assert torch.equal(*memories)  # a replayed version computes the same memory


def test_training_batch_labels_only_the_target_tokens(model, tokenizer):
    editor, _ = _editor(model, tokenizer)
    fact = Fact.from_json(FACTS[1])
    [group] = editor.training_batch([fact])  # every row padded together
    batch, labels = group.batch, group.labels
    assert batch["input_ids"].shape[0] == 1 + len(editor.prefixes) == 11
    target_ids = tokenizer(f"{fact.prompt} {fact.target}")["input_ids"][len(tokenizer(fact.prompt)["input_ids"]) :]
    for row in range(11):
        assert labels[row][labels[row] != -100].tolist() == target_ids
    assert (labels[batch["attention_mask"] == 0] == -100).all()


def test_editing_changes_only_the_columns_of_the_facts_mask_and_lowers_the_loss(model, tokenizer):
    editor, pack = _editor(model, tokenizer, steps=30)
    fact = Fact.from_json(FACTS[0])
    mask = editor.mask_for(fact.prompt)
    [group] = editor.training_batch([fact])  # every row padded together
    batch, labels = group.batch, group.labels
    result = editor.edit(fact)
    changed = (pack.memory.weight != 0).any(dim=0)
    assert changed.any() and not changed[~mask].any()
    assert torch.equal(pack.memory.bank.rows([0])[0], mask) and pack.memory.bank.ids == [fact.id]
    assert result.steps == 30 and result.loss < 0.9 * _unedited_loss(model, batch, labels, editor)


def _unedited_loss(model, batch, labels, editor):
    with editor.wrapper.bypassed():
        return target_loss(model(**batch).logits, labels).item()


def test_early_stop_when_the_loss_is_low_and_flat(model, tokenizer):
    editor, _ = _editor(model, tokenizer, steps=200)
    editor.pack.manifest.training = TrainingConfig(steps=200, stop_loss=100.0, stop_delta=100.0)
    result = editor.edit(Fact.from_json(FACTS[0]))
    assert result.converged and result.steps == 2


def test_a_pack_made_before_adam_keeps_the_papers_sgd_and_adam_uses_the_large_epsilon():
    made_before = {"steps": 30, "lr": 16.0, "weight_decay": 1e-5, "clip": 1.0, "stop_loss": 0.02, "stop_delta": 1e-4}
    weight = torch.zeros(2, 2, requires_grad=True)
    assert isinstance(make_optimiser(TrainingConfig(**made_before), weight), torch.optim.SGD)
    adam = make_optimiser(TrainingConfig(**made_before, optimizer="adam"), weight)
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["eps"] == 1e-3  # small-gradient columns stay still


def test_neighbours_are_the_most_overlapping_earlier_active_edits_above_the_floor(model, tokenizer):
    editor, pack = _editor(model, tokenizer, steps=1)
    for record in FACTS:
        editor.edit(Fact.from_json(record))
    query = editor.mask_for("The capital of the Republic of Zorbia was")
    overlaps = pack.memory.overlaps(query.unsqueeze(0))[0]
    ranked = overlaps.argsort(descending=True).tolist()
    assert editor.neighbours(query) == ranked  # the default floor 0.0: every earlier edit, most similar first
    pack.manifest.training = TrainingConfig(rehearse_overlap=None)  # floor: the routing threshold
    pack.manifest.routing.threshold = overlaps.max().item()
    assert editor.neighbours(query) == [ranked[0]]
    pack.memory.bank.active[ranked[0]] = False
    assert editor.neighbours(query) == []
    pack.manifest.training = TrainingConfig(rehearse=1)
    assert editor.neighbours(query) == [ranked[1]]
    pack.manifest.training = TrainingConfig(rehearse=0)
    assert editor.neighbours(query) == []


def test_rehearsal_matches_between_fast_and_full_and_leaves_the_facts_own_rows_alone(model, tokenizer):
    editor, pack = _editor(model, tokenizer, steps=3)
    editor.edit(Fact.from_json(FACTS[0]))
    pack.memory.weight *= 20  # an earlier edit with real weight behind it
    fact = Fact.from_json({"prompt": "The capital of the Republic of Zorbia was", "target": "Rome"})
    mask = editor.mask_for(fact.prompt)
    columns = mask.nonzero().squeeze(1)
    [group] = editor.training_batch([fact], [pack.facts[0]])  # every row padded together
    batch, labels = group.batch, group.labels
    assert batch["input_ids"].shape[0] == 12
    frozen = pack.memory.weight.clone()
    frozen[:, columns] = 0
    row_masks = torch.cat([mask.expand(11, -1), pack.memory.bank.rows([0])])
    weight = (torch.randn(64, len(columns), generator=torch.Generator().manual_seed(0)) * 0.1).requires_grad_(True)
    with editor.wrapper.fitting(TrainingState(columns, weight, row_masks, frozen)):
        rehearsed_logits = model(**batch).logits
        fast, full = editor._replay_loss(batch, labels)(), editor._full_loss(batch, labels)()
    with editor.wrapper.fitting(TrainingState(columns, weight)):
        plain_logits = model(**batch).logits
    assert torch.allclose(fast, full, atol=1e-5)
    assert torch.equal(rehearsed_logits[:11], plain_logits[:11])
    assert not torch.allclose(rehearsed_logits[11], plain_logits[11])
