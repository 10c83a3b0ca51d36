"""`memoir eval` on SmolLM2-135M after 30 sequential ZsRE edits, through the command line."""

import pytest

from .helpers import ok

pytestmark = pytest.mark.integration


def test_thirty_sequential_zsre_edits_score_rel_at_least_0_9_and_loc_at_least_0_95_on_the_first_twenty(
    zsre_pack, zsre_file
):
    result = ok("eval", zsre_pack.path, "--data", zsre_file, "--format", "zsre", "--limit", 20, "--json")
    assert result["scores"]["rel"] >= 0.9 and result["scores"]["loc"] >= 0.95, result["scores"]
