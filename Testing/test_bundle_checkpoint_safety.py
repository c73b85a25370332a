"""Malformed bundle cards and damaged training checkpoints are refused with errors that name what is wrong.

Bundles: every field the loader and prediction read is checked against a JSON Schema plus the checks across
fields (lengths against embedding_dim, the tensors the card names), each problem named by its path in the card;
tampered cards get a recomputed content hash, so that the card check (not the hash) is what refuses.
Checkpoints: a byte flipped inside a stored tensor (bad CRC), a truncated file, a missing or mismatching
checksum sidecar and a foreign pickle are refused before torch resumes from them, and nothing is modified.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from neuroradfm.cli import main
from neuroradfm.demo import demo_bundle_path
from neuroradfm.errors import BundleError
from neuroradfm.models.bundle import CARD, WEIGHTS, content_hash, load_bundle, save_bundle
from neuroradfm.models.card_schema import CARD_SCHEMA, CardValidator, card_problems
from neuroradfm.train import checkpoint
from neuroradfm.train.checkpoint import CheckpointError, checksum_path, load_checkpoint, save_checkpoint, write_checksum

# --- bundle cards ------------------------------------------------------------------------------------------------


def _rehash(folder: Path, card: dict) -> None:
    """Write ``card`` with a content hash that fits it: a consistent bundle, as a foreign writer would make."""
    card.pop("content_hash", None)
    card["content_hash"] = content_hash(card, folder / WEIGHTS)
    (folder / CARD).write_text(json.dumps(card))


def _tampered(tiny_bundle: Path, tmp_path: Path, edit) -> Path:
    folder = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, folder)
    card = json.loads((folder / CARD).read_text())
    edit(card)
    _rehash(folder, card)
    return folder


def _set(path: list, value):
    def edit(card):
        target = card
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
    return edit


def _delete(path: list):
    def edit(card):
        target = card
        for part in path[:-1]:
            target = target[part]
        del target[path[-1]]
    return edit


def _shorten(path: list):
    def edit(card):
        target = card
        for part in path:
            target = target[part]
        target.pop()
    return edit


CARD_CASES = {
    "threshold null": (_set(["heads", "markers", 0, "threshold"], None),
                       "heads.markers[0].threshold: expected a number, got null"),
    "threshold above 1": (_set(["heads", "markers", 0, "threshold"], 1.5),
                          "heads.markers[0].threshold: must be between 0 and 1, got 1.5"),
    "threshold missing": (_delete(["heads", "markers", 0, "threshold"]), "heads.markers[0].threshold: missing"),
    "coef of the wrong length": (_shorten(["heads", "markers", 0, "coef"]),
                                 "heads.markers[0].coef: expected 64 values (embedding_dim is 64), got 63"),
    "feature_scale of 0": (_set(["heads", "feature_scale", 5], 0),
                           "heads.feature_scale[5]: must be greater than 0, got 0"),
    "a string for a number": (_set(["heads", "markers", 0, "intercept"], "0.5"),
                              "heads.markers[0].intercept: expected a number, got '0.5'"),
    "unknown cam_layer": (_set(["heads", "cam_layer"], "layer9"),
                          "heads.cam_layer: unknown Grad-CAM layer 'layer9'; choose one of layer1"),
    "unknown marker key": (_set(["heads", "markers", 0, "key"], "idh9"),
                           "heads.markers[0].key: unknown marker 'idh9'; choose one of mgmt, idh1"),
    "baseline survival above 1": (_set(["heads", "cox", "baseline_survival", 0], 1.5),
                                  "heads.cox.baseline_survival[0]: must be between 0 and 1, got 1.5"),
    "baseline survival shorter than the times": (_shorten(["heads", "cox", "baseline_survival"]),
                                                 "heads.cox.baseline_survival: expected {n} values (as many as "
                                                 "heads.cox.baseline_times), got {n_1}"),
    "NaN OOD threshold": (_set(["heads", "ood", "threshold"], math.nan),
                          "heads.ood.threshold: expected a finite number, got NaN"),
    "cam_reference names no tensor": (_set(["heads", "cam_reference"], "heads.cam.nope"),
                                      "heads.cam_reference: names the tensor 'heads.cam.nope', which is not in "
                                      "weights.safetensors"),
    "embedding_dim against the architecture": (_set(["embedding_dim"], 32),
                                               "embedding_dim: the architecture (resnet10) gives 64 features, the "
                                               "card says 32"),
    "preprocessing spacing 0": (_set(["preprocessing", "spacing_mm"], 0),
                                "preprocessing.spacing_mm: must be between 0.25 and 10, got 0"),
    "preprocessing spacing 1e6": (_set(["preprocessing", "spacing_mm"], 1e6),
                                  "preprocessing.spacing_mm: must be between 0.25 and 10, got 1000000.0"),
    "misspelt heads field": (_set(["heads", "cam_layr"], "layer2"), "heads.cam_layr: not a field of a bundle card"),
}


@pytest.mark.parametrize("case", CARD_CASES, ids=list(CARD_CASES))
def test_malformed_card_field_is_refused_by_its_path(tiny_bundle, tmp_path, case):
    edit, expected = CARD_CASES[case]
    folder = _tampered(tiny_bundle, tmp_path, edit)
    times = len(json.loads((folder / CARD).read_text())["heads"]["cox"]["baseline_times"])
    with pytest.raises(BundleError) as error:
        load_bundle(folder)
    message = str(error.value)
    assert message.startswith(f"{folder / CARD}: ")
    assert expected.format(n=times, n_1=times - 1) in message
    assert "content hash" not in message


def test_several_malformed_fields_are_reported_at_once(tiny_bundle, tmp_path):
    def edit(card):
        card["heads"]["markers"][0]["threshold"] = None
        card["heads"]["feature_scale"][1] = "wide"
        card["heads"]["cox"]["baseline_survival"][0] = -0.1
        card["architecture"]["norm"] = "layer"

    folder = _tampered(tiny_bundle, tmp_path, edit)
    with pytest.raises(BundleError) as error:
        load_bundle(folder)
    message = str(error.value)
    for part in ("heads.markers[0].threshold: expected a number, got null",
                 "heads.feature_scale[1]: expected a number, got 'wide'",
                 "heads.cox.baseline_survival[0]: must be between 0 and 1, got -0.1",
                 "architecture.norm: unknown normalisation 'layer'; choose one of batch, group"):
        assert part in message


def _rewrite_tensor(folder: Path, name: str, value: torch.Tensor) -> None:
    tensors = load_file(str(folder / WEIGHTS))
    tensors[name] = value
    save_file(tensors, str(folder / WEIGHTS))
    _rehash(folder, json.loads((folder / CARD).read_text()))


@pytest.mark.parametrize("name, shape, expected", [
    ("heads.ood.precision", (64, 63), "heads.ood.precision: the tensor 'heads.ood.precision' has shape [64, 63], "
                                      "expected [64, 64] (embedding_dim squared)"),
    ("heads.cam.reference", (16, 12, 12, 11), "heads.cam_reference: the tensor 'heads.cam.reference' has shape "
                                              "[16, 12, 12, 11], expected [16, 12, 12, 12] (the layer2 activation "
                                              "on the 48 x 48 x 48 model grid)"),
])
def test_tensor_the_card_names_with_the_wrong_shape_is_refused(tiny_bundle, tmp_path, name, shape, expected):
    folder = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, folder)
    _rewrite_tensor(folder, name, torch.zeros(shape, dtype=torch.float64))
    with pytest.raises(BundleError) as error:
        load_bundle(folder)
    assert str(error.value) == f"{folder / CARD}: {expected}"


def test_missing_path_and_a_file_are_named_as_such(tmp_path):
    with pytest.raises(BundleError, match="does not exist") as error:
        load_bundle(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(error.value)
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"not a folder")
    with pytest.raises(BundleError, match="is a file, not a model bundle") as error:
        load_bundle(file)
    assert str(file) in str(error.value)


def test_cli_reports_a_malformed_card_with_exit_status_2(tiny_bundle, tmp_path, capsys):
    folder = _tampered(tiny_bundle, tmp_path, _set(["heads", "markers", 0, "threshold"], None))
    assert main(["info", str(folder)]) == 2
    assert "heads.markers[0].threshold: expected a number, got null" in capsys.readouterr().err


def test_save_bundle_never_writes_a_malformed_card(tiny_bundle, tmp_path):
    bundle = load_bundle(tiny_bundle)
    heads = copy.deepcopy(bundle.heads)
    heads.markers[0].threshold = 1.5
    heads.feature_scale[3] = np.nan
    out = tmp_path / "out"
    with pytest.raises(BundleError) as error:
        save_bundle(out, bundle.encoder, heads, bundle.preprocessing, {"name": "malformed"})
    message = str(error.value)
    assert message.startswith(f"{out / CARD}: ") and "nothing was written" in message
    assert "heads.markers[0].threshold: must be between 0 and 1, got 1.5" in message
    assert "heads.feature_scale[3]: expected a finite number, got NaN" in message
    assert list(tmp_path.iterdir()) == []  # neither the bundle nor a staging folder


def test_schema_is_valid_and_the_shipped_demo_card_passes_it():
    CardValidator.check_schema(CARD_SCHEMA)
    assert card_problems(json.loads((demo_bundle_path() / CARD).read_text())) == []


# --- training checkpoints ----------------------------------------------------------------------------------------


def _checkpoint(tmp_path: Path) -> Path:
    return save_checkpoint(tmp_path / "ckpt.pt", {"fingerprint": {"method": "byol"}, "step": 3,
                                                  "model": {"w": torch.arange(4096, dtype=torch.float32)},
                                                  "rng": checkpoint.rng_state()})


def _refused(path: Path, match: str) -> str:
    """Load must refuse ``path`` and leave it and its sidecar as they were; returns the message."""
    sidecar = checksum_path(path)
    before = (path.read_bytes(), sidecar.read_bytes() if sidecar.exists() else None)
    with pytest.raises(CheckpointError, match=match) as error:
        load_checkpoint(path, {"method": "byol"})
    assert (path.read_bytes(), sidecar.read_bytes() if sidecar.exists() else None) == before
    message = str(error.value)
    assert "weights_only" not in message
    return message


def test_good_checkpoint_resumes_and_has_a_sha256sum_sidecar(tmp_path):
    path = _checkpoint(tmp_path)
    assert checksum_path(path).read_text() == f"{hashlib.sha256(path.read_bytes()).hexdigest()}  ckpt.pt\n"
    state = load_checkpoint(path, {"method": "byol"})
    assert state["format"] == checkpoint.FORMAT and state["step"] == 3
    assert torch.equal(state["model"]["w"], torch.arange(4096, dtype=torch.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt", "ckpt.pt.sha256"]  # no staging leftovers


def _flip_byte_in_tensor(path: Path) -> str:
    """Flip one byte inside the stored tensor data (the zip member's CRC no longer fits); returns the member."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("/data/0"))
    with open(path, "r+b") as handle:
        handle.seek(info.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", handle.read(4))
        handle.seek(info.header_offset + 30 + name_length + extra_length + 100)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0x40]))
    return info.filename


