"""--threshold auto: tau calibrated from hand-built overlap distributions (separable, overlapping, a
single edit, an empty pack), and through `memoir edit` on a tiny model: new packs calibrate, a
number fixes tau, auto comes back, and the pack recalibrates as it grows."""

import pytest

from memoir_cli.calibration import BINS, add_to_histogram, calibrate
from memoir_cli.store import read_manifest, read_record

from .conftest import FACTS
from .helpers import ok, write_facts

K = 439


def test_separable_distributions_put_tau_halfway_across_the_gap():
    calibration = calibrate([0.30, 0.41, 0.45], add_to_histogram([], [0.60, 0.72, 0.90, 1.0]), K, 0.5)
    assert calibration.threshold == pytest.approx(0.525) and calibration.margin == pytest.approx(0.15)
    assert calibration.unrelated_max == 0.45 and calibration.variants_min == 0.6 and calibration.variants == 4
    assert calibration.variants_below == 0.0 and calibration.unrelated_at_variants_min == 0.0
    assert not calibration.overlapping and calibration.warning() is None


def test_overlapping_distributions_keep_locality_and_say_what_is_at_risk():
    calibration = calibrate([0.30, 0.62], add_to_histogram([], [0.55, 0.80, 1.0]), K, 0.5)
    assert 0.62 < calibration.threshold <= 0.62 + 1 / K  # just above the highest unrelated overlap
    assert calibration.margin == pytest.approx(-0.07) and calibration.overlapping
    assert calibration.variants_below == pytest.approx(1 / 3, abs=1e-4)  # 0.55 falls below tau
    assert calibration.unrelated_at_variants_min == 0.5  # a tau of 0.55 would route 0.62's prompt
    warning = calibration.warning()
    assert warning and "33%" in warning and "50%" in warning and "0.62" in warning


def test_tau_keeps_995_in_1000_unrelated_prompts_unrouted_not_the_single_highest():
    unrelated = [0.40] * 396 + [0.45, 0.50, 0.55, 0.60]  # 400 prompts: the top two may reach an edit
    calibration = calibrate(unrelated, add_to_histogram([], [0.52, 0.8]), K, 0.5)
    assert calibration.unrelated_max == 0.50 and 0.50 < calibration.threshold < 0.52
    assert calibration.unrelated_routed == 0.005 and calibration.variants_below == 0.0


def test_a_single_edit_calibrates_from_its_own_variants():
    variants = add_to_histogram([], [0.70, 0.74, 0.81, 0.93, 1.0])
    calibration = calibrate([0.2] * 10, variants, K, 0.5)
    assert calibration.threshold == pytest.approx(0.45) and calibration.variants == 5
    assert calibration.threshold <= 0.70  # every variant still reaches its edit


def test_an_empty_pack_keeps_the_default():
    calibration = calibrate([], [], K, 0.5)
    assert calibration.threshold == 0.5 and calibration.margin is None and calibration.variants == 0
    assert calibration.unrelated_max is None and calibration.warning() is None


def test_variant_bins_floor_each_overlap_so_tau_never_exceeds_a_variant():
    histogram = add_to_histogram([], [0.557, 1.0, 0.0])
    assert len(histogram) == BINS and histogram[55] == 1 and histogram[BINS - 1] == 1 and histogram[0] == 1
    assert calibrate([0.5], add_to_histogram([], [0.557]), K, 0.5).threshold <= 0.557


def test_a_new_pack_calibrates_a_fixed_threshold_stays_and_auto_recalibrates_as_the_pack_grows(tmp_path, model_dir):
    pack = tmp_path / "pack"

    def edit(name: str, facts: list[dict], *options) -> dict:
        facts_file = write_facts(tmp_path / name, facts)
        return ok("edit", facts_file, "--pack", pack, "--model", model_dir, "--steps", 1, *options, "--json")

    first = edit("1.jsonl", FACTS[:1])
    routing = read_manifest(pack).routing
    assert routing.auto and routing.calibration is not None
    assert routing.threshold == first["calibration"]["threshold"] == routing.calibration["threshold"]
    assert first["calibration"]["unrelated"] >= 200 and first["calibration"]["variants"] >= 10
    shown = ok("show", pack, "--json")["routing"]
    assert shown["auto"] and shown["threshold"] == routing.threshold and "margin" in shown

    edit("2.jsonl", FACTS[1:2], "--threshold", 0.3)
    routing = read_manifest(pack).routing
    assert (routing.threshold, routing.auto, routing.calibration) == (0.3, False, None)

    third = edit("3.jsonl", FACTS[2:], "--threshold", "auto")
    routing = read_manifest(pack).routing
    assert routing.auto and routing.threshold == third["calibration"]["threshold"]
    # Turned back to auto: the variants of all three active edits are measured, not only the new one's.
    assert third["calibration"]["variants"] == 3 * first["calibration"]["variants"]
    assert read_record(pack, 3)["manifest"]["routing"]["calibration"]["variants"] == third["calibration"]["variants"]
    diff = ok("diff", f"{pack}@2", pack, "--json")
    assert {s["setting"] for s in diff["settings"]} >= {"threshold", "threshold auto"}


