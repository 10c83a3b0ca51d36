"""The WILD protocol: cutting and normalising answers, repetition, the judge client, memoir eval."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from memoir_cli.evaluate import ProbeSet
from memoir_cli.facts import Fact
from memoir_cli.wild import Judge, JudgeError, cut, hits, normalise, repeats, same_answer, unedited

from .conftest import FACTS
from .helpers import ok, run, write_facts


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (" Paris. It is the capital.", "Paris"),
        ("Paris\nThe capital", "Paris"),
        ("Paris is the capital of Zorbia", "Paris is the capital of Zorbia"),
        ("St. Louis, Missouri. Yes.", "St. Louis, Missouri"),  # the target's own period is not a cut
        ("", ""),
    ],
)
def test_an_answer_is_cut_at_its_first_period_or_newline(answer, expected):
    target = "St. Louis" if answer.startswith("St.") else "Paris"
    assert cut(answer, target) == expected


def test_normalising_drops_case_punctuation_articles_and_extra_spaces():
    assert normalise("  The  University of   MICHIGAN, (Ann Arbor)!") == "university of michigan ann arbor"
    assert normalise("an apple a day") == "apple day"


@pytest.mark.parametrize(
    ("answer", "target", "counts"),
    [
        ("The University of Michigan.", "University of Michigan", True),
        ("university of michigan, in Ann Arbor", "University of Michigan", True),
        ("He went to the University of Michigan.", "University of Michigan", False),  # must start with it
        ("Paris\nParis", "Paris", True),
        ("Par", "Paris", False),
        ("anything", "   ", False),  # an empty target never counts
    ],
)
def test_an_answer_counts_when_its_cut_normalised_text_starts_with_the_target(answer, target, counts):
    assert hits(answer, target) is counts


def test_locality_compares_the_cut_answers():
    assert same_answer("Bees make honey. More text", "Bees make honey. Other text")
    assert not same_answer("Bees make jam.", "Bees make honey.")


def test_repetition_is_the_target_occurring_twice_or_more():
    assert repeats("FC Porto FC FC FC Porto FC Porto", "FC Porto")
    assert repeats("The L Word L Word L Word", "The L Word")  # articles are not part of the match
    assert repeats("Pittsburgh Province Province Province Pittsburgh", "Pittsburgh")
    assert repeats("Paris Paris", "Paris")  # two in a row share the space between them
    assert not repeats("Pittsburgh, Pennsylvania", "Pittsburgh")
    assert not repeats("Portugal", "Porto")  # whole words only


def test_the_unedited_models_wild_scores_come_from_its_own_answers_in_each_context():
    facts = [
        Fact("The capital of France is", "Paris", rephrases=("France's capital is",), locality=({"prompt": "Hi"},)),
        Fact("The capital of Zorbia is", "Zorbton", rephrases=("Zorbia's capital is",)),
    ]
    asked = []

    def generate(prompts, max_new_tokens, edited, asking):
        asked.append((edited, asking.chat, max_new_tokens))
        return ["Paris. Paris is lovely." if "France" in p else "I do not know." for p in prompts]

    report = unedited(facts, ProbeSet.of(facts), generate, ["question", "chat"])
    assert set(report) == {"question", "chat"}
    for scores in report.values():
        assert (scores["rel"], scores["gen"], scores["loc"], scores["repetition"]) == (0.5, 0.5, 1.0, 0.5)
    assert {edited for edited, _, _ in asked} == {False}  # never the edited model
    assert {chat for _, chat, _ in asked} == {False, True} and {n for _, _, n in asked} == {50}


class FakeJudge:
    """A local OpenAI-compatible endpoint whose replies the test chooses."""

    def __init__(self, reply):
        self.reply, self.requests = reply, []
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                judge.requests.append((self.path, self.headers.get("Authorization"), body))
                status, payload = judge.reply(body)
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def completion(text):
    return 200, {"choices": [{"message": {"role": "assistant", "content": text}}]}


def yes_when_stated(body):
    prompt = body["messages"][-1]["content"]
    expected = prompt.split("Expected answer: ")[1].split("\n")[0]
    answer = prompt.split("Model answer: ")[1].split("\n")[0]
    return completion("YES" if expected.lower() in answer.lower() else "no.")


def test_the_judge_asks_a_chat_completion_and_reads_yes_or_no():
    with FakeJudge(yes_when_stated) as fake:
        judge = Judge(fake.url, "grader", api_key="k")
        assert judge.states("Where?", "It is Paris", "Paris") is True
        assert judge.states("Where?", "It is Rome", "Paris") is False
    path, authorization, body = fake.requests[0]
    assert path == "/v1/chat/completions" and authorization == "Bearer k"
    assert body["model"] == "grader" and body["temperature"] == 0


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (lambda body: completion("Perhaps, it depends"), "expected YES or NO"),
        (lambda body: (200, "<html>not json</html>"), "not JSON"),
        (lambda body: (200, {"id": "x"}), "not a chat completion"),
        (lambda body: (500, {"error": {"message": "boom"}}), "HTTP 500"),
    ],
)
def test_a_judge_that_answers_garbage_is_an_error_not_a_score(reply, message):
    with FakeJudge(reply) as fake, pytest.raises(JudgeError, match=message):
        Judge(fake.url).states("Where?", "Paris", "Paris")


def test_a_judge_that_is_down_is_an_error_naming_it():
    with FakeJudge(yes_when_stated) as fake:
        url = fake.url
    with pytest.raises(JudgeError, match=f"judge {url}: cannot reach it"):
        Judge(url, timeout=5).states("Where?", "Paris", "Paris")


@pytest.fixture
def chat_pack(tmp_path, chat_model_dir):
    pack = tmp_path / "pack"
    records = [
        dict(f, rephrases=[f["prompt"].lower()], locality=[{"prompt": "How do bees make honey?"}]) for f in FACTS
    ]
    ok("edit", write_facts(tmp_path / "f.jsonl", records), "--pack", pack, "--model", chat_model_dir, "--steps", 2)
    return pack


def test_eval_wild_scores_both_contexts_and_keeps_every_answer(chat_pack, tmp_path):
    out = tmp_path / "report.json"
    summary = ok("eval", chat_pack, "--protocol", "wild", "--context", "both", "--out", out, "--json")
    assert set(summary["wild"]) == {"question", "chat"}
    for scores in summary["wild"].values():
        assert {"rel", "gen", "loc", "avg", "repetition"} <= set(scores)
        assert all(0.0 <= scores[key] <= 1.0 for key in ("rel", "gen", "loc", "repetition"))
    assert "rel" in summary["scores"]  # the paper's teacher-forced scores stay beside them
    record = json.loads(out.read_text())["per_record"][0]["wild"]["chat"]
    assert isinstance(record["answer"], str) and len(record["rephrase_answers"]) == 1
    assert set(record["locality_answers"][0]) == {"edited", "base"}
    assert record["rel"] == float(hits(record["answer"], FACTS[0]["target"]))


def test_eval_wild_with_a_judge_reports_its_verdicts_and_fails_cleanly_when_it_is_down(chat_pack):
    with FakeJudge(yes_when_stated) as fake:
        summary = ok("eval", chat_pack, "--protocol", "wild", "--judge", fake.url, "--json")
        assert {"judge_rel", "judge_gen"} <= set(summary["wild"]["question"])
        assert len(fake.requests) == 2 * len(FACTS)
        url = fake.url
    result = run("eval", chat_pack, "--protocol", "wild", "--judge", url)
    assert result.exit_code == 7 and f"judge {url}: cannot reach it" in result.stderr


def test_eval_wild_with_baseline_scores_the_unedited_model_in_each_context(chat_pack):
    summary = ok("eval", chat_pack, "--protocol", "wild", "--context", "both", "--baseline", "--json")
    assert set(summary["wild_baseline"]) == {"question", "chat"}
    assert all(scores["loc"] == 1.0 for scores in summary["wild_baseline"].values())
    table = run("eval", chat_pack, "--protocol", "wild", "--baseline")
    assert table.exit_code == 0 and "unedited, WILD, question" in table.stdout


def test_wild_options_without_the_wild_protocol_are_refused(chat_pack):
    result = run("eval", chat_pack, "--context", "chat")
    assert result.exit_code == 2 and "add --protocol wild" in result.stderr
