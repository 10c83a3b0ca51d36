"""`memoir serve` on a tiny chat model: the OpenAI API through the real `openai` client, the
`model` field, errors in OpenAI's shape, keys, batching and cancellation, hot reload, draining."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from pathlib import Path

import openai
import pytest

from memoir_cli.serving.app import Limits
from memoir_cli.serving.catalog import STACKED, Lineup
from memoir_cli.serving.engine import Engine, Job, Prompt, QueueFullError, Sampling
from memoir_cli.serving.server import ServeOptions
from memoir_cli.session import open_packs
from memoir_cli.store import read_manifest

from .conftest import FACTS
from .helpers import ok, write_facts
from .serving import request, running, serve_process

KEY = "test-key"
NEW_FACT = {"id": "f-tea", "prompt": "Which drink does the lighthouse keeper prefer?", "target": "green tea"}


def chat(question: str, system: str | None = None) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]


@pytest.fixture(scope="module")
def pack(tmp_path_factory, chat_model_dir) -> Path:
    folder = tmp_path_factory.mktemp("serve")
    ok(
        "edit",
        write_facts(folder / "f.jsonl", FACTS),
        "--pack",
        folder / "pack",
        "--model",
        chat_model_dir,
        "--steps",
        2,
    )
    return folder / "pack"


@pytest.fixture(scope="module")
def server(pack):
    with running([pack], ServeOptions(port=0, api_key=KEY, max_batch=4, limits=Limits(max_body_bytes=64_000))) as s:
        yield s


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)


def test_models_lists_the_stacked_packs_each_pack_and_the_base_model(client, server):
    ids = [m.id for m in client.models.list()]
    assert ids == [STACKED, "pack", server.loaded.model_id]


def test_a_chat_question_reaches_its_edit_and_the_choice_says_so(client):
    reply = client.chat.completions.create(
        model=STACKED, messages=chat(FACTS[2]["prompt"]), temperature=0, max_tokens=4
    )
    route = reply.choices[0].model_extra["memoir"]
    assert route == {"pack": "pack", "version": 1, "edit_id": FACTS[2]["id"], "overlap": 1.0, "routed": True}
    assert reply.usage.completion_tokens == 4 and reply.choices[0].finish_reason == "length"


def test_streamed_and_whole_answers_agree_for_chat_and_completions(client):
    whole = client.chat.completions.create(
        model=STACKED, messages=chat(FACTS[0]["prompt"]), temperature=0, max_tokens=12
    )
    chunks = list(
        client.chat.completions.create(
            model=STACKED, messages=chat(FACTS[0]["prompt"]), temperature=0, max_tokens=12, stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    last = chunks[-1].choices[0]
    assert last.finish_reason == whole.choices[0].finish_reason
    assert last.model_extra["memoir"] == whole.choices[0].model_extra["memoir"]

    text = client.completions.create(model=STACKED, prompt=FACTS[1]["prompt"], temperature=0, max_tokens=10)
    streamed = list(
        client.completions.create(model=STACKED, prompt=FACTS[1]["prompt"], temperature=0, max_tokens=10, stream=True)
    )
    assert "".join(c.choices[0].text for c in streamed) == text.choices[0].text
    assert streamed[-1].choices[0].model_extra["memoir"] == text.choices[0].model_extra["memoir"]
    assert text.choices[0].model_extra["memoir"]["edit_id"] == FACTS[1]["id"]  # the bare question is a key too
    ended = text.choices[0].finish_reason == "stop"  # the trained end after the answer, or the length limit
    assert (text.usage.completion_tokens < 10) == ended and text.usage.completion_tokens <= 10


def test_streamed_usage_comes_last_when_asked(client):
    chunks = list(
        client.chat.completions.create(
            model=STACKED,
            messages=chat("Hello there"),
            temperature=0,
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 5


def test_the_model_field_selects_all_packs_one_pack_or_the_base_model(client, server):
    def ask(model: str, question: str):
        reply = client.chat.completions.create(model=model, messages=chat(question), temperature=0, max_tokens=8)
        return reply.choices[0].message.content, reply.choices[0].model_extra["memoir"]

    edited, route = ask(STACKED, FACTS[2]["prompt"])
    assert route["edit_id"] == FACTS[2]["id"]
    assert ask("pack", FACTS[2]["prompt"]) == (edited, route)
    base_answer, base_route = ask(server.loaded.model_id, FACTS[2]["prompt"])
    assert base_route["routed"] is False and base_route["pack"] is None
    assert base_answer != edited  # the edit changes what the model says
    unrelated = "How do bees make honey?"
    stacked_answer, stacked_route = ask(STACKED, unrelated)
    assert stacked_route["routed"] is False
    assert stacked_answer == ask(server.loaded.model_id, unrelated)[0]  # an unrouted question: the base answer


def test_seeded_samples_repeat_and_n_gives_that_many_choices(client):
    def sample():
        reply = client.chat.completions.create(
            model=STACKED, messages=chat("Tell me a story"), temperature=1.0, top_p=0.9, seed=7, n=3, max_tokens=6
        )
        return [c.message.content for c in reply.choices]

    first = sample()
    assert len(first) == 3 and sample() == first


def test_a_stop_string_ends_the_answer_before_it(client):
    full = client.completions.create(model=STACKED, prompt="The", temperature=0, max_tokens=20).choices[0].text
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert stop.strip(), full
    cut = client.completions.create(model=STACKED, prompt="The", temperature=0, max_tokens=20, stop=[stop])
    assert cut.choices[0].text == full[: full.index(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model=STACKED, prompt="The", temperature=0, max_tokens=20, stop=stop, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == cut.choices[0].text


GOOD = {"model": STACKED, "messages": chat("Hello"), "max_tokens": 2, "temperature": 0}
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
BAD_REQUESTS = [
    # (path, body or raw bytes, key, expected status)
    (CHAT, b"{not json", KEY, 400),
    (CHAT, b"", KEY, 400),
    (CHAT, b"[1, 2]", KEY, 400),
    (CHAT, b"\xff\xfe\x00", KEY, 400),
    (CHAT, b"null", KEY, 400),
    (CHAT, {"model": STACKED}, KEY, 400),
    (CHAT, dict(GOOD, messages=[]), KEY, 400),
    (CHAT, dict(GOOD, messages="hello"), KEY, 400),
    (CHAT, dict(GOOD, messages=[{"role": "wizard", "content": "hi"}]), KEY, 400),
    (CHAT, dict(GOOD, messages=[{"role": "tool", "content": "hi"}]), KEY, 400),
    (CHAT, dict(GOOD, messages=[{"content": "hi"}]), KEY, 400),
    (CHAT, dict(GOOD, messages=[{"role": "user", "content": 42}]), KEY, 400),
    (CHAT, dict(GOOD, messages=[{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]), KEY, 400),
    (CHAT, dict(GOOD, messages=[{"role": "user", "content": "   "}]), KEY, 400),
    (CHAT, dict(GOOD, messages=[{"role": "system", "content": "Be brief."}]), KEY, 400),
    (CHAT, dict(GOOD, messages=chat("hi") + [{"role": "assistant", "content": "hello"}]), KEY, 400),
    (CHAT, dict(GOOD, max_tokens=-1), KEY, 400),
    (CHAT, dict(GOOD, max_tokens=0), KEY, 400),
    (CHAT, dict(GOOD, max_tokens=10**12), KEY, 400),
    (CHAT, dict(GOOD, max_tokens="5"), KEY, 400),
    (CHAT, dict(GOOD, max_tokens=2.5), KEY, 400),
    (CHAT, dict(GOOD, max_completion_tokens=-3), KEY, 400),
    (CHAT, dict(GOOD, temperature="hot"), KEY, 400),
    (CHAT, dict(GOOD, temperature=-1), KEY, 400),
    (CHAT, dict(GOOD, temperature=9), KEY, 400),
    (CHAT, dict(GOOD, top_p=0), KEY, 400),
    (CHAT, dict(GOOD, top_p=1.5), KEY, 400),
    (CHAT, dict(GOOD, n=0), KEY, 400),
    (CHAT, dict(GOOD, n=5), KEY, 400),  # over the server's --max-batch 4
    (CHAT, dict(GOOD, n=True), KEY, 400),
    (CHAT, dict(GOOD, stream="yes"), KEY, 400),
    (CHAT, dict(GOOD, stop=["a", "b", "c", "d", "e"]), KEY, 400),
    (CHAT, dict(GOOD, stop=[""]), KEY, 400),
    (CHAT, dict(GOOD, stop=7), KEY, 400),
    (CHAT, dict(GOOD, seed="seven"), KEY, 400),
    (CHAT, dict(GOOD, model="no-such-model"), KEY, 404),
    (CHAT, dict(GOOD, model=12), KEY, 400),
    (CHAT, dict(GOOD, messages=chat("word " * 400)), KEY, 400),  # longer than the model's context
    (CHAT, GOOD, None, 401),
    (CHAT, GOOD, "wrong-key", 401),
    (CHAT, GOOD, KEY + "x", 401),
    (CHAT, b"{" + b" " * 70_000 + b"}", KEY, 413),
    (COMPLETIONS, {"model": STACKED}, KEY, 400),
    (COMPLETIONS, {"prompt": ""}, KEY, 400),
    (COMPLETIONS, {"prompt": []}, KEY, 400),
    (COMPLETIONS, {"prompt": [1, 2, 3]}, KEY, 400),
    (COMPLETIONS, {"prompt": "hi", "max_tokens": -5}, KEY, 400),
    (COMPLETIONS, {"prompt": "hi", "model": "gpt-4"}, KEY, 404),
    (COMPLETIONS, {"prompt": "hi"}, None, 401),
    ("/v1/models", None, None, 401),
    ("/v1/load_pack", {"name": "x", "path": "/no/such/pack"}, KEY, 400),
    ("/v1/load_pack", {"name": STACKED, "path": "/no/such/pack"}, KEY, 400),
    ("/v1/load_pack", {"name": 3}, KEY, 400),
    ("/v1/unload_pack", {"name": "never-loaded"}, KEY, 404),
    ("/v1/unload_pack", {"name": "pack"}, None, 401),
    ("/v1/embeddings", {"input": "hi"}, KEY, 404),
]


@pytest.mark.parametrize(("path", "body", "key", "status"), BAD_REQUESTS)
def test_a_bad_request_gets_its_4xx_in_openais_error_shape(server, path, body, key, status):
    method = "GET" if body is None else "POST"
    got, answer, headers = request(server.url, method, path, body, key=key)
    assert got == status, answer
    assert set(answer["error"]) == {"message", "type", "param", "code"} and answer["error"]["message"]
    assert "Traceback" not in json.dumps(answer)


def test_after_bad_requests_the_server_is_healthy_and_answers(server, client):
    for path, body, key, _ in BAD_REQUESTS:
        request(server.url, "GET" if body is None else "POST", path, body, key=key)
    status, health, _ = request(server.url, "GET", "/health")
    assert status == 200 and health["status"] == "ok"
    assert client.chat.completions.create(**GOOD).choices[0].finish_reason == "length"


def test_health_needs_no_key_and_metrics_count_requests_and_routed_rows(server, client):
    assert request(server.url, "GET", "/health")[0] == 200
    assert request(server.url, "GET", "/ready")[0] == 401
    client.chat.completions.create(model=STACKED, messages=chat(FACTS[2]["prompt"]), temperature=0, max_tokens=2)
    status, ready, _ = request(server.url, "GET", "/ready", key=KEY)
    assert status == 200 and ready["ready"] is True and ready["packs"] == {"pack": 1}
    status, text, _ = request(server.url, "GET", "/metrics", key=KEY)
    assert status == 200
    assert 'memoir_rows_total{routed="true"}' in text and 'memoir_pack_version{pack="pack"} 1.0' in text
    assert 'memoir_requests_total{endpoint="/v1/chat/completions",status="200"}' in text
    assert "memoir_completion_tokens_total" in text and "memoir_request_seconds_bucket" in text
    request(server.url, "GET", "/no/such/path/12345")
    text = request(server.url, "GET", "/metrics", key=KEY)[1]
    assert "/no/such/path" not in text and 'endpoint="other"' in text  # unknown paths share one label


def test_while_draining_new_requests_get_503_and_ready_says_so(server):
    server.app.state.draining = True
    try:
        status, answer, headers = request(server.url, "POST", CHAT, GOOD, key=KEY)
        assert status == 503 and answer["error"]["code"] == "draining" and headers["retry-after"] == "5"
        assert request(server.url, "GET", "/ready", key=KEY)[0] == 503
        assert request(server.url, "GET", "/health")[1]["draining"] is True
    finally:
        server.app.state.draining = False


def test_a_full_queue_is_answered_429_with_retry_after(server, client, monkeypatch):
    def full(job):
        raise QueueFullError("the queue is full (64 rows)")

    monkeypatch.setattr(server.engine, "submit", full)
    status, answer, headers = request(server.url, "POST", CHAT, GOOD, key=KEY)
    assert status == 429 and headers["retry-after"] == "1" and answer["error"]["code"] == "queue_full"


def _engine(chat_model_dir, pack, **options) -> Engine:
    packs, loaded = open_packs([pack], str(chat_model_dir))
    return Engine(loaded, Lineup.of(loaded.model_id, packs), **options)


def test_the_queue_is_bounded_in_rows(chat_model_dir, pack):
    engine = _engine(chat_model_dir, pack, max_queue=3)  # not started: nothing leaves the queue
    prompt = Prompt([1, 2, 3], [1, 1, 1])
    engine.submit(Job(prompt, STACKED, Sampling(0), 4, n=2))
    with pytest.raises(QueueFullError):
        engine.submit(Job(prompt, STACKED, Sampling(0), 4, n=2))
    engine.submit(Job(prompt, STACKED, Sampling(0), 4, n=1))
    assert engine.queued_rows == 3


def test_compatible_requests_share_one_batch_and_a_cancelled_one_costs_nothing(chat_model_dir, pack):
    batches: list[list] = []
    engine = _engine(chat_model_dir, pack, max_batch=8, on_batch=batches.append)
    prompt = engine.encode(lambda tokenizer: Prompt.chat(tokenizer, chat(FACTS[2]["prompt"])))
    jobs = [Job(prompt, STACKED, Sampling(0), 30) for _ in range(3)]
    gone = Job(prompt, STACKED, Sampling(0), 30)
    other = Job(prompt, STACKED, Sampling(0.7, seed=1), 30)  # another sampling: another batch
    for job in (*jobs, gone, other):
        engine.submit(job)
    gone.cancel()
    engine.start()
    for job in (*jobs, other):
        assert events_until_done(job)[-1] == ("done",)
    engine.stop()
    assert [len(rows) for rows in batches] == [3, 1]
    assert all(row.route["edit_id"] == FACTS[2]["id"] for rows in batches for row in rows)
    assert gone.events.empty()


def events_until_done(job: Job, seconds: float = 60) -> list[tuple]:
    """A job's events as the worker sends them (no event loop: the test polls), up to ("done",)."""
    events: list[tuple] = []
    deadline = time.monotonic() + seconds
    while not events or events[-1][0] not in ("done", "error"):
        assert time.monotonic() < deadline, events
        try:
            events.append(job.events.get_nowait())
        except asyncio.QueueEmpty:
            time.sleep(0.01)
    return events


