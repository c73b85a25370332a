"""Image artifacts (neuroradfm.artifacts) and the robustness sweep (neuroradfm.evaluate.robustness) on phantoms."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from neuroradfm.artifacts import FAMILIES, LEVELS, apply_artifact, draw_artifact
from neuroradfm.demo import demo_bundle_path
from neuroradfm.evaluate.data import eval_data
from neuroradfm.evaluate.robustness import (
    CASES_HEADER,
    FILES,
    SUMMARY_HEADER,
    RobustnessSettings,
    robustness,
    robustness_sweep,
    write_robustness,
)
from neuroradfm.io import read_manifest
from neuroradfm.models.bundle import load_bundle
from neuroradfm.train.cohort import prepare_cohort

STRONGEST = LEVELS - 1
DEMO_HELD_OUT_SEED = 424242
"""Fresh phantoms for the demo bundle (trained on seed 1), as Testing/test_demo_bundle.py."""


@pytest.fixture(scope="module")
def prepared(phantom_cohort, tiny_bundle):
    """Four phantom cases on the tiny bundle's model grid ((4, 4, 48, 48, 48) float16, as the cache keeps them)."""
    entries = read_manifest(phantom_cohort)[:4]
    return entries, prepare_cohort(entries, load_bundle(tiny_bundle).preprocessing)


def _change(a: np.ndarray, b: np.ndarray) -> float:
    brain = (b != 0).any(axis=0)
    return float(np.abs(a - b)[:, brain].mean())


@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_family_is_identity_at_level_0_and_grows_with_the_level_deterministically(prepared, name):
    cohort = prepared[1]
    for index, seed in [(0, 0), (1, 12345)]:
        x = np.asarray(cohort.inputs[index], np.float32)
        brain = (x != 0).any(axis=0)
        clean = apply_artifact(x, name, 0, seed)
        assert clean is not x and np.array_equal(clean, x)
        changes = [0.0]
        for level in range(1, LEVELS):
            y = apply_artifact(x, name, level, seed)
            assert y.shape == x.shape and y.dtype == np.float32 and np.isfinite(y).all()
            assert np.array_equal(y, apply_artifact(x, name, level, seed)), "the same seed gives the same artifact"
            assert not y[:, ~brain].any(), "the background stays 0"
            inside = y[:, brain]  # standardised again inside the brain, as the pipeline's z-score would
            np.testing.assert_allclose(inside.mean(axis=1), 0.0, atol=1e-3)
            np.testing.assert_allclose(inside.std(axis=1), 1.0, atol=1e-3)
            changes.append(_change(y, x))
        assert np.all(np.diff(changes) > 0), f"{name}: mean |change| inside the brain by level {changes}"
        assert changes[-1] > 0.2, f"{name}: the strongest level changes the brain by only {changes[-1]:.3f} SD"
    if name in ("bias", "noise", "spike"):
        x = np.asarray(cohort.inputs[0], np.float32)
        assert not np.array_equal(apply_artifact(x, name, 2, 0), apply_artifact(x, name, 2, 1))


def test_a_missing_channel_stays_missing_and_bad_arguments_are_refused(prepared):
    x = np.asarray(prepared[1].inputs[0], np.float32).copy()
    x[2] = 0.0
    for name in FAMILIES:
        out = apply_artifact(x, name, STRONGEST, 3)
        assert not out[2].any() and out[[0, 1, 3]].any()
    with pytest.raises(ValueError, match="unknown artifact family"):
        apply_artifact(x, "motion", 1)
    with pytest.raises(ValueError, match="level"):
        apply_artifact(x, "noise", LEVELS)
    with pytest.raises(ValueError, match=r"\(C, K, J, I\)"):
        apply_artifact(x[0], "noise", 1)


def test_draw_artifact_is_reproducible_and_stays_in_range():
    first = [draw_artifact(np.random.default_rng(5)) for _ in range(3)]
    assert first == [draw_artifact(np.random.default_rng(5)) for _ in range(3)]
    rng = np.random.default_rng(0)
    draws = [draw_artifact(rng, families=["noise", "thick"], min_level=2, max_level=3) for _ in range(50)]
    assert {d[0] for d in draws} == {"noise", "thick"} and {d[1] for d in draws} == {2, 3}
    with pytest.raises(ValueError):
        draw_artifact(rng, min_level=3, max_level=2)


