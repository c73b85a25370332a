"""Training commands given too few cases, or settings that cannot work: one clear error (exit status 2 through the
CLI), before preprocessing when the manifest shows the problem, after it when failing cases leave too few."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import TINY_SETTINGS, write_manifest
from neuroradfm.cli import main
from neuroradfm.errors import InputError, SettingsError
from neuroradfm.markers import MARKER_KEYS
from neuroradfm.models.bundle import load_bundle
from neuroradfm.models.encoder import EncoderConfig
from neuroradfm.ssl import MethodSettings
from neuroradfm.train.baseline import BaselineSettings, min_training_cases, train_baseline
from neuroradfm.train.checkpoint import CheckpointError
from neuroradfm.train.fit_heads import fit_heads_bundle
from neuroradfm.train.pretrain import PretrainSettings, pretrain

DEFAULTS = replace(TINY_SETTINGS, probe_fraction=0.4)
"""The tiny network and grid with the default split (probe_fraction 0.4, heads cross-validated in 5 folds)."""

PRETRAIN = PretrainSettings(
    method="byol", encoder=EncoderConfig("resnet10", widen_factor=0.125, conv1_stride=2, no_max_pool=True),
    preprocessing=TINY_SETTINGS.preprocessing, crop_size=32,
    method_settings=MethodSettings(hidden_dim=32, proj_dim=16, dino_out_dim=32, dino_bottleneck=16,
                                   mae_decoder_dim=16),
    epochs=1, max_steps=1, batch_size=2, learning_rate=1e-3, dro="exponentiated", checkpoint_every=1,
    num_workers=0, device="cpu")

TINY_CLI = ["--arch", "resnet10", "--widen", "0.125", "--size", "48", "--spacing", "4", "--epochs", "1",
            "--device", "cpu", "--progress", "none"]
PRETRAIN_CLI = ["--arch", "resnet10", "--widen", "0.125", "--no-max-pool", "--size", "48", "--spacing", "4",
                "--no-n4", "--crop", "32", "--batch-size", "2", "--max-steps", "1", "--hidden-dim", "32",
                "--proj-dim", "16", "--workers", "0", "--device", "cpu", "--progress", "none"]


def _rows(phantom_cohort: Path) -> list[dict[str, str]]:
    """The phantom manifest's rows (8 cases of site-A, 8 of site-B) with absolute image paths."""
    rows = list(csv.DictReader(phantom_cohort.open()))
    for row in rows:
        for key in ("t1", "t1ce", "t2", "flair", "seg"):
            row[key] = str(phantom_cohort.parent / row[key])
    return rows