def test_a_client_that_goes_away_mid_answer_stops_its_generation(chat_model_dir, pack):
    batches: list[list] = []
    engine = _engine(chat_model_dir, pack, on_batch=batches.append)
    prompt = Prompt.text(engine.loaded.tokenizer, "Once upon a time")
    job = Job(prompt, STACKED, Sampling(0), 200)
    engine.submit(job)
    engine.start()
    while job.events.empty():
        time.sleep(0.001)
    job.cancel()
    while not batches:
        time.sleep(0.01)
    engine.stop()
    assert batches[0][0].finish == "cancelled" and len(batches[0][0].tokens) < 50


def test_a_streaming_client_that_hangs_up_stops_its_rows(server):
    import http.client
    from urllib.parse import urlparse

    def generated() -> float:
        text = request(server.url, "GET", "/metrics", key=KEY)[1]
        return float(
            next(line.split()[-1] for line in text.splitlines() if line.startswith("memoir_completion_tokens_total"))
        )

    before = generated()
    where = urlparse(server.url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
    body = {"model": STACKED, "prompt": "Once upon a time", "max_tokens": 200, "temperature": 0, "stream": True}
    connection.request("POST", COMPLETIONS, json.dumps(body), {"Authorization": f"Bearer {KEY}"})
    response = connection.getresponse()
    assert response.status == 200 and response.readline().startswith(b"data: ")
    connection.close()  # the client goes away after the first chunk
    _wait_for(lambda: generated() > before, 30)  # the batch has ended
    assert generated() - before < 200


def test_new_versions_are_served_without_dropping_a_request(tmp_path, chat_model_dir):
    pack = tmp_path / "pack"
    ok("edit", write_facts(tmp_path / "f.jsonl", FACTS), "--pack", pack, "--model", chat_model_dir, "--steps", 2)
    failures, answers = [], []
    stop = threading.Event()
    with running([pack], ServeOptions(port=0, reload_interval=0.2, max_batch=8)) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=60)

        def ask_in_a_loop(number: int) -> None:
            deadline = time.monotonic() + 120
            for turn in range(400):
                if stop.is_set() or time.monotonic() > deadline:
                    return
                question = (NEW_FACT, FACTS[2])[(number + turn) % 2]
                try:
                    reply = client.chat.completions.create(
                        model=STACKED, messages=chat(question["prompt"]), temperature=0, max_tokens=3
                    )
                except openai.OpenAIError as error:
                    failures.append(repr(error))
                    continue
                served = reply.model_extra["memoir"]["packs"]["pack"]
                answers.append(
                    (time.monotonic(), question["id"], dict(reply.choices[0].model_extra["memoir"], served=served))
                )

        clients = [threading.Thread(target=ask_in_a_loop, args=(n,)) for n in range(8)]
        for thread in clients:
            thread.start()
        time.sleep(1.0)
        ok("edit", write_facts(tmp_path / "new.jsonl", [NEW_FACT]), "--pack", pack, "--steps", 2)
        committed = time.monotonic()
        _wait_for(lambda: any(t > committed and r["served"] == 2 for t, _, r in answers), 10)
        ok("rollback", pack, "--to", 1, "--json")
        rolled_back = time.monotonic()
        _wait_for(lambda: any(t > rolled_back and r["served"] == 3 for t, _, r in answers), 10)
        time.sleep(0.5)
        stop.set()
        for thread in clients:
            thread.join()
    assert failures == []
    assert {r["served"] for _, _, r in answers} == {1, 2, 3}
    for _, asked, route in answers:
        if route["routed"]:
            assert route["version"] == route["served"]
        if asked == NEW_FACT["id"]:  # only version 2 holds the new fact
            assert (route["edit_id"] == NEW_FACT["id"]) == (route["served"] == 2), route
        else:
            assert route["edit_id"] == FACTS[2]["id"], route


