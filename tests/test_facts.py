import json
import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from memoir_cli.errors import BadInputError
from memoir_cli.facts import fact_id, load_schema, read_facts, read_facts_jsonl, read_zsre_json


def problems_in(tmp_path, text: str) -> tuple[list[str], str]:
    """The problem lines reading `text` as a facts file raises, and the file's path."""
    path = tmp_path / "facts.jsonl"
    path.write_text(text)
    with pytest.raises(BadInputError) as caught:
        read_facts_jsonl(path)
    return caught.value.details, str(path)


def test_schema_errors_name_file_line_and_field_for_every_bad_line(tmp_path):
    details, path = problems_in(
        tmp_path,
        '{"prompt": "ok", "target": "fine"}\n'
        '{"prompt": "no target here"}\n'
        "\n"
        "{not json\n"
        '{"prompt": "x", "target": "y", "colour": "red"}\n'
        '{"prompt": "x", "target": "   "}\n'
        '{"prompt": "x", "target": "y", "rephrases": "not a list"}\n',
    )
    assert details == [
        f"{path}:2: 'target' is required",
        f"{path}:4: not valid JSON (Expecting property name enclosed in double quotes at column 2)",
        f"{path}:5: unknown field ('colour' was unexpected)",
        f"{path}:6: 'target' must not be blank",
        f"{path}:7: 'rephrases': 'not a list' is not of type 'array'",
    ]


def test_facts_without_id_get_a_stable_content_id(tmp_path):
    path = tmp_path / "facts.jsonl"
    path.write_text('{"prompt": "A", "target": "B"}\n{"id": "mine", "prompt": "C", "target": "D"}\n')
    first, second = read_facts_jsonl(path)
    assert first.id == fact_id("A", "B") == read_facts_jsonl(path)[0].id
    assert second.id == "mine"


def test_repeated_id_is_reported_with_both_lines(tmp_path):
    details, path = problems_in(
        tmp_path, '{"id": "a", "prompt": "A", "target": "B"}\n{"id": "a", "prompt": "C", "target": "D"}\n'
    )
    assert details == [f"{path}:2: 'id' 'a' repeats line 1"]


def test_empty_and_missing_files_are_bad_input(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(BadInputError, match="no facts"):
        read_facts_jsonl(empty)
    with pytest.raises(BadInputError, match="no such file"):
        read_facts_jsonl(tmp_path / "missing.jsonl")


def test_zsre_records_map_to_facts_and_empty_targets_are_reported(tmp_path):
    path = tmp_path / "zsre.json"
    records = [
        {
            "src": "Who  made X?",
            "alt": " Ann",
            "rephrase": "Who built X?",
            "loc": "nq question: where is y",
            "loc_ans": "Z",
        },
        {"src": "Who made W?", "alt": "", "rephrase": "Who built W?"},
    ]
    path.write_text(json.dumps(records))
    with pytest.raises(BadInputError) as caught:
        read_zsre_json(path)
    assert caught.value.details == [f"{path}: record 2: 'alt' (the target) is empty"]
    skipped = []
    (fact,) = read_facts(path, "auto", on_skip=skipped.append)
    assert skipped == [f"{path}: record 2: 'alt' (the target) is empty"]
    assert (fact.prompt, fact.target, fact.id) == ("Who made X?", "Ann", "zsre-0")
    assert fact.rephrases == ("Who built X?",)
    assert fact.locality == ({"prompt": "where is y", "target": "Z"},)


def test_shipped_example_facts_are_valid():
    from pathlib import Path

    facts = read_facts_jsonl(Path(__file__).parent.parent / "examples" / "facts.jsonl")
    assert len(facts) == 5


def test_nested_required_fields_name_their_path(tmp_path):
    details, path = problems_in(tmp_path, '{"prompt": "A", "target": "B", "locality": [{"target": "x"}]}\n')
    assert details == [f"{path}:1: 'locality/0/prompt' is required"]


def test_limit_reads_and_checks_only_the_first_records(tmp_path):
    zsre = tmp_path / "zsre.json"
    zsre.write_text(json.dumps([{"src": "A?", "alt": "B"}, {"src": "C?", "alt": ""}]))
    assert [f.target for f in read_facts(zsre, limit=1)] == ["B"]
    jsonl = tmp_path / "facts.jsonl"
    jsonl.write_text('{"prompt": "A", "target": "B"}\n\n{"prompt": "bad"}\n')
    assert [f.target for f in read_facts(jsonl, limit=1)] == ["B"]
    with pytest.raises(BadInputError):
        read_facts(jsonl, limit=2)


def test_every_schema_ships_inside_the_package_and_equals_the_top_level_file():
    shipped = {path.name for path in resources.files("memoir_cli.schemas").iterdir() if path.name.endswith(".json")}
    top_level = Path(__file__).resolve().parent.parent / "schemas"
    assert shipped == {path.name for path in top_level.glob("*.json")} and shipped
    for name in shipped:
        assert load_schema(name) == json.loads((top_level / name).read_text())


@pytest.mark.parametrize("layout", ["checkout", "wheel"])
def test_the_imported_copy_of_memoir_reads_its_own_schemas(tmp_path, layout):
    """A worktree run from PYTHONPATH beside an editable install of another checkout must validate
    against its own schemas, and a wheel (no pyproject.toml) against the ones inside the package."""
    here = Path(__file__).resolve().parent.parent
    other = tmp_path / layout
    shutil.copytree(here / "memoir_cli", other / "memoir_cli", ignore=shutil.ignore_patterns("__pycache__"))
    schemas = other / "schemas" if layout == "checkout" else other / "memoir_cli" / "schemas"
    shutil.copytree(here / "schemas", schemas, ignore=shutil.ignore_patterns("__pycache__"))
    if layout == "checkout":
        shutil.copy(here / "pyproject.toml", other)
    schema = json.loads((schemas / "fact.schema.json").read_text())
    (schemas / "fact.schema.json").write_text(json.dumps(dict(schema, title=f"memoir fact ({layout})")))
    read = "from memoir_cli.facts import load_schema; print(load_schema('fact.schema.json')['title'])"
    env = dict(os.environ, PYTHONPATH=str(other))
    shown = subprocess.run([sys.executable, "-c", read], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert shown.stdout.strip() == f"memoir fact ({layout})", shown.stderr


def test_each_missing_or_unknown_field_of_a_record_is_named_once(tmp_path):
    details, path = problems_in(tmp_path, '{"colour": "red", "size": 3}\n')
    assert details == [
        f"{path}:1: 'prompt' is required",
        f"{path}:1: 'target' is required",
        f"{path}:1: unknown field ('colour', 'size' were unexpected)",
    ]
