"""Training data and logs: the prepared-cohort cache (reused while files and settings match) and the metrics log."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import TINY_SETTINGS
from neuroradfm.io import read_manifest
from neuroradfm.metrics import MetricsLog, read_metrics
from neuroradfm.train import cohort as cohort_module
from neuroradfm.train.baseline import background_spread, lesion_pool, train_encoder
from neuroradfm.train.cohort import prepare_cohort


def test_cache_is_reused_and_invalidated(phantom_cohort, tmp_path, monkeypatch):
    entries = read_manifest(phantom_cohort)[:2]
    settings = TINY_SETTINGS.preprocessing
    first = prepare_cohort(entries, settings, cache_dir=tmp_path / "cache")
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(files) == 4 and all(f.endswith((".channels.npy", ".tumour.npy")) for f in files)
    assert first.tumour is not None and first.tumour.any()

    calls = []
    real = cohort_module.preprocess_case
    monkeypatch.setattr(cohort_module, "preprocess_case", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = prepare_cohort(entries, settings, cache_dir=tmp_path / "cache")
    assert calls == []
    np.testing.assert_array_equal(again.inputs, first.inputs)
    np.testing.assert_array_equal(again.tumour, first.tumour)
    assert again.inputs.dtype == np.float16 and again.case_ids == first.case_ids

    copy = tmp_path / "flair-copy.nii.gz"  # a rewritten file is preprocessed again
    shutil.copy2(entries[0].paths["flair"], copy)
    entries[0].paths["flair"] = copy
    prepare_cohort(entries, settings, cache_dir=tmp_path / "cache")
    assert calls == [1]
    stat = copy.stat()
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    prepare_cohort(entries, settings, cache_dir=tmp_path / "cache")
    assert calls == [1, 1]
    other = type(settings)(spacing_mm=settings.spacing_mm, size=(40, 40, 40), n4=False)
    assert prepare_cohort(entries[:1], other, cache_dir=tmp_path / "cache").inputs.shape[2:] == (40, 40, 40)
    assert len(calls) == 3 and len(list((tmp_path / "cache").iterdir())) == 10


def test_failing_case_is_left_out_and_not_cached(phantom_cohort, tmp_path):
    entries = read_manifest(phantom_cohort)[:2]
    entries[1].paths["t2"] = tmp_path / "broken-t2w.nii.gz"  # the shared cohort stays intact
    entries[1].paths["t2"].write_bytes(b"not an image")
    prepared = prepare_cohort(entries, TINY_SETTINGS.preprocessing, cache_dir=tmp_path / "cache")
    assert prepared.case_ids == [entries[0].case_id]
    assert entries[1].case_id in prepared.failures and "t2" in prepared.failures[entries[1].case_id].lower()
    assert all(p.name.startswith(entries[0].case_id) for p in (tmp_path / "cache").iterdir())




def test_training_writes_one_metrics_line_per_step(phantom_cohort, tmp_path):
    prepared = prepare_cohort(read_manifest(phantom_cohort)[:6], TINY_SETTINGS.preprocessing)
    log = tmp_path / "run" / "metrics.jsonl"
    _, history = train_encoder(prepared, replace(TINY_SETTINGS, epochs=2, batch_size=4), torch.device("cpu"),
                               metrics=MetricsLog(log))
    rows = read_metrics(log)
    assert [row["step"] for row in rows] == [1, 2, 3, 4]  # 6 cases, batches of 4: 2 steps an epoch
    assert [row["epoch"] for row in rows] == [1, 1, 2, 2]
    assert all(np.isfinite(row["loss"]) and row["loss"] > 0 for row in rows)
    assert np.mean([r["loss"] for r in rows[:2]]) == pytest.approx(history[0])
    log.write_text(log.read_text() + '{"step": 5, "lo')  # a line still being written is skipped
    assert len(read_metrics(log)) == 4


def test_lesion_pooling_and_background_spread():
    features = torch.zeros(2, 3, 2, 2, 2)
    features[:, :, 0, 0, 0] = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])  # the tumour cell
    features[:, :, 1] = 7.0  # tumour-free cells, equal in both cases
    occupancy = torch.zeros(2, 1, 2, 2, 2)
    occupancy[:, :, 0, 0, 0] = 1.0
    torch.testing.assert_close(lesion_pool(features, occupancy), features[:, :, 0, 0, 0])
    occupancy[1, :, 0, 0, 0] = 0.5  # a cell half tumour counts half
    occupancy[1, :, 0, 0, 1] = 0.5
    torch.testing.assert_close(lesion_pool(features, occupancy)[1], features[1, :, 0, 0, 0] / 2)
    occupancy = torch.zeros(2, 1, 2, 2, 2)
    occupancy[:, :, 0, 0, 0] = 1.0
    assert float(background_spread(features, occupancy)) == 0.0  # the tumour cells may differ, nothing else
    features[1, :, 1, 1, 1] = 9.0  # one background cell differs between the two cases
    assert float(background_spread(features, occupancy)) > 0.0


def test_split_seed_keeps_the_heads_cases_while_the_training_seed_changes(phantom_cohort, tiny_bundle, tmp_path):
    """train-baseline --split-seed: another training seed, the same held-out cases (split B) as seed 0."""
    from neuroradfm.models.bundle import load_bundle
    from neuroradfm.train.baseline import train_baseline

    base = load_bundle(tiny_bundle)
    other = load_bundle(train_baseline(phantom_cohort, tmp_path / "seed1", replace(TINY_SETTINGS, seed=1, split_seed=0),
                                       cache_dir=tmp_path / "cache"))
    ids = base.card["training"]["heads_case_ids"]
    assert len(ids) == base.card["training"]["cases_heads"] == 12  # 0.75 of 16, stratified by site
    assert other.card["training"]["heads_case_ids"] == ids
    assert other.card["training"]["settings"]["split_seed"] == 0 and base.card["training"]["settings"]["seed"] == 0
    first = next(iter(base.encoder.state_dict()))  # the seed still changes the training (the initialisation)
    assert not torch.equal(base.encoder.state_dict()[first], other.encoder.state_dict()[first])
