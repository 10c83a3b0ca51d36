"""Protection: a new edit pays for moving the residual's output where earlier edits are read."""

import dataclasses

import pytest
import torch

from memoir_cli.config import TrainingConfig
from memoir_cli.editor import Editor
from memoir_cli.facts import Fact
from memoir_cli.memory import attach, detach
from memoir_cli.protection import Protection, layer_inputs

from .conftest import FACTS
from .helpers import empty_pack


def _protection(generator, d_ff: int = 8) -> tuple[Protection, list]:
    edits = [
        (
            [torch.randn(4, d_ff, generator=generator), torch.randn(2, d_ff, generator=generator)],
            torch.rand(d_ff, generator=generator) > 0.5,
        )
        for _ in range(3)
    ]
    protection = Protection(d_ff)
    for inputs, mask in edits:
        protection.add(inputs, mask)
    return protection, edits


def test_the_matrix_measures_the_squared_movement_of_each_earlier_edits_output_at_its_positions():
    generator = torch.Generator().manual_seed(0)
    protection, edits = _protection(generator)
    columns = torch.tensor([0, 2, 3, 6])
    change = torch.randn(3, len(columns), generator=generator)  # the new edit's change D to W_m[:, C]
    full = torch.zeros(3, 8)
    full[:, columns] = change
    expected = sum(((torch.cat(inputs) * mask) @ full.T).pow(2).sum(dim=1).mean().item() for inputs, mask in edits)
    block = protection.matrix[columns][:, columns]
    assert abs(torch.trace(change @ block @ change.T).item() - expected) < 1e-4 * expected


def test_damping_keeps_directions_no_earlier_edit_reads_and_shrinks_those_they_read():
    generator = torch.Generator().manual_seed(1)
    protection = Protection(6)
    read = torch.tensor([[1.0, 2.0, 0.0, 0.0, 0.0, 0.0]])  # one earlier edit, one position
    protection.add([read], torch.ones(6, dtype=torch.bool))
    columns = torch.arange(6)
    assert torch.allclose(protection.damping(columns, 0.0, torch.device("cpu")), torch.eye(6))
    damping = protection.damping(columns, 10.0, torch.device("cpu"))
    unread = torch.tensor([[2.0, -1.0, 0.0, 3.0, 0.5, 0.0]])  # orthogonal to what the edit reads
    assert torch.allclose(unread @ damping, unread, atol=1e-6)
    along = read / read.norm()
    assert torch.allclose(along @ damping, along / (1 + 10.0), atol=1e-6)  # one edit reads it with all its energy
    change = torch.randn(2, 6, generator=generator)
    assert (change @ damping @ read.T).norm() < (change @ read.T).norm()


def _editor(model, tokenizer, protect: float) -> Editor:
    pack = empty_pack(model, tokenizer)
    pack.manifest.training = TrainingConfig(steps=20, optimizer="adam", lr=0.05, rehearse=0, protect=protect)
    return Editor(model, tokenizer, attach(model, pack), pack)


def _earlier_outputs(editor: Editor, facts: list[Fact]) -> list[torch.Tensor]:
    """The residual's output [positions, d_out] at each earlier edit's own rows, under its mask."""
    outputs = []
    for row, fact in enumerate(facts):
        [inputs] = _inputs(editor, fact)  # a bare pack rehearses one row per fact
        mask = editor.memory.bank.rows([row])[0]
        outputs.append((inputs * mask) @ editor.memory.weight.T)
    return outputs


def _inputs(editor: Editor, fact: Fact) -> list[torch.Tensor]:
    ids = [row.ids for row in editor._rehearsal_rows(fact)]
    return layer_inputs(editor.model, editor.wrapper, ids, editor.device)


def test_a_protected_edit_moves_earlier_edits_outputs_less_and_still_fits_its_fact(model, tokenizer):
    facts = [Fact.from_json(f) for f in FACTS]
    moved, losses = {}, {}
    for protect in (0.0, 100.0):
        editor = _editor(model, tokenizer, protect)
        for fact in facts[:2]:
            editor.edit(fact)
        before = _earlier_outputs(editor, facts[:2])
        losses[protect] = editor.edit(facts[2]).loss
        after = _earlier_outputs(editor, facts[:2])
        moved[protect] = sum((a - b).norm().item() for a, b in zip(after, before))
        detach(model)
    assert moved[100.0] < 0.5 * moved[0.0]
    assert losses[100.0] < 1.05 * losses[0.0]  # and the new fact is fitted about as well


