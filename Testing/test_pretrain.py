"""Pretraining end to end on the phantom cohort: exact resume, metrics, encoder-only bundle + fit-heads, and
bad input (missing files, unknown or absent groups, a single group, NaN loss, corrupt/foreign checkpoints)."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import write_manifest
from neuroradfm.batch import predict_cases
from neuroradfm.cli import main
from neuroradfm.errors import BundleError, InputError
from neuroradfm.metrics import read_metrics
from neuroradfm.models.bundle import load_bundle
from neuroradfm.models.encoder import Encoder, EncoderConfig
from neuroradfm.preprocess import PreprocessSettings
from neuroradfm.ssl import MethodSettings
from neuroradfm.train import data as data_module
from neuroradfm.train.checkpoint import CheckpointError, write_checksum
from neuroradfm.train.pretrain import PretrainSettings, TrainingError, pretrain

TINY = PretrainSettings(
    method="dino", encoder=EncoderConfig("resnet10", widen_factor=0.125, conv1_stride=2, no_max_pool=True),
    preprocessing=PreprocessSettings(spacing_mm=4.0, size=(48, 48, 48), n4=False), crop_size=32,
    method_settings=MethodSettings(hidden_dim=32, proj_dim=16, dino_out_dim=32, dino_bottleneck=16,
                                   mae_decoder_dim=16),
    epochs=2, batch_size=2, accumulate=2, learning_rate=1e-3, dro="exponentiated", eta_q=0.5,
    checkpoint_every=2, num_workers=0, device="cpu")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "ssl-cache"  # shared by the pretraining tests; filled on first use


@pytest.fixture(scope="module")
def small(phantom_cohort, tmp_path_factory):
    """6 of the phantom cases, 3 per site: 3 steps per epoch at batch 2."""
    def first_four_per_site(rows):
        kept, seen = [], {}
        for row in rows:
            seen[row["site"]] = seen.get(row["site"], 0) + 1
            if seen[row["site"]] <= 3:
                kept.append(row)
        return kept

    return _edit_manifest(phantom_cohort, tmp_path_factory.mktemp("small") / "manifest.csv",
                          lambda rows: first_four_per_site(_absolute(phantom_cohort)(rows)))


def _run(manifest, tmp, cache, settings=TINY, **kw):
    return pretrain(manifest, tmp / "bundle", settings, cache_dir=cache, metrics_path=tmp / "metrics.jsonl",
                    checkpoint_path=tmp / "ckpt.pt", **kw)


@pytest.mark.parametrize("sampling", [False, True], ids=["q-weighted", "q-sampled"])
def test_resume_ends_with_the_same_weights_and_q(small, cache, tmp_path, sampling):
    a, b = tmp_path / "a", tmp_path / "b"
    # (accumulate 2 + DRO: see test_pretrain_ddp); q-sampled: each step's cases are drawn from that step's q
    settings = replace(TINY, max_steps=4, accumulate=1, dro_sampling=sampling)
    _run(small, a, cache, settings)  # 6 cases / batch 2 = 3 steps per epoch; 4 steps
    assert _run(small, b, cache, settings, stop_after=3) == b / "ckpt.pt"  # killed after step 3: checkpoint at 2
    assert not (b / "bundle").exists() and torch.load(b / "ckpt.pt", weights_only=True)["step"] == 2
    _run(small, b, cache, settings, resume=True)  # resumes mid-epoch, then crosses into the next epoch
    full, resumed = (torch.load(x / "ckpt.pt", weights_only=True) for x in (a, b))
    assert full["step"] == resumed["step"] == 4
    for key, value in full["model"].items():  # student, teacher, heads, DINO centre, BN statistics
        assert torch.equal(value, resumed["model"][key]), key
    assert torch.equal(full["dro"]["q"], resumed["dro"]["q"])
    assert torch.equal(full["dro"]["recent"], resumed["dro"]["recent"])
    assert not torch.allclose(full["dro"]["q"], torch.full((2,), 0.5, dtype=torch.float64))  # q really moved
    assert load_file(str(a / "bundle" / "weights.safetensors")).keys() == \
        load_file(str(b / "bundle" / "weights.safetensors")).keys()
    for key, value in load_file(str(a / "bundle" / "weights.safetensors")).items():
        assert torch.equal(value, load_file(str(b / "bundle" / "weights.safetensors"))[key]), key

    rows = read_metrics(b / "metrics.jsonl")  # after the resume: each step once, step 3 recomputed
    assert [r["step"] for r in rows] == list(range(1, 5))
    assert rows == read_metrics(a / "metrics.jsonl")
    assert set(rows[0]) >= {"epoch", "loss", "robust_loss", "group_losses", "q", "lr"}
    assert set(rows[0]["q"]) == {"site-A", "site-B"} and sum(rows[-1]["q"].values()) == pytest.approx(1.0)
    terms = rows[-1]["diagnostics"]  # DINO's loss terms, every step
    assert terms["cross_entropy"] == pytest.approx(terms["teacher_entropy"] + terms["kl"], rel=1e-5)
    if sampling:  # equal weights: the robust loss is the batch mean
        assert all(r["robust_loss"] == pytest.approx(r["loss"]) for r in rows)
    with pytest.raises(ValueError, match="needs --dro and cannot be combined with --group-balanced"):
        replace(TINY, dro_sampling=True, group_balanced=True)
    with pytest.raises(ValueError, match="needs --dro"):
        replace(TINY, dro_sampling=True, dro="erm")
    with pytest.raises(ValueError, match="unknown flips"):
        replace(TINY, flips="diagonal")


def test_encoder_bundle_fit_heads_and_fine_tuning(small, phantom_cohort, cache, tmp_path):
    settings = replace(TINY, method="mae", max_steps=2, dro="erm", accumulate=1)
    path = _run(small, tmp_path, cache, settings)
    bundle = load_bundle(path)
    assert bundle.heads is None and bundle.card["training"]["method"] == "self-supervised mae"
    assert bundle.encoder.config == settings.encoder and bundle.card["training"]["steps"] == 2
    assert main(["info", str(path)]) == 0
    code = main(["predict", "--model", str(path), "--out", str(tmp_path / "p"), "--t1", "a", "--t1ce", "b",
                 "--t2", "c", "--flair", "d", "--progress", "none"])
    assert code == 2  # an encoder-only bundle cannot predict: a clear error, not a traceback
    with pytest.raises(BundleError, match="encoder-only bundle has no heads.*fit-heads") as error:
        predict_cases([], bundle, tmp_path / "p")  # the Python API says so too, before any case
    assert error.value.path == str(path)
    out = tmp_path / "complete"
    assert main(["fit-heads", "--model", str(path), "--manifest", str(phantom_cohort), "--out", str(out),
                 "--cache", str(cache), "--device", "cpu", "--progress", "none"]) == 0
    complete = load_bundle(out)
    assert complete.heads is not None and complete.heads.markers and complete.heads.ood is not None
    for key, value in bundle.encoder.state_dict().items():
        assert torch.equal(value, complete.encoder.state_dict()[key])
    assert complete.card["training"]["heads"]["encoder_bundle_hash"] == bundle.card["content_hash"]

    # train-baseline --init fine-tunes this encoder: its architecture and grid win over --arch/--size, the
    # training starts from its weights (a vanishing learning rate leaves the convolutions where they were, far
    # from a fresh encoder's), and the card records the pretraining instead of calling itself a stand-in
    tuned = tmp_path / "tuned"
    assert main(["train-baseline", "--manifest", str(phantom_cohort), "--out", str(tuned), "--init", str(path),
                 "--arch", "resnet18", "--size", "64", "--epochs", "1", "--lr", "1e-12", "--cache", str(cache),
                 "--device", "cpu", "--progress", "none"]) == 0
    fine = load_bundle(tuned)
    assert fine.encoder.config == settings.encoder and fine.preprocessing == settings.preprocessing
    fresh = Encoder(settings.encoder).state_dict()
    convs = [k for k in bundle.encoder.state_dict() if k.endswith("conv1.weight")]
    assert convs
    for key in convs:
        torch.testing.assert_close(fine.encoder.state_dict()[key], bundle.encoder.state_dict()[key],
                                   atol=1e-6, rtol=0)
        assert not torch.allclose(fresh[key], bundle.encoder.state_dict()[key], atol=1e-3)
    training = fine.card["training"]
    assert "stand-in" not in training["method"] and "fine-tuned" in training["method"]
    assert "self-supervised mae" in training["method"]
    assert training["pretraining"]["encoder_bundle_hash"] == bundle.card["content_hash"]
    assert training["pretraining"]["steps"] == 2 and fine.heads is not None and fine.heads.markers
    assert main(["train-baseline", "--manifest", str(phantom_cohort), "--out", str(tmp_path / "bad"),
                 "--init", str(tmp_path / "p"), "--progress", "none"]) == 2  # not a bundle: a clear error
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("method, options", [
    ("mae", ["--mask-per-sequence", "--mask-patch", "8", "--norm", "group"]),
    ("dino", ["--dino-centering", "sinkhorn", "--dino-out-dim", "32", "--dino-head-norm", "layer",
              "--flips", "lr", "--augment-strength", "0.5"]),
])
def test_cli_pretrain_options_reach_the_encoder_and_the_card(small, cache, tmp_path, method, options):
    out = tmp_path / "encoder"
    common = ["pretrain", "--manifest", str(small), "--method", method, "--out", str(out), "--arch", "resnet10",
              "--widen", "0.125", "--no-max-pool", "--size", "48", "--spacing", "4", "--no-n4", "--crop", "32",
              "--batch-size", "2", "--max-steps", "2", "--hidden-dim", "32", "--proj-dim", "16", "--cache", str(cache),
              "--workers", "0", "--device", "cpu", "--progress", "none"]
    assert main(common + options) == 0
    bundle = load_bundle(out)
    chosen = bundle.card["training"]["settings"]["method_settings"]
    if method == "mae":
        assert bundle.encoder.config.norm == "group" and chosen["mae_mask_per_sequence"] and chosen["mae_patch"] == 8
        assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in bundle.encoder.modules())
    else:
        assert chosen["dino_centering"] == "sinkhorn" and bundle.encoder.config.norm == "batch"
        assert chosen["dino_head_norm"] == "layer"
        views = bundle.card["training"]["settings"]
        assert views["flips"] == "lr" and views["augment_strength"] == 0.5
    assert len(bundle.card["training"]["loss_last_steps"]) == 2


def _edit_manifest(source: Path, target: Path, edit) -> Path:
    with source.open(newline="", encoding="utf-8") as handle:
        return write_manifest(target, edit(list(csv.DictReader(handle))))


def _absolute(manifest: Path):
    def edit(rows):
        for row in rows:
            for key in ("t1", "t1ce", "t2", "flair", "seg"):
                row[key] = str(manifest.parent / row[key])
        return rows
    return edit


def test_bad_manifests(phantom_cohort, cache, tmp_path):
    missing = _edit_manifest(phantom_cohort, tmp_path / "m1.csv",
                             lambda rows: [dict(r, t2="nowhere/t2.nii.gz") if i == 1 else r
                                           for i, r in enumerate(_absolute(phantom_cohort)(rows))])
    with pytest.raises(InputError, match="nowhere"):
        _run(missing, tmp_path, cache)
    with pytest.raises(InputError, match="scanner"):
        _run(phantom_cohort, tmp_path, cache, replace(TINY, group_column="scanner"))
    with pytest.raises(InputError, match="site-B"):
        _run(phantom_cohort, tmp_path, cache, replace(TINY, groups=("site-A", "site-C")))
    assert main(["pretrain", "--manifest", str(phantom_cohort), "--method", "byol", "--out", str(tmp_path / "x"),
                 "--group-column", "scanner", "--progress", "none"]) == 2
    assert not (tmp_path / "bundle").exists() and not (tmp_path / "x").exists()


def test_single_group_trains_as_erm_with_a_warning(phantom_cohort, cache, tmp_path):
    one_site = _edit_manifest(phantom_cohort, tmp_path / "one.csv",
                              lambda rows: [r for r in _absolute(phantom_cohort)(rows) if r["site"] == "site-A"])
    with pytest.warns(UserWarning, match="only one group"):
        path = _run(one_site, tmp_path, cache, replace(TINY, method="byol", max_steps=1, accumulate=1))
    assert load_bundle(path).card["training"]["dro"] == "erm"


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(small, cache, tmp_path, monkeypatch):
    real = data_module.PretrainDataset.__getitem__

    def poisoned(self, index):
        sample = real(self, index)
        if self.epoch >= 1:  # the second epoch's data are broken
            sample["view1"] = sample["view1"] * float("nan")
        return sample

    monkeypatch.setattr(data_module.PretrainDataset, "__getitem__", poisoned)
    settings = replace(TINY, method="byol", accumulate=1)
    with pytest.raises(TrainingError, match=r"step 4 .*last good checkpoint .*step 2"):
        _run(small, tmp_path, cache, settings)
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values()
                                      if v.is_floating_point())
    assert not (tmp_path / "bundle").exists()


def test_corrupt_foreign_or_other_run_checkpoint_is_refused_untouched(small, cache, tmp_path):
    checkpoint = tmp_path / "ckpt.pt"
    for content, message in [(b"garbage", "corrupt"), (None, "not a neuroradfm-pretrain-checkpoint")]:
        if content is None:
            torch.save({"weights": torch.zeros(2)}, checkpoint)
            write_checksum(checkpoint)  # intact and checksummed: refused for what it holds
        else:
            checkpoint.write_bytes(content)
        before = checkpoint.read_bytes()
        with pytest.raises(CheckpointError, match=message):
            _run(small, tmp_path, cache, resume=True)
        assert checkpoint.read_bytes() == before and not (tmp_path / "bundle").exists()
    with pytest.raises(InputError, match="earlier run.*--resume"):  # a fresh run keeps its hands off it too
        _run(small, tmp_path, cache, replace(TINY, method="byol", max_steps=1, accumulate=1))
    assert checkpoint.read_bytes() == before
    checkpoint.unlink()
    _run(small, tmp_path, cache, replace(TINY, method="byol", max_steps=1, accumulate=1))
    before = checkpoint.read_bytes()
    with pytest.raises(CheckpointError, match="different run.*method"):
        _run(small, tmp_path, cache, replace(TINY, method="moco", max_steps=1, accumulate=1), resume=True)
    assert checkpoint.read_bytes() == before
    assert main(["pretrain", "--manifest", str(small), "--method", "byol", "--out", str(tmp_path / "y"),
                 "--checkpoint", str(tmp_path / "none.pt"), "--resume", "--progress", "none"]) == 2


def test_memory_mapped_cache_balanced_sampler_and_schedule(small, cache):
    from neuroradfm.io import read_manifest
    from neuroradfm.train.cohort import cache_cohort
    from neuroradfm.train.data import GroupBalancedSampler
    from neuroradfm.train.pretrain import _schedule

    cohort = cache_cohort(read_manifest(small), TINY.preprocessing, cache)
    array = cohort.channels(0)
    assert isinstance(array, np.memmap) and array.dtype == np.float16 and array.shape == (4, 48, 48, 48)

    ids = [0] * 9 + [1] * 3  # 3:1 imbalance
    ranks = [GroupBalancedSampler(ids, num_replicas=2, rank=r, seed=1) for r in (0, 1)]
    draws = []
    for epoch in range(200):
        for sampler in ranks:
            sampler.set_epoch(epoch)
        parts = [list(s) for s in ranks]
        assert len(parts[0]) == len(parts[1]) == 6
        draws += parts[0] + parts[1]
    share = np.mean([ids[i] == 1 for i in draws])
    assert 0.45 < share < 0.55  # each group about half of the draws, against 25 % in the data
    ranks[0].set_epoch(3)
    again = GroupBalancedSampler(ids, num_replicas=2, rank=0, seed=1)
    again.set_epoch(3)
    assert list(again) == list(ranks[0])

    lrs = [_schedule(s, 100, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(1 / 11) and lrs[9] == pytest.approx(10 / 11) and lrs[10] == 1.0
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 0.001