def _wait_for(condition, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not seen in time"
        time.sleep(0.05)


def test_a_tampered_new_version_is_not_served_and_health_names_it(tmp_path, chat_model_dir):
    pack = tmp_path / "pack"
    ok("edit", write_facts(tmp_path / "f.jsonl", FACTS[:2]), "--pack", pack, "--model", chat_model_dir, "--steps", 2)
    with running([pack], ServeOptions(port=0, reload_interval=3600)) as server:
        ok("edit", write_facts(tmp_path / "new.jsonl", [NEW_FACT]), "--pack", pack, "--steps", 2)
        manifest = read_manifest(pack)
        memory = pack / "objects" / manifest.files["memory.safetensors"]["sha256"]
        memory.chmod(0o644)
        memory.write_bytes(memory.read_bytes()[:-8] + b"tampered")
        server.reloader.check()
        status, health, _ = request(server.url, "GET", "/health")
        assert status == 200 and health["status"] == "degraded" and health["packs"] == {"pack": 1}
        assert "version 2" in health["problems"][0]["problem"] and "checksum" in health["problems"][0]["problem"]
        reply = request(server.url, "POST", CHAT, dict(GOOD, messages=chat(NEW_FACT["prompt"])))[1]
        assert reply["choices"][0]["memoir"]["edit_id"] != NEW_FACT["id"]
        server.reloader.check()  # the same bad version is not retried
        assert len(request(server.url, "GET", "/health")[1]["problems"]) == 1


def test_a_pinned_version_stays_served_when_the_pack_moves_on(tmp_path, chat_model_dir):
    pack = tmp_path / "pack"
    ok("edit", write_facts(tmp_path / "f.jsonl", FACTS[:2]), "--pack", pack, "--model", chat_model_dir, "--steps", 2)
    with running([f"{pack}@1"], ServeOptions(port=0, reload_interval=3600)) as server:
        ok("edit", write_facts(tmp_path / "new.jsonl", [NEW_FACT]), "--pack", pack, "--steps", 2)
        server.reloader.check()
        assert request(server.url, "GET", "/health")[1] == {
            "status": "ok",
            "draining": False,
            "packs": {"pack@1": 1},
            "problems": [],
        }


def test_packs_are_loaded_and_unloaded_by_the_admin_endpoints(tmp_path, chat_model_dir, pack):
    other = tmp_path / "other"
    ok("edit", write_facts(tmp_path / "f.jsonl", [NEW_FACT]), "--pack", other, "--model", chat_model_dir, "--steps", 2)
    with running([pack], ServeOptions(port=0, api_key=KEY)) as server:
        status, loaded, _ = request(server.url, "POST", "/v1/load_pack", {"name": "tea", "path": str(other)}, key=KEY)
        assert status == 200 and loaded == {"name": "tea", "version": 1, "status": "loaded"}
        ids = [m["id"] for m in request(server.url, "GET", "/v1/models", key=KEY)[1]["data"]]
        assert ids == [STACKED, "pack", "tea", server.loaded.model_id]
        reply = request(server.url, "POST", CHAT, dict(GOOD, model="tea", messages=chat(NEW_FACT["prompt"])), key=KEY)
        assert reply[1]["choices"][0]["memoir"]["edit_id"] == NEW_FACT["id"]
        assert request(server.url, "POST", "/v1/unload_pack", {"name": "tea"}, key=KEY)[0] == 200
        assert request(server.url, "POST", CHAT, dict(GOOD, model="tea"), key=KEY)[0] == 404
    with running([pack], ServeOptions(port=0)) as keyless:
        status, answer, _ = request(keyless.url, "POST", "/v1/load_pack", {"name": "tea", "path": str(other)})
        assert status == 403 and "--api-key" in answer["error"]["message"]


def test_sigterm_drains_requests_in_flight_then_exits_0(pack):
    with serve_process(pack, "--max-batch", 4, env=dict(os.environ, MEMOIR_API_KEY=KEY)) as (process, url):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=60)
        stream = client.completions.create(
            model=STACKED, prompt="Once upon a time", temperature=0, max_tokens=200, n=4, stream=True
        )
        first = next(iter(stream))
        process.send_signal(signal.SIGTERM)
        rest = list(stream)
        assert (
            first.choices and [c.choices[0].finish_reason for c in rest if c.choices[0].finish_reason] == ["length"] * 4
        )
        assert process.wait(timeout=60) == 0
        log = process.stderr.read()
    assert "draining" in log and '"event": "request"' in log


def test_a_hub_pack_is_polled_and_its_new_version_served(tmp_path, model_dir):
    from .fake_hub import FakeHub
    from .test_hub import REPO, TOKEN, Shell, edit

    with FakeHub(tokens={TOKEN}) as hub:
        shell = Shell(hub, tmp_path / "home")
        pack = tmp_path / "pack"
        edit(pack, FACTS[:2], model_dir, tmp_path)
        shell("push", pack, REPO)
        with serve_process(REPO, "--model", model_dir, "--poll-hub", 1, env=shell.env) as (process, url):
            assert request(url, "GET", "/health")[1]["packs"] == {REPO: 1}
            edit(pack, FACTS[2:], model_dir, tmp_path)
            shell("push", pack, REPO)
            _wait_for(lambda: request(url, "GET", "/health")[1]["packs"] == {REPO: 2}, 30)
            reply = request(url, "POST", COMPLETIONS, {"model": REPO, "prompt": FACTS[2]["prompt"], "max_tokens": 2})
            assert reply[1]["choices"][0]["memoir"]["edit_id"] == FACTS[2]["id"]
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0
