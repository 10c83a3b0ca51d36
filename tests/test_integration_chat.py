"""On the real SmolLM2-135M-Instruct, edited in chat mode (the default for a model with a chat
template): questions asked through the template, with and without a system prompt, and after
earlier turns, reach their edit and answer with the target; unrelated questions answer as before."""

import pytest

from memoir_cli.chat import Asking
from memoir_cli.session import Session
from memoir_cli.wild import cut, hits

SYSTEM = "You are a concise assistant. Answer in one short sentence."

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def chat_pack(zsre_pack):
    session = Session([zsre_pack.path])
    assert session.packs[0].manifest.training.chat is True
    return zsre_pack.later, session


@pytest.mark.parametrize("system", [None, SYSTEM])
def test_at_least_9_of_10_chat_answers_start_with_their_target(chat_pack, system):
    facts, session = chat_pack
    answers = session.answer([f.prompt for f in facts], max_new_tokens=24, asking=Asking(chat=True, system=system))
    assert [a.edit_id for a in answers] == [f.id for f in facts]
    good = [hits(a.output, f.target) for a, f in zip(answers, facts)]
    assert sum(good) >= 9, [(f.target, a.output) for a, f in zip(answers, facts)]


def test_at_least_9_of_10_unrelated_chat_questions_answer_as_the_base_model(chat_pack):
    facts, session = chat_pack
    questions = [f.locality[0]["prompt"] for f in facts]
    answers = session.answer(questions, max_new_tokens=24, compare=True, asking=Asking(chat=True))
    same = [cut(a.output) == cut(a.base_output or "") for a in answers]
    assert sum(same) >= 9, [(a.prompt, a.output, a.base_output, a.overlap) for a in answers]


def test_with_a_system_prompt_or_earlier_turns_each_question_reaches_its_own_edit(chat_pack):
    from memoir_cli.chat import chat_inputs, conversation

    facts, session = chat_pack
    turns = [{"role": "user", "content": "How do bees make honey?"}, {"role": "assistant", "content": "From nectar."}]
    for system, history in ((SYSTEM, []), (SYSTEM, turns)):
        inputs = chat_inputs(session.loaded.tokenizer, [conversation(f.prompt, system, history) for f in facts])
        session.loaded.model.generate(**inputs, max_new_tokens=1, do_sample=False)
        assert [r["edit_id"] for r in session.wrapper.describe_routes()] == [f.id for f in facts]


def test_the_bare_question_reaches_its_edit_by_its_own_key(chat_pack):
    facts, session = chat_pack
    answers = session.answer([f.prompt for f in facts], max_new_tokens=16)
    assert [(a.edit_id, a.overlap) for a in answers] == [(f.id, 1.0) for f in facts]
