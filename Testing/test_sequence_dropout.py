"""One encoder for every sequence subset (issue 17): the availability mask the encoder reads off its input, sequence
dropout and artifact augmentation in both trainers, the card's trained subsets and per-subset held-out AUC, and
the trainers' handling of cases that lack a sequence."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import TINY_SETTINGS
from neuroradfm import SEQUENCES
from neuroradfm.errors import BundleError, SettingsError
from neuroradfm.io import read_manifest
from neuroradfm.models.bundle import load_bundle
from neuroradfm.models.encoder import Encoder, EncoderConfig, with_availability_mask
from neuroradfm.predict import predict_case
from neuroradfm.ssl import MethodSettings
from neuroradfm.ssl.augment import degrade
from neuroradfm.ssl.mae import MAE
from neuroradfm.subsets import ALL_FOUR, EVALUATED_SUBSETS, all_subsets, drop_sequences, keep_only
from neuroradfm.train.baseline import BaselineSettings, train_baseline
from neuroradfm.train.cohort import cache_cohort
from neuroradfm.train.data import PretrainDataset

SMALL = EncoderConfig("resnet10", widen_factor=0.125, conv1_stride=2, no_max_pool=True)


def test_the_encoder_reads_which_sequences_are_there_off_its_input():
    encoder = Encoder(replace(SMALL, availability_mask=True)).eval()
    x = torch.randn(2, 4, 16, 16, 16)
    x[1, 2] = 0  # case 1 has no T2
    wide = encoder.network_input(x)
    assert wide.shape == (2, 8, 16, 16, 16) and encoder.net.conv1.weight.shape[1] == 8
    assert wide[0, 4:].eq(1).all() and wide[1, 6].eq(0).all() and wide[1, [4, 5, 7]].eq(1).all()
    assert torch.equal(wide[:, :4], x)
    # the mask changes the embedding: a zero channel is not the same input as a missing one
    with torch.no_grad():
        plain = Encoder(SMALL).eval()
        state = encoder.state_dict()
        plain.load_state_dict({k: (v[:, :4] if k == "net.conv1.weight" else v) for k, v in state.items()})
        assert not torch.allclose(plain(x)[1][1], encoder(x)[1][1])
        assert Encoder(SMALL).network_input(x) is x


def test_widening_a_pretrained_encoder_keeps_its_outputs_until_it_is_trained():
    old = Encoder(SMALL).eval()
    wide = with_availability_mask(old).eval()
    x = torch.randn(3, 4, 16, 16, 16)
    x[2, :3] = 0
    with torch.no_grad():
        assert torch.allclose(old(x)[1], wide(x)[1], atol=1e-6)
    assert wide.config.availability_mask and with_availability_mask(wide) is wide


def test_dropout_never_drops_every_sequence_and_keeps_missing_ones_missing():
    rng = np.random.default_rng(0)
    present = np.array([True, True, False, True])
    draws = np.array([drop_sequences(present, 0.5, rng) for _ in range(4000)])
    assert draws.any(axis=1).all() and not draws[:, 2].any()
    # each present sequence is kept about half the time (a little more: the one kept when all would go)
    assert np.all(np.abs(draws[:, [0, 1, 3]].mean(axis=0) - 0.54) < 0.04)
    assert (drop_sequences(present, 0.0, rng) == present).all()
    inputs = np.ones((2, 4, 3, 3, 3), np.float32)
    kept = keep_only(inputs, ("t1ce", "flair")).reshape(2, 4, -1).any(axis=2)
    assert kept.tolist() == [[False, True, False, True]] * 2
    assert inputs.all()  # a copy


def test_degrade_is_reproducible_and_a_missing_sequence_stays_missing():
    channels = np.random.default_rng(1).normal(size=(4, 24, 24, 24)).astype(np.float32)
    channels[:, :4] = 0  # background
    channels[1] = 0  # no T1ce
    assert degrade(channels, np.random.default_rng(0)) is channels  # nothing asked: unchanged, not copied
    a = degrade(channels, np.random.default_rng(5), sequence_dropout=0.5, artifact_probability=1.0)
    b = degrade(channels, np.random.default_rng(5), sequence_dropout=0.5, artifact_probability=1.0)
    assert np.array_equal(a, b) and not np.array_equal(a, channels)
    assert not a[1].any() and a.reshape(4, -1).any(axis=1).sum() >= 1
    assert channels[0].any()  # the input is left alone


def test_pretraining_views_drop_sequences_and_mae_reconstructs_them(phantom_cohort, tmp_path):
    from neuroradfm.preprocess import PreprocessSettings

    entries = read_manifest(phantom_cohort)[:2]
    cohort = cache_cohort(entries, PreprocessSettings(spacing_mm=4.0, size=(48, 48, 48), n4=False), tmp_path)
    dataset = PretrainDataset(cohort, [0, 0], crop_size=32, seed=0, mask_patch=8, mask_ratio=0.5, strength=1.0,
                              sequence_dropout=0.6)
    samples = [dataset[i % 2] for i in range(2)] + [dataset[0]]
    dataset.epoch = 1
    samples += [dataset[0] for _ in range(3)]
    dropped_any = False
    for sample in samples:
        kept = sample["view1"].flatten(1).ne(0).any(dim=1)
        assert kept.any() and sample["target"].flatten(1).ne(0).any(dim=1).all()  # the target has every sequence
        dropped_any |= not bool(kept.all())
    assert dropped_any
    assert torch.equal(samples[0]["view1"], samples[2]["view1"])  # the same (seed, epoch, case): the same draw

    encoder = Encoder(replace(SMALL, availability_mask=True))
    mae = MAE(encoder, MethodSettings(mae_decoder_dim=8), crop_size=32)
    batch = {k: torch.stack([s[k] for s in samples[:2]]) for k in ("view1", "target", "mask")}
    loss = mae(batch)
    assert loss.shape == (2,) and torch.isfinite(loss).all()
    # a dropped sequence counts in full: the loss changes when the target of a dropped channel changes
    dropped = [(i, c) for i in range(2) for c in range(4) if not batch["view1"][i, c].any()]
    if dropped:
        i, c = dropped[0]
        changed = {**batch, "target": batch["target"].clone()}
        changed["target"][i, c] += 1.0
        assert not torch.allclose(mae(changed)[i], loss[i])


def test_training_with_dropout_takes_incomplete_cases_and_records_subsets(phantom_cohort, tmp_path):
    rows = list(csv.DictReader(phantom_cohort.open(encoding="utf-8")))
    folder = phantom_cohort.parent
    for row in rows:
        for key in ("t1", "t1ce", "t2", "flair", "seg"):
            if row.get(key):
                row[key] = str((folder / row[key]).resolve())
    rows[1]["t2"] = ""  # one case without T2 and one with T1ce only
    rows[2]["t1"] = rows[2]["t2"] = rows[2]["flair"] = ""
    manifest = tmp_path / "incomplete.csv"
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    refused = load_bundle(train_baseline(manifest, tmp_path / "all-four", TINY_SETTINGS, cache_dir=tmp_path / "cache"))
    failed = refused.card["training"]["failed_cases"]
    assert set(failed) == {rows[1]["case_id"], rows[2]["case_id"]}
    assert "lacks t2: the encoder is trained for all four sequences only" in failed[rows[1]["case_id"]]
    assert "--sequence-dropout" in failed[rows[2]["case_id"]] and refused.sequence_subsets == [ALL_FOUR]
    assert "subset_reliability" in refused.card  # the all-four row at least
    assert [r["sequences"] for r in refused.card["subset_reliability"]["subsets"]] == [list(ALL_FOUR)]

    settings = replace(TINY_SETTINGS, sequence_dropout=0.3, artifact_augment=0.5)
    path = train_baseline(manifest, tmp_path / "bundle", settings, cache_dir=tmp_path / "cache")
    bundle = load_bundle(path)
    assert bundle.encoder.config.availability_mask
    assert sorted(bundle.sequence_subsets) == sorted(all_subsets()) and len(bundle.sequence_subsets) == 15
    reliability = bundle.card["subset_reliability"]
    assert [tuple(r["sequences"]) for r in reliability["subsets"]] == list(EVALUATED_SUBSETS)
    held_out = len(bundle.card["training"]["heads_case_ids"])
    assert reliability["cases"] == held_out - sum(c in bundle.card["training"]["heads_case_ids"]
                                                  for c in (rows[1]["case_id"], rows[2]["case_id"]))
    for row in reliability["subsets"]:
        values = [v for v in row["auc"].values() if v is not None]
        assert values and all(0.0 <= v <= 1.0 for v in values)
        assert row["mean_auc"] == pytest.approx(np.mean(values))
        assert set(row["auc"]) == {m.key for m in bundle.heads.markers}
    assert bundle.card["training"]["settings"]["sequence_dropout"] == 0.3
    assert bundle.card["training"]["failed_cases"] == {}

    case = read_manifest(manifest)[2].load()
    prediction = predict_case(case, bundle, device="cpu")
    assert prediction.preprocessed.available == ("t1ce",)
    assert not prediction.preprocessed.channels[[0, 2, 3]].any()


def test_trainers_refuse_bad_probabilities():
    for value in (-0.1, 1.0, 1.5):
        with pytest.raises(SettingsError, match="--sequence-dropout"):
            BaselineSettings(sequence_dropout=value)
        with pytest.raises(SettingsError, match="--artifact-augment"):
            BaselineSettings(artifact_augment=value)


def test_a_card_naming_an_unknown_or_empty_subset_is_refused(tiny_bundle, tmp_path):
    import shutil

    from neuroradfm.models.bundle import CARD, check_card

    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    card = json.loads((copy / CARD).read_text(encoding="utf-8"))
    for bad, expected in (([["t1", "dwi"]], "unknown sequence 'dwi'"), ([[]], "sequence_subsets\\[0\\]"),
                          ("all", "sequence_subsets")):
        with pytest.raises(BundleError, match=expected):
            check_card(copy / CARD, {**card, "sequence_subsets": bad})
    for bad, expected in (({"subsets": [{"sequences": ["t1", "t1"]}]}, "subset_reliability.subsets\\[0\\]"),
                          ({"subsets": [{"sequences": ["swi"], "mean_auc": 0.7}]}, "unknown sequence 'swi'"),
                          ({"cases": 3}, "subset_reliability.subsets: missing")):
        with pytest.raises(BundleError, match=expected):
            check_card(copy / CARD, {**card, "subset_reliability": bad})
    check_card(copy / CARD, {**card, "sequence_subsets": [list(ALL_FOUR), ["t1ce"]]})
    # a subset whose row has no figure reads as not evaluated, not as an error
    from neuroradfm.subsets import reliability

    note = reliability({"subset_reliability": {"subsets": [{"sequences": ["t1ce"], "mean_auc": None}]}}, ["t1ce"])
    assert note["evaluated"] and note["mean_auc"] is None and "no held-out figures" in note["note"]
    assert load_bundle(tiny_bundle).sequence_subsets == [tuple(SEQUENCES)]


@pytest.mark.parametrize("method", ["mae", "byol"])
def test_pretraining_with_dropout_uses_incomplete_cases_and_takes_every_subset(phantom_cohort, tmp_path, method):
    from neuroradfm.preprocess import PreprocessSettings
    from neuroradfm.train.pretrain import PretrainSettings, pretrain

    rows = list(csv.DictReader(phantom_cohort.open(encoding="utf-8")))[:4]
    for row in rows:
        for key in ("t1", "t1ce", "t2", "flair", "seg"):
            if row.get(key):
                row[key] = str((phantom_cohort.parent / row[key]).resolve())
    rows[0]["flair"] = ""
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    settings = PretrainSettings(
        method=method, encoder=SMALL, preprocessing=PreprocessSettings(spacing_mm=4.0, size=(48, 48, 48), n4=False),
        crop_size=32, method_settings=MethodSettings(hidden_dim=16, proj_dim=8, mae_decoder_dim=8),
        max_steps=2, batch_size=2, learning_rate=1e-3, num_workers=0, device="cpu", sequence_dropout=0.5,
        artifact_augment=0.5)
    assert settings.encoder.availability_mask  # dropout turns the availability channels on
    bundle = load_bundle(pretrain(manifest, tmp_path / "encoder", settings, cache_dir=tmp_path / "cache"))
    assert bundle.encoder.config.availability_mask and len(bundle.sequence_subsets) == 15
    assert bundle.card["training"]["cases"] == 4 and bundle.card["training"]["failed_cases"] == {}
    plain = replace(settings, sequence_dropout=0.0, artifact_augment=0.0, encoder=SMALL)
    skipped = load_bundle(pretrain(manifest, tmp_path / "plain", plain, cache_dir=tmp_path / "cache"))
    assert skipped.card["training"]["cases"] == 3 and list(skipped.card["training"]["failed_cases"]) == \
        [rows[0]["case_id"]]
    assert skipped.sequence_subsets == [ALL_FOUR] and not skipped.encoder.config.availability_mask