def test_without_protection_no_matrix_is_built(model, tokenizer):
    editor = _editor(model, tokenizer, 0.0)
    editor.edit(Fact.from_json(FACTS[0]))
    assert editor.protection() is None


def test_the_matrix_is_rebuilt_from_the_active_edits_when_one_is_deactivated(model, tokenizer):
    editor = _editor(model, tokenizer, 1.0)
    for record in FACTS[:2]:
        editor.edit(Fact.from_json(record))
    editor.memory.deactivate(FACTS[0]["id"])
    rebuilt = editor.protection()
    alone = Protection(editor.memory.bank.d_ff)
    alone.add(_inputs(editor, Fact.from_json(FACTS[1])), editor.memory.bank.rows([1])[0])
    assert rebuilt is not None and torch.equal(rebuilt.matrix, alone.matrix)


def test_the_protect_setting_is_stored_and_absent_means_off():
    assert TrainingConfig().protect == 0.0
    document = dataclasses.asdict(TrainingConfig(protect=0.5))
    assert TrainingConfig(**document).protect == 0.5


def _run(model, tokenizer, pack, cache, facts: list[Fact]) -> Editor:
    """One edit run on `pack` that leaves its matrix in `cache`, as `memoir edit` does."""
    editor = Editor(model, tokenizer, attach(model, pack), pack, protection_cache=cache)
    for fact in facts:
        editor.edit(fact)
    editor.save_protection()
    detach(model)
    return editor


def _summed_again(model, tokenizer, pack) -> torch.Tensor:
    editor = Editor(model, tokenizer, attach(model, pack), pack)
    try:
        protection = editor.protection()
        assert protection is not None
        return protection.matrix
    finally:
        detach(model)


def _counting_inputs(monkeypatch) -> list[int]:
    """Count the forward passes that sum protection (one per edit, or one to check the cache)."""
    import memoir_cli.editor as editor_module

    calls: list[int] = []

    def counted(*args, **kwargs):
        calls.append(1)
        return layer_inputs(*args, **kwargs)

    monkeypatch.setattr(editor_module, "layer_inputs", counted)
    return calls


def test_a_later_run_starts_from_the_matrix_the_last_one_cached_and_sums_only_its_check(
    model, tokenizer, tmp_path, monkeypatch
):
    pack = _editor(model, tokenizer, 1.0).pack
    detach(model)
    cache = tmp_path / "cache" / "protection.safetensors"
    _run(model, tokenizer, pack, cache, [Fact.from_json(f) for f in FACTS[:2]])
    assert cache.is_file()
    calls = _counting_inputs(monkeypatch)
    editor = Editor(model, tokenizer, attach(model, pack), pack, protection_cache=cache)
    cached = editor.protection()
    detach(model)
    assert len(calls) == 1  # the check of the last cached edit's inputs, not one pass per edit
    assert cached is not None and cached.edits == 2
    assert torch.equal(cached.matrix, _summed_again(model, tokenizer, pack))


def _deactivate_the_first(model, pack, cache) -> None:
    pack.memory.deactivate(FACTS[0]["id"])


def _change_the_model(model, pack, cache) -> None:
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.mul_(1.01)  # below the edit layer: every input moves


def _damage_the_file(model, pack, cache) -> None:
    cache.write_bytes(b"not a safetensors file")


@pytest.mark.parametrize(
    ("spoil", "changes_the_sum"), [(_deactivate_the_first, True), (_change_the_model, True), (_damage_the_file, False)]
)
def test_a_cache_that_no_longer_holds_is_summed_again(model, tokenizer, tmp_path, spoil, changes_the_sum):
    pack = _editor(model, tokenizer, 1.0).pack
    detach(model)
    cache = tmp_path / "protection.safetensors"
    _run(model, tokenizer, pack, cache, [Fact.from_json(f) for f in FACTS[:2]])
    stale = _summed_again(model, tokenizer, pack)
    spoil(model, pack, cache)
    editor = Editor(model, tokenizer, attach(model, pack), pack, protection_cache=cache)
    protection = editor.protection()
    detach(model)
    expected = _summed_again(model, tokenizer, pack)
    assert protection is not None and torch.equal(protection.matrix, expected)
    assert torch.equal(expected, stale) is not changes_the_sum  # so the stale cache was not used
