"""Any non-empty subset of the four sequences through the loader, the preprocessing and ``predict``: the data side
of issue 17 (a bundle says which subsets it was trained for; bundles from before say all four)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from neuroradfm import SEQUENCES
from neuroradfm.cli import main
from neuroradfm.errors import InputError
from neuroradfm.io import load_case, read_manifest
from neuroradfm.io.case import reference_key
from neuroradfm.models.bundle import load_bundle
from neuroradfm.predict import predict_case
from neuroradfm.preprocess import PreprocessSettings, preprocess_case

QUICK = PreprocessSettings(spacing_mm=4.0, size=(48, 48, 48), n4=False)


@pytest.fixture(scope="module")
def entry(phantom_cohort):
    return read_manifest(phantom_cohort)[0]


def test_the_reference_is_the_first_sequence_the_case_has():
    assert reference_key(SEQUENCES) == "t1ce"
    assert reference_key(("t1", "t2", "flair")) == "t1"
    assert reference_key(("t2", "flair")) == "flair" and reference_key(("t2",)) == "t2"
    assert reference_key(("t1", "t1ce"), first="t1") == "t1"  # the setting wins when the case has it
    with pytest.raises(ValueError, match="at least one of"):
        reference_key(())


def test_a_missing_sequence_is_a_zero_channel_and_outputs_go_onto_the_first_one_present(entry):
    full = preprocess_case(entry.load(), QUICK)
    no_t2 = preprocess_case(load_case({k: v for k, v in entry.paths.items() if k != "t2"}), QUICK)
    assert no_t2.available == ("t1", "t1ce", "flair") and full.available == SEQUENCES
    assert no_t2.channels.shape == full.channels.shape and no_t2.channels.dtype == np.float32
    assert not no_t2.channels[SEQUENCES.index("t2")].any()
    for key in ("t1", "t1ce", "flair"):  # the others as before: same reference, same registration
        np.testing.assert_allclose(no_t2.channels[SEQUENCES.index(key)], full.channels[SEQUENCES.index(key)],
                                   atol=1e-5)
    assert "missing t2: zeros" in no_t2.steps["normalise"]
    t2_only = preprocess_case(load_case({"t2": entry.paths["t2"], "flair": entry.paths["flair"]}), QUICK)
    flair = sitk.ReadImage(str(entry.paths["flair"]))
    assert t2_only.available == ("t2", "flair")
    assert t2_only.reference.GetSize() == flair.GetSize() and t2_only.reference.GetOrigin() == flair.GetOrigin()
    assert not t2_only.channels[[SEQUENCES.index("t1"), SEQUENCES.index("t1ce")]].any()


def test_predict_refuses_a_subset_the_bundle_was_not_trained_for_and_writes_nothing(entry, tiny_bundle, tmp_path,
                                                                                   capsys):
    files = [f"--{k}={entry.paths[k]}" for k in ("t1", "t1ce", "flair")]
    out = tmp_path / "out"
    assert main(["predict", *files, "--model", str(tiny_bundle), "--out", str(out), "--device", "cpu",
                 "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert "has T1 + T1CE + FLAIR (no T2); the bundle tiny-test-bundle was trained for: T1 + T1CE + T2 + FLAIR" in err
    assert not out.exists() or not any(out.iterdir())


def test_a_bundle_trained_for_a_subset_predicts_it_on_the_first_present_grid(entry, tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    bundle.card["sequence_subsets"] = [list(SEQUENCES), ["t1", "t1ce", "flair"]]  # as a dropout-trained card says
    case = load_case({k: v for k, v in entry.paths.items() if k in ("t1", "t1ce", "flair")}, case_id="no-t2")
    prediction = predict_case(case, bundle, device="cpu")
    assert prediction.preprocessed.available == ("t1", "t1ce", "flair")
    assert np.isfinite(prediction.embedding).all() and prediction.markers
    reference = sitk.ReadImage(str(entry.paths["t1ce"]))
    key, cam = next(iter(prediction.cams.items()))
    on_reference = prediction.preprocessed.to_reference(cam)  # what the outputs write: the T1ce's own grid
    assert on_reference.GetSize() == reference.GetSize() and on_reference.GetOrigin() == reference.GetOrigin()
    with pytest.raises(InputError, match="trained for: T1 \\+ T1CE \\+ T2 \\+ FLAIR; T1 \\+ T1CE \\+ FLAIR"):
        predict_case(load_case({"t2": entry.paths["t2"]}, case_id="t2-only"), bundle, device="cpu")


def test_a_manifest_with_an_incomplete_row_isolates_it(entry, phantom_cohort, tiny_bundle, tmp_path, capsys):
    rows = read_manifest(phantom_cohort)[:2]
    manifest = tmp_path / "m.csv"
    lines = ["case_id,site,t1,t1ce,t2,flair"]
    for n, row in enumerate(rows):
        paths = {k: str(row.paths[k]) for k in SEQUENCES}
        if n == 1:
            paths["t2"] = ""
        lines.append(",".join([row.case_id, "s", *(paths[k] for k in SEQUENCES)]))
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert main(["predict", str(manifest), "--model", str(tiny_bundle), "--out", str(out), "--device", "cpu",
                 "--progress", "none", "--no-overview"]) == 1  # some cases failed
    assert f"FAILED {rows[1].case_id}: " in capsys.readouterr().err
    assert (out / rows[0].case_id / "predictions.json").is_file() and not (out / rows[1].case_id).exists()
    failures = (out / "failures.csv").read_text(encoding="utf-8")
    assert "no T2" in failures
    assert json.loads((out / rows[0].case_id / "predictions.json").read_text(encoding="utf-8"))


def test_a_blank_sequence_is_an_error_unless_allow_missing_leaves_it_out(entry, tiny_bundle, tmp_path, capsys):
    blank = sitk.ReadImage(str(entry.paths["t2"]))
    blank = sitk.Image(blank.GetSize(), blank.GetPixelID()) + 0  # every voxel 0: an empty series
    blank.CopyInformation(sitk.ReadImage(str(entry.paths["t2"])))
    blank_file = tmp_path / "blank-t2.nii.gz"
    sitk.WriteImage(blank, str(blank_file))
    files = {**entry.paths, "t2": blank_file}
    files.pop("seg", None)
    with pytest.raises(InputError, match="blank-t2.nii.gz: brain mask is empty .* every voxel of the image is 0"):
        preprocess_case(load_case(files), QUICK)
    prepared = preprocess_case(load_case(files), QUICK, allow_missing=True)
    assert prepared.available == ("t1", "t1ce", "flair") and not prepared.channels[SEQUENCES.index("t2")].any()
    assert "every voxel of the image is 0" in prepared.steps["t2 left out"]
    arguments = [*(f"--{k}={v}" for k, v in files.items()), "--model", str(tiny_bundle), "--device", "cpu",
                 "--progress", "none", "--no-overview"]
    assert main(["predict", *arguments, "--out", str(tmp_path / "a"), "--allow-missing"]) == 2
    assert "has T1 + T1CE + FLAIR (no T2); the bundle tiny-test-bundle was trained for" in capsys.readouterr().err
    assert main(["predict", *arguments, "--out", str(tmp_path / "b")]) == 2
    assert "blank-t2.nii.gz" in capsys.readouterr().err
    everything_blank = {k: blank_file for k in ("t2",)}
    with pytest.raises(InputError, match="every sequence is empty or constant"):
        preprocess_case(load_case(everything_blank), QUICK, allow_missing=True)
