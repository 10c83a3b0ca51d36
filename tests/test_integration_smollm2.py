"""On the real SmolLM2-135M-Instruct: sequential ZsRE edits are answered, unrelated prompts are not."""

import pytest

from memoir_cli.session import Session

from .helpers import ok, write_facts

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def session(zsre_pack):
    return Session([zsre_pack.path])


def test_each_edit_run_adds_a_version_with_its_facts(zsre_pack):
    assert [run["edited"] for run in zsre_pack.runs] == [20, 10]
    assert [v["edits"] for v in ok("log", zsre_pack.path, "--json")["versions"]] == [20, 30]


def test_at_least_9_of_10_edited_prompts_asked_bare_generate_their_target(zsre_pack, session):
    facts = zsre_pack.first[:10]
    answers = session.answer([f.prompt for f in facts], max_new_tokens=16)
    hits = [a.output.strip().startswith(f.target) for a, f in zip(answers, facts)]
    assert sum(hits) >= 9, [(f.target, a.output, a.edit_id) for a, f in zip(answers, facts)]


def test_at_least_9_of_10_unrelated_prompts_generate_exactly_what_the_base_model_does(zsre_pack, session):
    facts = zsre_pack.first[:10]
    answers = session.answer([f.locality[0]["prompt"] for f in facts], max_new_tokens=16, compare=True)
    same = [a.output == a.base_output for a in answers]
    assert sum(same) >= 9, [(a.prompt, a.output, a.base_output, a.overlap) for a in answers]


def test_batched_generation_gives_the_same_tokens_as_one_prompt_at_a_time(zsre_pack, session):
    prompts = [text for f in zsre_pack.first[:4] for text in (f.prompt, f.locality[0]["prompt"])]
    batched = [a.output for a in session.answer(prompts, max_new_tokens=12, batch_size=8)]
    single = [session.answer([p], max_new_tokens=12)[0].output for p in prompts]
    assert batched == single


# Edited ZsRE records whose targets are several tokens long, with eight different subjects that no other
# edited record gives another target (contested subjects are scored apart: benchmarks/zsre.py, GenC).
MULTI_TOKEN_FACTS = [f"zsre-{i}" for i in (0, 1, 2, 3, 18, 19, 102, 104)]


def test_memoir_apply_generates_each_whole_multi_token_target_batched_or_one_by_one(zsre_pack, tmp_path):
    edited = {f.id: f for f in zsre_pack.first + zsre_pack.later}
    facts = [edited[i] for i in MULTI_TOKEN_FACTS]
    prompts = write_facts(tmp_path / "prompts.jsonl", [{"prompt": f.prompt} for f in facts])

    def apply(batch_size: int) -> list[dict]:  # asked as `memoir apply` asks a chat pack by default
        options = ["--max-new-tokens", 24, "--batch-size", batch_size, "--json"]
        return ok("apply", zsre_pack.path, "--prompts", prompts, *options)

    batched = apply(8)
    assert [a["edit_id"] for a in batched] == [f.id for f in facts]
    missed = [(f.target, a["output"]) for f, a in zip(facts, batched) if not a["output"].strip().startswith(f.target)]
    assert not missed, missed
    assert [a["output"] for a in apply(1)] == [a["output"] for a in batched]


def test_the_calibrated_threshold_keeps_unrelated_questions_unrouted_bare_and_in_chat(zsre_pack, session):
    """tau is calibrated (auto, a new pack's default) on built-in prompts only; ZsRE's locality
    questions, which calibration never sees, must stay below it asked either way."""
    from memoir_cli.chat import Asking

    routing = session.packs[0].manifest.routing
    assert routing.auto and routing.calibration is not None and routing.calibration["unrelated"] >= 200
    questions = [f.locality[0]["prompt"] for f in zsre_pack.first + zsre_pack.later]
    for asking in (Asking(chat=False), Asking(chat=True)):
        answers = session.answer(questions, max_new_tokens=1, asking=asking)
        routed = [(a.prompt, a.edit_id, a.overlap) for a in answers if a.edit_id is not None]
        assert not routed, (routing.threshold, routed)