@pytest.mark.parametrize("sidecar", ["kept", "recomputed", "missing"])
def test_byte_flipped_in_a_stored_tensor_is_refused(tmp_path, sidecar):
    path = _checkpoint(tmp_path)
    member = _flip_byte_in_tensor(path)
    assert torch.load(path, weights_only=True)["step"] == 3  # torch itself would resume from it
    if sidecar == "recomputed":  # e.g. checksummed after the damage: the zip's CRCs still tell
        write_checksum(path)
    elif sidecar == "missing":
        checksum_path(path).unlink(missing_ok=True)
    message = _refused(path, "corrupt checkpoint")
    assert f"member {member!r} fails its CRC check" in message and "without --resume" in message


def test_truncated_checkpoint_is_refused(tmp_path):
    path = _checkpoint(tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    message = _refused(path, "corrupt or truncated checkpoint")
    assert "start again without --resume, or restore the file" in message


def test_missing_sidecar_is_refused(tmp_path):
    path = _checkpoint(tmp_path)
    checksum_path(path).unlink(missing_ok=True)
    message = _refused(path, "checksum file ckpt.pt.sha256 is missing")
    assert "without --resume" in message


def test_sidecar_that_does_not_match_is_refused(tmp_path):
    path = _checkpoint(tmp_path)
    other = save_checkpoint(tmp_path / "other.pt", {"fingerprint": {"method": "byol"}, "step": 4})
    shutil.copyfile(checksum_path(other), checksum_path(path))
    message = _refused(path, "does not match its checksum in ckpt.pt.sha256")
    assert "restore the file" in message
    checksum_path(path).write_text("not a checksum\n")
    _refused(path, "not a SHA-256 checksum file")


def test_foreign_pickle_is_refused_without_torchs_weights_only_advice(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"format": checkpoint.FORMAT, "version": 1, "args": argparse.Namespace(lr=0.1)}, path)
    write_checksum(path)  # intact and checksummed: only torch's safe loader can refuse it
    message = _refused(path, "corrupt or unreadable checkpoint")
    assert "argparse.Namespace" in message and "can still be loaded" not in message
    assert "weights_only=False" not in message