def _one_site(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [dict(row, site="site-A") for row in rows]


def _broken(rows: list[dict[str, str]], folder: Path) -> list[dict[str, str]]:
    """The same cases with a T1 that is not an image: each fails to load (and is left out) when preprocessed."""
    broken = folder / "broken-t1n.nii.gz"
    folder.mkdir(parents=True, exist_ok=True)
    broken.write_bytes(b"not an image")
    return [dict(row, t1=str(broken)) for row in rows]


def _unlabelled(rows: list[dict[str, str]], keep: tuple[str, ...] = ()) -> list[dict[str, str]]:
    """Every marker (but ``keep``) and the survival unknown."""
    blank = [key for key in (*MARKER_KEYS, "os_days", "os_event") if key not in keep]
    return [dict(row, **dict.fromkeys(blank, "")) for row in rows]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Preprocessed cases shared by the tests that get as far as preprocessing (tiny grid, no N4)."""
    return tmp_path_factory.mktemp("small-cohort-cache")


@pytest.fixture(scope="module")
def twelve_of_one_site(phantom_cohort, tmp_path_factory):
    return write_manifest(tmp_path_factory.mktemp("twelve") / "manifest.csv", _one_site(_rows(phantom_cohort))[:12])


@pytest.fixture(scope="module")
def smallest_bundle(twelve_of_one_site, cache, tmp_path_factory):
    """Trained on the fewest cases the default split accepts: 12 of one site, 5 of them held out for the heads."""
    return train_baseline(twelve_of_one_site, tmp_path_factory.mktemp("bundles") / "twelve", DEFAULTS,
                          cache_dir=cache)


def _cli_train(manifest: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return ["train-baseline", "--manifest", str(manifest), "--out", str(out), "--cache", str(cache), *TINY_CLI,
            *extra]


# --- train-baseline ---------------------------------------------------------------------------------------------


def test_twelve_cases_are_the_fewest_the_default_split_accepts(smallest_bundle):
    assert min_training_cases(BaselineSettings().probe_fraction) == 12
    training = load_bundle(smallest_bundle).card["training"]
    assert training["cases_heads"] == 5 and training["cases_encoder"] == 7  # round(0.4 x 12), 5-fold heads


@pytest.mark.parametrize("count", [1, 2, 3, 11])
def test_train_baseline_refuses_too_few_cases_before_preprocessing(phantom_cohort, tmp_path, capsys, count):
    manifest = write_manifest(tmp_path / "manifest.csv", _one_site(_rows(phantom_cohort))[:count])
    with pytest.raises(InputError, match=rf"training a bundle needs at least 12 usable cases \({count} given\): "
                                         r"a probe_fraction of 0.4 .* at least 5 .* 5 folds") as error:
        train_baseline(manifest, tmp_path / "bundle", DEFAULTS, cache_dir=tmp_path / "cache")
    assert error.value.path == str(manifest)
    assert main(_cli_train(manifest, tmp_path / "cli", tmp_path / "cache")) == 2
    assert f"needs at least 12 usable cases ({count} given)" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()  # refused before any case was preprocessed
    assert not (tmp_path / "bundle").exists() and not (tmp_path / "cli").exists()


def test_a_site_of_one_case_is_refused(phantom_cohort, tmp_path, capsys):
    rows = _rows(phantom_cohort)
    site_a, (lonely, *site_b) = ([row for row in rows if row["site"] == site] for site in ("site-A", "site-B"))
    manifest = write_manifest(tmp_path / "manifest.csv", site_a + _one_site(site_b[:4]) + [lonely])  # 12 + 1
    with pytest.raises(InputError, match=rf"single usable case: site-B \({lonely['case_id']}\).*split .*site by "
                                         "site"):
        train_baseline(manifest, tmp_path / "bundle", DEFAULTS, cache_dir=tmp_path / "cache")
    assert main(_cli_train(manifest, tmp_path / "cli", tmp_path / "cache")) == 2
    assert "site-B" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "bundle").exists()


def test_too_few_cases_held_out_per_site_is_refused(phantom_cohort, tmp_path):
    """12 cases in two sites of 6: round(0.4 x 6) = 2 held out per site, 4 in all, one fewer than the 5 folds."""
    rows = _rows(phantom_cohort)
    six_each = [r for r in rows if r["site"] == "site-A"][:6] + [r for r in rows if r["site"] == "site-B"][:6]
    manifest = write_manifest(tmp_path / "manifest.csv", six_each)
    with pytest.raises(InputError, match=r"holds out only 4 cases for the heads \(site-A 2 of 6, site-B 2 of 6\).*"
                                         "at least 5"):
        train_baseline(manifest, tmp_path / "bundle", DEFAULTS, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_held_out_cases_without_any_fittable_head_are_refused(phantom_cohort, tmp_path):
    manifest = write_manifest(tmp_path / "manifest.csv", _unlabelled(_one_site(_rows(phantom_cohort))[:12]))
    with pytest.raises(InputError, match=r"no marker probe and no survival model can be fitted on the 5 cases held "
                                         r"out for the heads \(split B\): marker 'mgmt': need at least 2 positive"):
        train_baseline(manifest, tmp_path / "bundle", DEFAULTS, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_all_but_one_case_failing_to_load_is_refused_after_preprocessing(phantom_cohort, cache, tmp_path):
    rows = _one_site(_rows(phantom_cohort))
    manifest = write_manifest(tmp_path / "manifest.csv", rows[:1] + _broken(rows[1:], tmp_path / "broken"))
    with pytest.raises(InputError, match=r"needs at least 12 usable cases \(16 given, 15 failed to load: "
                                         rf"{rows[1]['case_id']}: .*broken-t1n.*; and 12 more\)"):
        train_baseline(manifest, tmp_path / "bundle", DEFAULTS, cache_dir=cache)
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize("change, option", [
    ({"epochs": 0}, "--epochs"), ({"batch_size": 0}, "--batch-size"), ({"learning_rate": -1.0}, "--lr"),
    ({"tumour_weight": -1.0}, "--tumour-weight"), ({"probe_fraction": 1.0}, "probe_fraction"),
    ({"probe_fraction": 0.0}, "probe_fraction"), ({"cam_layer": "layer9"}, "--cam-layer"),
    ({"encoder": EncoderConfig("resnet7")}, "--arch"),
    ({"encoder": EncoderConfig("resnet10", norm="instance")}, "--norm"),
])
def test_train_baseline_settings_that_cannot_work(change, option):
    with pytest.raises(SettingsError, match=f"^{option}: ") as error:
        replace(DEFAULTS, **change)
    assert error.value.setting == option


@pytest.mark.parametrize("options", [["--epochs", "0"], ["--batch-size", "0"], ["--arch", "resnet7"],
                                     ["--background-weight", "-1"]])
def test_cli_train_baseline_settings_that_cannot_work_exit_2(twelve_of_one_site, tmp_path, capsys, options):
    assert main(_cli_train(twelve_of_one_site, tmp_path / "out", tmp_path / "cache", *options)) == 2
    assert capsys.readouterr().err.startswith(f"error: {options[0]}: ")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


# --- fit-heads --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 4])
def test_fit_heads_refuses_too_few_cases_for_the_folds(smallest_bundle, phantom_cohort, tmp_path, capsys, count):
    manifest = write_manifest(tmp_path / "manifest.csv", _rows(phantom_cohort)[:count])
    with pytest.raises(InputError, match=rf"fitting the heads needs at least 5 usable cases \({count} given\): .*"
                                         "cross-validated in 5 folds"):
        fit_heads_bundle(smallest_bundle, manifest, tmp_path / "bundle", cache_dir=tmp_path / "cache", device="cpu")
    assert main(["fit-heads", "--model", str(smallest_bundle), "--manifest", str(manifest), "--out",
                 str(tmp_path / "cli"), "--cache", str(tmp_path / "cache"), "--device", "cpu",
                 "--progress", "none"]) == 2
    assert f"needs at least 5 usable cases ({count} given)" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "bundle").exists()


def test_fit_heads_refuses_a_cohort_too_small_for_any_head(smallest_bundle, phantom_cohort, tmp_path):
    rows = _unlabelled(_rows(phantom_cohort)[:6], keep=("idh1",))
    for row, label in zip(rows, "100000"):  # one positive: too few for the one marker left
        row["idh1"] = label
    manifest = write_manifest(tmp_path / "manifest.csv", rows)
    with pytest.raises(InputError, match=r"no marker probe and no survival model can be fitted on the 6 usable "
                                         r"cases: .*'idh1': need at least 2 positive and 2 negative cases, got \[5, 1\]"
                                         r".*survival: need at least 10 cases"):
        fit_heads_bundle(smallest_bundle, manifest, tmp_path / "bundle", cache_dir=tmp_path / "cache", device="cpu")
    assert not (tmp_path / "cache").exists()


def test_fit_heads_still_skips_a_marker_without_enough_positives(smallest_bundle, phantom_cohort, cache, tmp_path):
    rows = _unlabelled(_rows(phantom_cohort)[:6], keep=("mgmt", "idh1"))
    for row, (mgmt, idh1) in zip(rows, ["10", "10", "00", "00", "01", "00"]):
        row["mgmt"], row["idh1"] = mgmt, idh1
    manifest = write_manifest(tmp_path / "manifest.csv", rows)
    out = fit_heads_bundle(smallest_bundle, manifest, tmp_path / "bundle", cache_dir=cache, device="cpu")
    bundle = load_bundle(out)
    assert [marker.key for marker in bundle.heads.markers] == ["mgmt"] and bundle.heads.cox is None
    skipped = bundle.card["training"]["heads"]["skipped_heads"]
    assert skipped["idh1"] == "marker 'idh1': need at least 2 positive and 2 negative cases, got [5, 1]"
    assert set(skipped) == set(MARKER_KEYS) - {"mgmt"} | {"survival"}


def test_fit_heads_refuses_when_failing_cases_leave_too_few(smallest_bundle, phantom_cohort, cache, tmp_path,
                                                            capsys):
    rows = _rows(phantom_cohort)[:6]
    manifest = write_manifest(tmp_path / "manifest.csv", rows[:4] + _broken(rows[4:], tmp_path / "broken"))
    assert main(["fit-heads", "--model", str(smallest_bundle), "--manifest", str(manifest), "--out",
                 str(tmp_path / "cli"), "--cache", str(cache), "--device", "cpu", "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert f"fitting the heads needs at least 5 usable cases (6 given, 2 failed to load: {rows[4]['case_id']}" in err
    assert not (tmp_path / "cli").exists()


# --- pretrain ---------------------------------------------------------------------------------------------------


def _pretrain(manifest: Path, tmp_path: Path, cache: Path, settings: PretrainSettings = PRETRAIN, **kw) -> Path:
    return pretrain(manifest, tmp_path / "encoder", settings, cache_dir=cache, checkpoint_path=tmp_path / "ckpt.pt",
                    **kw)


@pytest.mark.parametrize("count, batch", [(1, 2), (3, 4)])
def test_pretrain_refuses_fewer_cases_than_a_batch_before_preprocessing(phantom_cohort, tmp_path, capsys, count,
                                                                        batch):
    manifest = write_manifest(tmp_path / "manifest.csv", _rows(phantom_cohort)[:count])
    with pytest.raises(InputError, match=rf"pretraining needs at least {batch} usable cases \({count} given\): "
                                         rf"one optimizer step takes a global batch of {batch} cases"):
        _pretrain(manifest, tmp_path, tmp_path / "cache", replace(PRETRAIN, batch_size=batch))
    assert main(["pretrain", "--manifest", str(manifest), "--method", "byol", "--out", str(tmp_path / "cli"),
                 "--cache", str(tmp_path / "cache"), *PRETRAIN_CLI, "--batch-size", str(batch)]) == 2
    assert f"needs at least {batch} usable cases ({count} given)" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "encoder").exists()


def test_pretrain_on_one_case_with_a_batch_of_one_trains(phantom_cohort, cache, tmp_path):
    """Documented: one case and --batch-size 1 is a (degenerate) run, not an error; one group means ERM."""
    manifest = write_manifest(tmp_path / "manifest.csv", _rows(phantom_cohort)[:1])
    with pytest.warns(UserWarning, match="only one group"):
        path = _pretrain(manifest, tmp_path, cache, replace(PRETRAIN, batch_size=1))
    training = load_bundle(path).card["training"]
    assert training["cases"] == 1 and training["steps"] == 1 and training["dro"] == "erm"


def test_pretrain_refuses_when_failing_cases_leave_less_than_a_batch(phantom_cohort, cache, tmp_path):
    rows = _rows(phantom_cohort)[:3]
    manifest = write_manifest(tmp_path / "manifest.csv", rows[:1] + _broken(rows[1:], tmp_path / "broken"))
    with pytest.raises(InputError, match=r"pretraining needs at least 2 usable cases \(3 given, 2 failed to load: "
                                         rf"{rows[1]['case_id']}: "):
        _pretrain(manifest, tmp_path, cache)
    assert not (tmp_path / "encoder").exists() and not (tmp_path / "ckpt.pt").exists()


def test_pretrain_group_column_with_empty_cells_is_refused_before_preprocessing(phantom_cohort, tmp_path, capsys):
    rows = [dict(row, scanner="" if index == 2 else f"scanner-{index % 2}")
            for index, row in enumerate(_rows(phantom_cohort)[:4])]
    manifest = write_manifest(tmp_path / "manifest.csv", rows)
    with pytest.raises(InputError, match=rf"case {rows[2]['case_id']} has no value in group column 'scanner'"):
        _pretrain(manifest, tmp_path, tmp_path / "cache", replace(PRETRAIN, group_column="scanner"))
    assert main(["pretrain", "--manifest", str(manifest), "--method", "byol", "--out", str(tmp_path / "cli"),
                 "--cache", str(tmp_path / "cache"), *PRETRAIN_CLI, "--dro", "--group-column", "scanner"]) == 2
    assert "has no value in group column 'scanner'" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("change, option", [
    ({"method": "moco", "batch_size": 2, "accumulate": 2}, "--batch-size"), ({"eta_q": -1.0}, "--eta-q"),
    ({"dro_adjustment": -0.5}, "--dro-adjustment"), ({"checkpoint_every": 0}, "--checkpoint-every"),
    ({"num_workers": -1}, "--workers"), ({"learning_rate": 0.0}, "--lr"), ({"warmup_fraction": 1.5}, "--warmup"),
    ({"method": "mae", "crop_size": 40}, "--crop"), ({"encoder": EncoderConfig("resnet7")}, "--arch"),
    ({"method_settings": MethodSettings(mae_mask_ratio=1.0), "method": "mae"}, "--mask-ratio"),
    ({"method_settings": MethodSettings(dino_head_norm="group"), "method": "dino"}, "--dino-head-norm"),
])
def test_pretrain_settings_that_cannot_work(change, option):
    with pytest.raises(SettingsError, match=f"^{option}: ") as error:
        replace(PRETRAIN, **change)
    assert error.value.setting == option


@pytest.mark.parametrize("options", [
    ["--eta-q", "-1"], ["--checkpoint-every", "0"], ["--method", "mae", "--crop", "40"],
    ["--method", "moco", "--accumulate", "2"], ["--batch-size", "3", "--accumulate", "2"],
])
def test_cli_pretrain_settings_that_cannot_work_exit_2(phantom_cohort, tmp_path, capsys, options):
    manifest = write_manifest(tmp_path / "manifest.csv", _rows(phantom_cohort)[:4])
    command = ["pretrain", "--manifest", str(manifest), "--method", "byol", "--out", str(tmp_path / "cli"),
               "--cache", str(tmp_path / "cache"), *PRETRAIN_CLI, "--dro", *options]
    assert main(command) == 2  # (argparse keeps the last --method / --batch-size given)
    assert "error: --" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "cli").exists()


def test_resume_with_other_groups_is_refused_before_preprocessing(phantom_cohort, cache, tmp_path):
    rows = _rows(phantom_cohort)
    two_sites = [next(r for r in rows if r["site"] == site) for site in ("site-A", "site-B")]
    first = write_manifest(tmp_path / "first.csv", two_sites)
    _pretrain(first, tmp_path, cache, stop_after=1)
    relabelled = write_manifest(tmp_path / "relabelled.csv", [dict(r, site=r["site"].replace("site-B", "site-C"))
                                                      for r in two_sites])
    before = (tmp_path / "ckpt.pt").read_bytes()
    with pytest.raises(CheckpointError, match=r"groups site-A, site-B in column 'site'; the manifest now gives "
                                              "site-A, site-C"):
        _pretrain(relabelled, tmp_path, tmp_path / "other-cache", resume=True)
    assert (tmp_path / "ckpt.pt").read_bytes() == before and not (tmp_path / "other-cache").exists()


def test_the_encoder_and_heads_split_keeps_every_patients_scans_together():
    """A follow-up scan of a patient the encoder trained on must not be among the heads' held-out cases."""
    import numpy as np

    from neuroradfm.train.baseline import _split

    rng = np.random.default_rng(0)
    for seed in range(50):
        sites = [f"site-{k}" for k in rng.integers(0, 3, size=40)]
        subjects = [f"P{k}" for k in rng.integers(0, 18, size=40)]  # about 2 scans per patient
        a, b = _split(sites, 0.4, seed, subjects)
        assert sorted([*a, *b]) == list(range(40))
        assert not {subjects[i] for i in a} & {subjects[i] for i in b}
        for site in set(sites):  # every site still in both splits when it has two patients or more
            patients = {subjects[i] for i in range(40) if sites[i] == site}
            if len(patients) >= 2:
                assert any(sites[i] == site for i in a) and any(sites[i] == site for i in b)
    # one case per patient: the split is the case-by-case split of earlier versions (same seed, same cases)
    sites = [f"site-{k}" for k in rng.integers(0, 3, size=30)]
    singletons = [str(i) for i in range(30)]
    assert all(np.array_equal(x, y) for x, y in zip(_split(sites, 0.4, 7), _split(sites, 0.4, 7, singletons)))
    # a site of two patients, the first drawn smaller than split B's share: the second still trains the encoder
    for seed in range(20):
        a, b = _split(["s"] * 4, 0.4, seed, ["P1", "P2", "P2", "P2"])
        assert len(a) and len(b)