def test_the_sweep_returns_one_row_per_family_and_level_and_writes_its_tables(prepared, tiny_bundle, tmp_path):
    entries, cohort = prepared
    bundle = load_bundle(tiny_bundle)
    data, _, _ = eval_data(entries, subgroup="all")
    settings = RobustnessSettings(families=("noise", "thick"), levels=(2, 4), device="cpu")
    assert settings.levels == (0, 2, 4), "level 0, the clean cases, is always part of a sweep"
    result = robustness_sweep(bundle, list(cohort.inputs), data, settings)
    assert [(r["family"], r["level"]) for r in result["rows"]] == [(f, lv) for f in ("noise", "thick")
                                                                   for lv in (0, 2, 4)]
    assert len(result["per_case"]) == 2 * 3 * len(entries)
    keys = {h.key for h in bundle.heads.markers}
    assert set(result["clean"]["auc"]) | {k for k in result["not_evaluable"] if k != "survival"} == keys
    for row in result["rows"]:
        assert row["n"] == len(entries) and set(row["auc"]) == set(result["clean"]["auc"])
        assert set(SUMMARY_HEADER) <= set(row)
        if row["level"] == 0:
            assert row["cosine_mean"] == pytest.approx(1.0) and row["ood_above_clean"] == 0.0
            assert all(v == 0.0 for v in row["delta_auc"].values())
            assert row["ood_mean"] == pytest.approx(result["clean"]["ood_mean"])
        else:
            assert row["cosine_mean"] < 1.0 and 0.0 <= row["ood_flagged"] <= 1.0
    assert result["clean"]["ood_threshold"] == pytest.approx(bundle.heads.ood.threshold)
    paths = write_robustness(result, tmp_path / "out")
    assert {p.name for p in paths.values()} == set(FILES.values()) and all(p.is_file() for p in paths.values())
    assert json.loads(paths["json"].read_text())["rows"] == result["rows"]
    with paths["summary"].open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and list(rows[0])[:len(SUMMARY_HEADER)] == SUMMARY_HEADER
    with paths["cases"].open(newline="") as handle:
        assert next(csv.reader(handle)) == CASES_HEADER
    assert paths["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_demo_bundle_ood_score_rises_for_most_cases_at_the_strongest_level_of_every_family(tmp_path_factory):
    """The issue's requirement, on the shipped bundle and 4 fresh phantoms (from a manifest, as the bench runs).

    Not on the tiny test bundle: its OOD head is fitted on 12 cases in 64 dimensions, so its Ledoit-Wolf
    covariance is nearly isotropic (eigenvalues 0.8-3.2) and a fresh clean case already lies at about the
    threshold (9.7 against 11.4; its own training cases 5-6). Corrupted embeddings move far (cosine to the clean
    one 0.3-0.6) but not further out than any new case, and at the strongest level the distance rose for only
    38-62 % of 8 fresh cases, 56-81 % of 16, depending on the family. The demo bundle's head (64 cases, 256
    features) shows it (bench/RESULTS.md)."""
    from neuroradfm.phantom import generate_cohort

    folder = tmp_path_factory.mktemp("demo-held-out")
    manifest = generate_cohort(folder / "phantom", n=4, sites=4, seed=DEMO_HELD_OUT_SEED, spacing=2.0)
    bundle = load_bundle(demo_bundle_path())
    result = robustness(manifest, bundle, folder / "cache", RobustnessSettings(levels=(STRONGEST,), device="cpu"))
    assert not result["failures"] and len(result["case_ids"]) == 4
    strongest = {r["family"]: r for r in result["rows"] if r["level"] == STRONGEST}
    assert set(strongest) == set(FAMILIES)
    clean = result["clean"]
    print(f"\ndemo bundle, 4 fresh phantoms: clean OOD {clean['ood_mean']:.1f} (threshold "
          f"{clean['ood_threshold']:.1f}); at level {STRONGEST}: " + ", ".join(
              f"{name} {row['ood_mean']:.1f} ({row['ood_above_clean']:.0%} above clean)"
              for name, row in strongest.items()))
    for name, row in strongest.items():
        assert row["ood_above_clean"] > 0.5, f"{name}: OOD above clean for {row['ood_above_clean']:.0%} of cases"
        assert row["ood_mean"] > clean["ood_mean"], name
