"""`memoir eval` on SmolLM2-135M after 20 sequential ZsRE edits, through the command line."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memoir_cli.cli import app

ZSRE = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "zsre" / "zsre_dev.json"

pytestmark = pytest.mark.integration


def test_twenty_sequential_zsre_edits_score_rel_at_least_0_9_and_loc_at_least_0_95(tmp_path):
    runner = CliRunner()
    pack = tmp_path / "pack"
    edited = runner.invoke(app, ["edit", str(ZSRE), "--format", "zsre", "--limit", "20", "--pack", str(pack), "--json"])
    assert edited.exit_code == 0, edited.output
    assert json.loads(edited.stdout)["edited"] == 20
    result = runner.invoke(app, ["eval", str(pack), "--data", str(ZSRE), "--format", "zsre", "--limit", "20", "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)["scores"]
    assert scores["rel"] >= 0.9 and scores["loc"] >= 0.95, scores
