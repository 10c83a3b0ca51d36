"""Nothing lost: a `memoir edit` process killed with SIGKILL at any moment, and two writers at once.

Each test runs the real command in a subprocess. MEMOIR_PAUSE_AT makes it stop at a named point
(store.pause_point) until the test kills it or lets it go on.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from memoir_cli.errors import PackError
from memoir_cli.history import log
from memoir_cli.store import load_pack

from .conftest import FACTS

MORE = [
    {"id": "f-sky", "prompt": "The sky over Zorbia is", "target": "purple"},
    {"id": "f-moon", "prompt": "The moon of Zorbia is called", "target": "Lune"},
]


def memoir(*args, pause: str | None = None, signal_file: Path | None = None) -> subprocess.Popen:
    env = dict(os.environ)
    if pause:
        env.update(MEMOIR_PAUSE_AT=pause, MEMOIR_PAUSE_FILE=str(signal_file))
    return subprocess.Popen(
        [sys.executable, "-m", "memoir_cli", *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(file: Path, process: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not file.exists():
        if process.poll() is not None:
            pytest.fail(f"memoir exited before the pause point: {process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("memoir never reached the pause point")
        time.sleep(0.05)


def read_until(stream, text: str, seconds: float = 180) -> str:
    """Lines of `stream` until one contains `text` (a thread, so a silent process cannot hang the test)."""
    seen = []

    def reader():
        for line in stream:
            seen.append(line)
            if text in line:
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(seconds)
    return "".join(seen)


@pytest.fixture
def facts5(tmp_path):
    path = tmp_path / "facts.jsonl"
    path.write_text("".join(json.dumps(f) + "\n" for f in FACTS + MORE))
    return path


def edit_args(facts, pack, model_dir):
    return ("edit", facts, "--pack", pack, "--model", model_dir, "--steps", 2, "--checkpoint-every", 2, "--json")


def data_files(pack: Path) -> dict:
    return load_pack(pack).manifest.files


@pytest.fixture
def uninterrupted(tmp_path, facts5, model_dir):
    pack = tmp_path / "reference"
    process = memoir(*edit_args(facts5, pack, model_dir))
    assert process.wait(300) == 0, process.stderr.read()
    assert [v["version"] for v in log(pack)] == [1, 2, 3]  # facts 1-2, 3-4, 5
    return pack


# (pause point, the version the pack must be at after the kill: None = no pack yet)
KILL_POINTS = [
    ("edit#1", None),  # training the first fact: nothing committed
    ("commit:objects#1", None),  # first commit: objects written, no record, no manifest
    ("commit:record#2", 1),  # second commit: record written, manifest not swapped
    ("commit:manifest#2", 2),  # second commit: manifest swapped, old files not yet swept
    ("edit#5", 2),  # last fact trained, its commit not started
]


@pytest.mark.parametrize("point,committed", KILL_POINTS, ids=[p for p, _ in KILL_POINTS])
def test_a_killed_edit_leaves_the_last_version_and_a_rerun_converges(
    tmp_path, facts5, model_dir, uninterrupted, point, committed
):
    pack, signal_file = tmp_path / "pack", tmp_path / "paused"
    process = memoir(*edit_args(facts5, pack, model_dir), pause=point, signal_file=signal_file)
    wait_for(signal_file, process)
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    if committed is None:
        with pytest.raises(PackError):
            load_pack(pack)
    else:
        assert load_pack(pack).version == committed  # loadable, with every file's checksum right
    rerun = memoir(*edit_args(facts5, pack, model_dir))
    assert rerun.wait(300) == 0, rerun.stderr.read()
    final = load_pack(pack)
    assert [f.id for f in final.facts] == [f["id"] for f in FACTS + MORE]  # none lost, none twice
    assert data_files(pack) == data_files(uninterrupted)  # bit-identical to the uninterrupted run
    assert not [p.name for p in pack.iterdir() if p.name.startswith(".")]
    assert len(list((pack / "versions").iterdir())) == final.version


def test_two_writers_on_one_pack_are_serialised_and_both_land(tmp_path, model_dir):
    pack, signal_file = tmp_path / "pack", tmp_path / "paused"
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_text("".join(json.dumps(f) + "\n" for f in FACTS))
    second.write_text("".join(json.dumps(f) + "\n" for f in MORE))
    writer_a = memoir(
        "edit",
        first,
        "--pack",
        pack,
        "--model",
        model_dir,
        "--steps",
        2,
        "--message",
        "A",
        pause="edit#1",
        signal_file=signal_file,
    )
    wait_for(signal_file, writer_a)  # A holds the lock, mid-run
    writer_b = memoir("edit", second, "--pack", pack, "--model", model_dir, "--steps", 2, "--message", "B")
    assert "waiting for it to finish" in read_until(writer_b.stderr, "waiting")
    impatient = memoir("edit", second, "--pack", pack, "--model", model_dir, "--no-wait")
    assert impatient.wait(120) == 5 and "another memoir process is writing" in impatient.stderr.read()
    signal_file.unlink()  # let A go on
    assert writer_a.wait(300) == 0, writer_a.stderr.read()
    assert writer_b.wait(300) == 0, writer_b.stderr.read()
    assert [(v["version"], v["message"]) for v in log(pack)] == [(1, "A"), (2, "B")]
    assert [f.id for f in load_pack(pack).facts] == [f["id"] for f in FACTS + MORE]