def test_a_threshold_that_is_neither_auto_nor_in_range_is_refused(tmp_path, model_dir):
    from .helpers import run

    for bad in ("often", "1.5"):
        result = run("edit", write_facts(tmp_path / "1.jsonl", FACTS[:1]), "--pack", tmp_path / "p", "--threshold", bad)
        assert result.exit_code == 2 and "--threshold" in result.output and not (tmp_path / "p").exists()


def test_an_edit_run_computes_the_unrelated_prompts_once_and_its_last_tau_is_a_fresh_calibrations(
    tmp_path, model_dir, monkeypatch
):
    """Three checkpoint versions, three calibrations, one pass over the unrelated prompts; the
    masks it reused give the tau that computing them again on the final pack gives."""
    import memoir_cli.calibration as calibration
    from memoir_cli.calibration import UnrelatedPrompts
    from memoir_cli.editor import editing
    from memoir_cli.models import load_model
    from memoir_cli.store import load_pack

    asked = []
    prompts = calibration.calibration_prompts
    monkeypatch.setattr(calibration, "calibration_prompts", lambda: asked.append(1) or prompts())
    pack = tmp_path / "pack"
    facts = write_facts(tmp_path / "a.jsonl", FACTS[:3])
    summary = ok("edit", facts, "--pack", pack, "--model", model_dir, "--steps", 1, "--checkpoint-every", 1, "--json")
    assert len(summary["versions"]) == 3 and len(asked) == 1
    assert all(read_record(pack, v)["manifest"]["routing"]["calibration"] for v in (1, 2, 3))

    edited = load_pack(pack)
    routing = edited.manifest.routing
    with editing(load_model(str(model_dir)), edited) as editor:
        fresh = calibrate(UnrelatedPrompts(editor).overlaps(), routing.calibration["histogram"], edited.memory.k, 0.5)
    assert fresh.threshold == routing.threshold and len(asked) == 2


def _counting_features(monkeypatch) -> list[int]:
    """How many prompts each feature pass of the calibration reads."""
    import memoir_cli.calibration as calibration

    sizes: list[int] = []
    features = calibration._features

    def counted(editor, prompts, chat, system=None):
        sizes.append(len(prompts))
        return features(editor, prompts, chat, system)

    monkeypatch.setattr(calibration, "_features", counted)
    return sizes


def _unrelated_passes(sizes: list[int]) -> int:
    from memoir_cli.calibration import calibration_prompts

    return sum(size == len(calibration_prompts()) for size in sizes)


def test_a_later_edit_run_reads_the_unrelated_prompts_features_from_the_cache_and_gets_the_same_tau(
    tmp_path, model_dir, monkeypatch
):
    import shutil

    from memoir_cli.store import unrelated_cache

    pack, twin = tmp_path / "pack", tmp_path / "twin"
    sizes = _counting_features(monkeypatch)
    ok("edit", write_facts(tmp_path / "a.jsonl", FACTS[:1]), "--pack", pack, "--model", model_dir, "--steps", 1)
    computed = _unrelated_passes(sizes)  # one per form the pack asks them in
    assert computed >= 1 and unrelated_cache(pack).is_file()
    shutil.copytree(pack, twin)
    second = write_facts(tmp_path / "b.jsonl", FACTS[1:2])
    sizes.clear()
    cached = ok("edit", second, "--pack", pack, "--model", model_dir, "--steps", 1, "--json")
    assert _unrelated_passes(sizes) == 0  # only the two one-prompt probes, and the fact's own variants

    unrelated_cache(twin).write_bytes(b"not a safetensors file")  # a damaged cache is computed again
    fresh = ok("edit", second, "--pack", twin, "--model", model_dir, "--steps", 1, "--json")
    assert _unrelated_passes(sizes) == computed
    assert cached["calibration"] is not None and cached["calibration"] == fresh["calibration"]  # the same tau


def test_unrelated_features_cached_for_another_model_are_computed_again(tmp_path, model_dir, monkeypatch):
    import torch

    from memoir_cli.calibration import UnrelatedPrompts
    from memoir_cli.editor import editing
    from memoir_cli.models import load_model
    from memoir_cli.store import load_pack, unrelated_cache

    pack = tmp_path / "pack"
    ok("edit", write_facts(tmp_path / "a.jsonl", FACTS[:1]), "--pack", pack, "--model", model_dir, "--steps", 1)
    loaded, edited, cache = load_model(str(model_dir)), load_pack(pack), unrelated_cache(pack)
    sizes = _counting_features(monkeypatch)
    with editing(loaded, edited) as editor:
        same = UnrelatedPrompts(editor, cache).overlaps()
        assert _unrelated_passes(sizes) == 0
        with torch.no_grad():
            loaded.model.model.layers[0].mlp.up_proj.weight.mul_(1.01)  # below the edit layer: every feature moves
        moved = UnrelatedPrompts(editor, cache)
        moved.overlaps()
        assert _unrelated_passes(sizes) >= 1  # the probe's bits differ: the cache is not used
        moved.save()
        sizes.clear()
        assert UnrelatedPrompts(editor, cache).overlaps() == moved.overlaps() != same  # the new model's, cached
        assert _unrelated_passes(sizes) == 0
