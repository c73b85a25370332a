"""SSL methods on the 3D encoder: one loss per sample, a loss that falls on a short run, EMA teachers that
move, MAE's masked reconstruction, and reproducible MONAI two-view augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuroradfm.models.encoder import Encoder, EncoderConfig
from neuroradfm.ssl import MethodSettings, build_method
from neuroradfm.ssl.augment import TwoViews
from neuroradfm.ssl.dino import koleo, sinkhorn_knopp
from neuroradfm.ssl.mae import mask_spec, random_mask

TINY = MethodSettings(hidden_dim=64, proj_dim=32, dino_out_dim=64, dino_bottleneck=32, mae_decoder_dim=32,
                      dino_teacher_temp_warmup=0.0, dino_teacher_temp=0.04, dino_center_momentum=1.0)


def _batch(size: int = 32, n: int = 2):
    torch.manual_seed(0)
    x = torch.nn.functional.avg_pool3d(torch.randn(n, 4, size, size, size), 5, 1, 2) * 3
    rng = np.random.default_rng(0)
    return {"view1": x, "view2": x.flip(4) + 0.1 * torch.randn_like(x),
            "mask": torch.stack([random_mask((size,) * 3, 16, 0.6, rng) for _ in range(n)])}


@pytest.mark.parametrize("name", ["byol", "dino", "moco", "mae"])
def test_loss_per_sample_falls_and_teacher_moves(name):
    torch.manual_seed(0)
    method = build_method(name, Encoder(EncoderConfig("resnet10", widen_factor=0.125, no_max_pool=True)), TINY, 32)
    teacher = {k: v.clone() for k, v in method.state_dict().items() if k.startswith(("target.", "teacher.",
                                                                                       "momentum."))}
    optimiser = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-3)
    batch, history = _batch(32 if name == "mae" else 16), []
    for step in range(4):
        losses = method(batch)
        assert losses.shape == (2,) and torch.isfinite(losses).all()
        losses.mean().backward()
        if step == 0:
            assert all(p.grad is not None for p in method.encoder.parameters())
        optimiser.step()
        optimiser.zero_grad()
        method.after_step((step + 1) / 100)
        history.append(losses.mean().item())
    assert history[-1] < 0.8 * history[0], history
    if name != "mae":  # EMA teachers follow the student
        after = method.state_dict()
        assert any(not torch.equal(after[k], v) for k, v in teacher.items() if v.is_floating_point())
        assert all(not p.requires_grad for k, p in method.named_parameters() if k in teacher)


def test_dino_logs_its_loss_terms():
    """cross-entropy = H(teacher) + KL(teacher || student), per step; the schedule raises H, the KL must fall."""
    torch.manual_seed(0)
    settings = MethodSettings(hidden_dim=32, dino_out_dim=32, dino_bottleneck=16)  # warm-up 0.04 -> 0.07, centre on
    method = build_method("dino", Encoder(EncoderConfig("resnet10", widen_factor=0.125, no_max_pool=True)), settings)
    optimiser = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-3)
    batch, terms = _batch(16), []
    assert method.pop_diagnostics() == {}
    for step in range(4):
        method.fraction = step / 4
        losses = method(batch)
        losses.mean().backward()
        optimiser.step()
        optimiser.zero_grad()
        method.after_step((step + 1) / 4)
        terms.append(method.pop_diagnostics())
        d = terms[-1]
        assert d["cross_entropy"] == pytest.approx(losses.mean().item(), rel=1e-5)
        assert d["cross_entropy"] == pytest.approx(d["teacher_entropy"] + d["kl"], rel=1e-5)
        assert d["kl"] >= -1e-6 and 0 < d["teacher_entropy"] <= d["batch_teacher_entropy"] + 1e-6 <= d["log_k"] + 2e-6
        assert 0 < d["student_entropy"] <= d["log_k"] + 1e-6
    assert method.pop_diagnostics() == {}  # emptied by the read
    with torch.no_grad():
        method(batch)  # DRO's no-grad first pass is not logged (nor does it move the centre)
    assert method.pop_diagnostics() == {}
    assert terms[-1]["teacher_temperature"] > terms[0]["teacher_temperature"]
    assert terms[-1]["kl"] < terms[0]["kl"], terms


def test_sinkhorn_centring_spreads_the_batch_over_the_prototypes_and_leaves_the_centre_alone():
    torch.manual_seed(0)
    scores = (torch.randn(12, 8) + torch.linspace(0, 6, 8)) / 0.5  # every sample prefers the last prototypes
    targets = sinkhorn_knopp(scores)
    assert torch.allclose(targets.sum(dim=1), torch.ones(12), atol=1e-5)  # one distribution per sample
    assert torch.allclose(sinkhorn_knopp(scores, 50).sum(dim=0), torch.full((8,), 12 / 8), rtol=0.02)  # equal shares
    share, softmax_share = targets.sum(dim=0), torch.softmax(scores, dim=1).sum(dim=0)
    assert share.max() < 0.5 * softmax_share.max() and share.min() > 20 * softmax_share.min()  # 3 steps: near
    torch.manual_seed(0)
    settings = MethodSettings(**{**TINY.to_dict(), "dino_centering": "sinkhorn", "dino_center_momentum": 0.9})
    method = build_method("dino", Encoder(EncoderConfig("resnet10", widen_factor=0.125, no_max_pool=True)), settings)
    losses = method(_batch(16))
    losses.mean().backward()
    method.after_step(0.1)
    assert losses.shape == (2,) and torch.isfinite(losses).all() and not method.center.any()
    with pytest.raises(ValueError, match="centring"):
        build_method("dino", Encoder(EncoderConfig("resnet10", widen_factor=0.125)),
                     MethodSettings(dino_centering="median"))


def test_batch_norm_head_keeps_what_tells_near_identical_cases_apart():
    """Cases that share almost everything (one anatomy): after the centre removes the shared output, a
    LayerNorm head leaves the cases' logits ~1e-3 apart (the teacher goes uniform at temperature 0.04); the
    BatchNorm head (the DINO default) standardises their differences to unit scale."""
    from neuroradfm.ssl.base import mlp
    from neuroradfm.ssl.dino import DINOHead

    torch.manual_seed(0)
    z = torch.rand(1, 64) * 5 + 0.01 * torch.randn(16, 64)  # shared embedding + small per-case parts
    spread = {}
    for norm in ("layer", "batch"):
        torch.manual_seed(1)
        head = DINOHead(64, 64, 32, 128, norm).train()
        with torch.no_grad():
            out = head(z)
        centred = out - out.mean(dim=0, keepdim=True)
        spread[norm] = centred.std().item()
        teacher = torch.softmax(centred / 0.04, dim=-1)
        entropy = -(teacher * teacher.log()).sum(dim=-1).mean().item()
        spread[norm + " entropy"] = entropy
    assert spread["batch"] > 20 * spread["layer"], spread
    assert spread["layer entropy"] > np.log(128) - 0.01 > spread["batch entropy"] + 1.0, spread
    assert isinstance(build_method("dino", Encoder(EncoderConfig("resnet10", widen_factor=0.125)),
                                   TINY).head.mlp[1], torch.nn.BatchNorm1d)
    with pytest.raises(ValueError, match="head normalisation"):
        mlp(8, 8, 8, norm="instance")


def test_koleo_pushes_the_nearest_neighbours_apart():
    z = torch.tensor([[1.0, 0.0], [0.99, 0.14], [-1.0, 0.0]], requires_grad=True)
    terms = koleo(z)
    x = torch.nn.functional.normalize(z.detach(), dim=-1)
    nearest = torch.tensor([(x[0] - x[1]).norm(), (x[0] - x[1]).norm(), (x[2] - x[1]).norm()])
    torch.testing.assert_close(terms.detach(), -torch.log(nearest), atol=1e-5, rtol=0)
    terms.sum().backward()  # descending it spreads the two close rows apart
    step = torch.nn.functional.normalize(z.detach() - 0.1 * z.grad, dim=-1)
    assert (step[0] - step[1]).norm() > (x[0] - x[1]).norm()
    assert koleo(torch.ones(1, 4)).tolist() == [0.0]  # no neighbour, no term
    torch.manual_seed(0)
    settings = MethodSettings(**{**TINY.to_dict(), "dino_koleo": 0.5})
    method = build_method("dino", Encoder(EncoderConfig("resnet10", widen_factor=0.125, no_max_pool=True)), settings)
    losses = method(_batch(16, n=4))
    d = method.pop_diagnostics()
    assert losses.shape == (4,) and np.isfinite(d["koleo"]) and d["koleo"] != 0
    assert losses.mean().item() == pytest.approx(d["cross_entropy"] + 0.5 * d["koleo"], rel=1e-5)


def test_mae_reconstructs_only_masked_voxels():
    torch.manual_seed(0)
    method = build_method("mae", Encoder(EncoderConfig("resnet10", widen_factor=0.125, no_max_pool=True)), TINY, 32)
    batch = _batch()
    mask = batch["mask"]
    assert 0.5 < float(mask.mean()) < 0.7  # 60 % of the 16^3 cubes, 8 cubes per crop -> 5 of 8
    assert method.reconstruct(batch["view1"], mask).shape == batch["view1"].shape
    base = method(batch)
    changed = dict(batch, view1=batch["view1"] + 5 * mask * (torch.arange(2) == 0).view(2, 1, 1, 1, 1))
    after = method(changed)  # a masked voxel's value is hidden from the encoder but is the target
    assert after[0] > base[0] + 1 and torch.allclose(after[1], base[1])
    with pytest.raises(ValueError, match="divisible"):
        build_method("mae", Encoder(EncoderConfig("resnet10", widen_factor=0.125, no_max_pool=True)), TINY, 40)


def test_mae_per_sequence_masks_hide_each_sequence_on_its_own():
    encoder = Encoder(EncoderConfig("resnet10", widen_factor=0.125, no_max_pool=True))
    settings = MethodSettings(**{**TINY.to_dict(), "mae_patch": 8, "mae_mask_per_sequence": True})
    assert mask_spec("mae", encoder, settings) == {"mask_patch": 8, "mask_ratio": 0.6, "mask_channels": 4}
    assert mask_spec("mae", encoder, TINY)["mask_channels"] == 1 and mask_spec("byol", encoder, settings) == {}
    mask = random_mask((32,) * 3, 8, 0.6, np.random.default_rng(3), channels=4)
    assert mask.shape == (4, 32, 32, 32)
    assert torch.equal(mask[:1], random_mask((32,) * 3, 8, 0.6, np.random.default_rng(3)))  # drawn in turn
    assert all(float(m.mean()) == pytest.approx(38 / 64) for m in mask)  # round(0.6 x 64) cubes each
    assert not torch.equal(mask[0], mask[1])
    # the loss is the mean squared error over the masked (sequence, voxel) entries, not over whole voxels
    torch.manual_seed(0)
    method = build_method("mae", encoder, settings, 32)
    x = _batch()["view1"]
    masks = torch.stack([mask, random_mask((32,) * 3, 8, 0.6, np.random.default_rng(4), channels=4)])
    with torch.no_grad():
        losses = method({"view1": x, "mask": masks})
        expected = ((method.reconstruct(x, masks) - x) ** 2 * masks).sum(dim=(1, 2, 3, 4)) / masks.sum(dim=(1, 2, 3, 4))
        assert torch.allclose(losses, expected)
        # a sequence's value at a voxel hidden in that sequence only is a target, not an input
        only_t2 = (masks[:, 2] == 1) & (masks[:, 0] == 0)
        changed = x.clone()
        changed[:, 2][only_t2] += 5.0
        assert torch.allclose(method.reconstruct(changed, masks), method.reconstruct(x, masks))
        assert (method({"view1": changed, "mask": masks}) > losses + 1).all()


def test_two_views_are_reproducible_per_seed():
    image = np.random.default_rng(0).normal(size=(4, 40, 40, 40)).astype(np.float32)
    views = TwoViews(32)
    a1, a2 = views(image, 123)
    b1, b2 = TwoViews(32)(image, 123)
    c1, _ = views(image, 124)
    assert a1.shape == (4, 32, 32, 32) and a1.dtype == torch.float32 and type(a1) is torch.Tensor
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1, a2) and not torch.equal(a1, c1)
    with pytest.raises(ValueError, match="exceeds"):
        TwoViews(48)(image, 0)


def test_views_flip_along_the_chosen_axes_only():
    """Whole-grid views without affine or intensity changes: "lr" gives the image or its mirror along the
    last (left-right) axis, "none" the image itself, "all" also the other axes' mirrors."""
    image = np.random.default_rng(1).normal(size=(4, 12, 12, 12)).astype(np.float32)
    x = torch.from_numpy(image)
    mirrors = {"none": [x], "lr": [x, x.flip(3)]}
    for flips, allowed in mirrors.items():
        views = TwoViews(12, strength=0.0, flips=flips)
        seen = set()
        for seed in range(12):
            for view in views(image, seed):
                matches = [i for i, m in enumerate(allowed) if torch.equal(view, m)]
                assert matches, (flips, seed)
                seen.update(matches)
        assert seen == set(range(len(allowed)))  # "lr" does flip, about half the time
    others = [v for seed in range(12) for v in TwoViews(12, 0.0, "all")(image, seed)]
    assert any(not torch.equal(v, x) and not torch.equal(v, x.flip(3)) for v in others)
    with pytest.raises(ValueError, match="flips"):
        TwoViews(12, flips="diagonal")
