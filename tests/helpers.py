"""Building packs on tiny models inside a test, without the CLI."""

from __future__ import annotations

import torch

from memoir_cli.config import TrainingConfig
from memoir_cli.editor import editing
from memoir_cli.facts import Fact
from memoir_cli.models import LoadedModel
from memoir_cli.pack import Pack
from memoir_cli.workflows import EditOptions, create_pack


def empty_pack(model, tokenizer, threshold: float = 0.5, **options) -> Pack:
    return create_pack(LoadedModel(model, tokenizer, "tiny-llama", None), EditOptions(threshold=threshold, **options))


def edited_pack(model, tokenizer, facts: list[dict], steps: int = 5, threshold: float = 0.5, **options) -> Pack:
    """A pack holding `facts`, fitted for a few steps (enough to change the model's outputs)."""
    pack = empty_pack(model, tokenizer, threshold, **options)
    made = pack.manifest.training
    pack.manifest.training = TrainingConfig(
        steps=steps,
        chat=made.chat,
        end_answer=made.end_answer,
        rehearse_chat=made.rehearse_chat,
        pad_by_form=made.pad_by_form,
    )
    with editing(LoadedModel(model, tokenizer, "tiny-llama", None), pack) as editor:
        for record in facts:
            editor.edit(Fact.from_json(record))
    return pack


def training_rows(groups) -> list[tuple[list[int], list[int]]]:
    """An edit's training rows (Editor.training_batch's groups), in row order, padding removed:
    (tokens, labels) each."""
    rows = {}
    for group in groups:
        for number, ids, labels, real in zip(
            group.rows, group.batch["input_ids"], group.labels, group.batch["attention_mask"].bool()
        ):
            rows[number] = (ids[real].tolist(), labels[real].tolist())
    return [rows[number] for number in sorted(rows)]


def loader(model_dir):
    """A history model loader that hands out one tiny model loaded from `model_dir`."""
    from memoir_cli.models import load_model

    loaded = load_model(str(model_dir))
    return lambda _pack: loaded


def save_pack(pack: Pack, path) -> int:
    """Commit `pack` as the next version at `path`, as an edit run would."""
    from memoir_cli.history import edit_record
    from memoir_cli.store import commit

    return commit(pack, path, edit_record("edit", None, [["edit", f.id] for f in pack.facts], pack.facts))


def overwrite_edit(path, edit_id: str) -> None:
    """What many later edits sharing its columns can do to an edit, at once: its columns of the
    memory zeroed, committed as the pack's next version."""
    from memoir_cli.history import edit_record
    from memoir_cli.store import commit, load_pack

    state = load_pack(path)
    mask = state.memory.bank.rows([state.memory.bank.row_of(edit_id)])[0]
    state.memory.weight[:, mask] = 0.0
    commit(state, path, edit_record("edit", "columns overwritten", [], []))


def tree(path) -> dict[str, bytes]:
    """Every file under `path` (relative name -> bytes): to prove a command left a pack alone."""
    from pathlib import Path

    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(Path(path).rglob("*")) if p.is_file()}


def logits(model, tokenizer, prompts: list[str]) -> torch.Tensor:
    from memoir_cli.batching import encode_left_padded

    with torch.no_grad():
        return model(**encode_left_padded(tokenizer, prompts, torch.device("cpu"))).logits


def run(*args):
    """`memoir ARGS...` in this process (typer's runner): exit code, stdout and stderr apart."""
    from typer.testing import CliRunner

    from memoir_cli.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def ok(*args):
    """`memoir ARGS...` that must succeed: its JSON with --json, else the result."""
    import json

    result = run(*args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout) if "--json" in args else result


def write_facts(path, records: list[dict]):
    """A facts JSONL file of `records`."""
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path
