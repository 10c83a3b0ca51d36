"""On the real SmolLM2-135M-Instruct: 10 sequential ZsRE edits are answered, unrelated prompts are not."""
from pathlib import Path

import pytest

from memoir_cli.facts import read_zsre_json
from memoir_cli.workflows import Session, edit_pack

ZSRE = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "zsre" / "zsre_dev.json"

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def zsre_pack(tmp_path_factory):
    facts = read_zsre_json(ZSRE, on_skip=lambda problem: None)[:10]
    path = tmp_path_factory.mktemp("zsre") / "pack"
    summary = edit_pack(facts, path)
    assert len(summary.results) == 10
    return facts, Session([path])


def test_at_least_9_of_10_edited_prompts_generate_their_target(zsre_pack):
    facts, session = zsre_pack
    answers = session.answer([f.prompt for f in facts], max_new_tokens=16)
    hits = [a.output.strip().startswith(f.target) for a, f in zip(answers, facts)]
    assert sum(hits) >= 9, [(f.target, a.output, a.edit_id) for a, f in zip(answers, facts)]


def test_at_least_9_of_10_unrelated_prompts_generate_exactly_what_the_base_model_does(zsre_pack):
    facts, session = zsre_pack
    answers = session.answer([f.locality[0]["prompt"] for f in facts], max_new_tokens=16, compare=True)
    same = [a.output == a.base_output for a in answers]
    assert sum(same) >= 9, [(a.prompt, a.output, a.base_output, a.overlap) for a in answers]


def test_batched_generation_gives_the_same_tokens_as_one_prompt_at_a_time(zsre_pack):
    facts, session = zsre_pack
    prompts = [text for f in facts[:4] for text in (f.prompt, f.locality[0]["prompt"])]
    batched = [a.output for a in session.answer(prompts, max_new_tokens=12, batch_size=8)]
    single = [session.answer([p], max_new_tokens=12)[0].output for p in prompts]
    assert batched == single
