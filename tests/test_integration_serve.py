"""`memoir serve` on the real SmolLM2-135M-Instruct with the shared ZsRE pack, through the real
`openai` client: edited questions answer with their target and name their edit, unrelated ones
answer as the base model does, streamed or not, chat or completions, whichever `model` is asked."""

import openai
import pytest

from memoir_cli.serving.catalog import STACKED
from memoir_cli.serving.server import ServeOptions
from memoir_cli.wild import cut, hits

from .serving import running

pytestmark = pytest.mark.integration

KEY = "integration-key"
SYSTEM = "You are a concise assistant. Answer in one short sentence."


@pytest.fixture(scope="module")
def served(zsre_pack):
    with running([zsre_pack.path], ServeOptions(port=0, api_key=KEY)) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)
        yield server, client, zsre_pack.later


def ask(client, model: str, question: str, system: str | None = None, stream: bool = False):
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    reply = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=24, stream=stream)
    if not stream:
        return reply.choices[0].message.content, reply.choices[0].model_extra["memoir"]
    chunks = list(reply)
    return "".join(c.choices[0].delta.content or "" for c in chunks), chunks[-1].choices[0].model_extra["memoir"]


@pytest.mark.parametrize("system", [None, SYSTEM])
def test_edited_chat_questions_answer_with_their_target_and_name_their_edit(served, system):
    _, client, facts = served
    answers = [ask(client, STACKED, f.prompt, system) for f in facts]
    assert sum(route["edit_id"] == f.id for (_, route), f in zip(answers, facts)) >= 9, answers
    assert sum(hits(text, f.target) for (text, _), f in zip(answers, facts)) >= 9, answers
    assert all(route["version"] == 2 for _, route in answers if route["routed"])


def test_streamed_chat_answers_equal_the_whole_ones(served):
    _, client, facts = served
    for fact in facts[:3]:
        assert ask(client, STACKED, fact.prompt, stream=True) == ask(client, STACKED, fact.prompt)


def test_bare_completions_reach_their_edit_streamed_or_not(served):
    _, client, facts = served
    routed = 0
    for fact in facts:
        whole = client.completions.create(model=STACKED, prompt=fact.prompt, temperature=0, max_tokens=12)
        routed += whole.choices[0].model_extra["memoir"]["edit_id"] == fact.id
    assert routed >= 9
    streamed = client.completions.create(
        model=STACKED, prompt=facts[0].prompt, temperature=0, max_tokens=12, stream=True
    )
    first = client.completions.create(model=STACKED, prompt=facts[0].prompt, temperature=0, max_tokens=12)
    assert "".join(c.choices[0].text for c in streamed) == first.choices[0].text


def test_unrelated_questions_answer_as_the_base_model(served):
    server, client, facts = served
    questions = [f.locality[0]["prompt"] for f in facts]
    edited = [ask(client, STACKED, q) for q in questions]
    base = [ask(client, server.loaded.model_id, q) for q in questions]
    assert all(route["routed"] is False for _, route in base)
    same = [cut(e) == cut(b) for (e, _), (b, _) in zip(edited, base)]
    assert sum(same) >= 9, list(zip(questions, edited, base))


def test_the_model_field_selects_the_pack_or_the_base_model(served):
    server, client, facts = served
    fact = facts[0]
    stacked = ask(client, STACKED, fact.prompt)
    assert stacked[1]["edit_id"] == fact.id
    assert ask(client, "pack", fact.prompt) == stacked  # the pack by its name: the folder's
    base_text, base_route = ask(client, server.loaded.model_id, fact.prompt)
    assert base_route["routed"] is False and not hits(base_text, fact.target)
