"""Distributed pretraining: 2 gloo processes under torchrun (the CLI, unchanged) compute the same step, gradients,
weights and Group-DRO q as one process on the same global batch (there: 2 micro-batches of gradient accumulation,
so that BatchNorm sees the same per-process batches). One step: Adam's sign-like first steps turn rounding noise
in near-zero gradients into whole steps of either sign, which later steps amplify beyond any tolerance."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import torch

import neuroradfm
from neuroradfm.models.encoder import Encoder
from neuroradfm.ssl import build_method
from test_pretrain import TINY, _run, cache, small  # noqa: F401  (fixtures)

BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def test_two_gloo_processes_match_one_process(small, cache, tmp_path):  # noqa: F811
    settings = replace(TINY, method="byol", max_steps=1, batch_size=2, accumulate=2, checkpoint_every=100)
    _run(small, tmp_path / "one", cache, settings)

    out = tmp_path / "two"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "neuroradfm", "pretrain", "--manifest", str(small), "--method", "byol",
               "--out", str(out / "bundle"), "--checkpoint", str(out / "ckpt.pt"), "--cache", str(cache),
               "--metrics", str(out / "metrics.jsonl"), "--dro", "--eta-q", str(settings.eta_q),
               "--arch", "resnet10", "--widen", "0.125", "--no-max-pool", "--size", "48", "--spacing", "4",
               "--no-n4", "--crop", "32", "--hidden-dim", "32", "--proj-dim", "16", "--batch-size", "2",
               "--accumulate", "1", "--max-steps", "1", "--epochs", "2", "--lr", str(settings.learning_rate),
               "--warmup", str(settings.warmup_fraction), "--workers", "0", "--device", "cpu", "--progress", "none"]
    env = dict(os.environ, PYTHONPATH=str(Path(neuroradfm.__file__).parents[1]), OMP_NUM_THREADS="1")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    one = torch.load(tmp_path / "one" / "ckpt.pt", weights_only=True)
    two = torch.load(out / "ckpt.pt", weights_only=True)
    assert two["world_size"] == 2 and one["world_size"] == 1 and one["step"] == two["step"] == 1
    # The step's gradients agree: Adam's first moment after one step is 0.1 x the gradient (all-reduce over
    # ranks = accumulation). Tensors whose gradient is zero but for rounding (a convolution bias right before
    # BatchNorm) are compared on the scale of the whole model's gradients.
    moments = [(a["exp_avg"], b["exp_avg"]) for a, b in zip(one["optimizer"]["state"].values(),
                                                            two["optimizer"]["state"].values())]
    scale = max(float(a.abs().max()) for a, _ in moments)
    assert len(moments) > 50
    for a, b in moments:
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5 * scale)
    # The weights: Adam's first step is about lr x sign(gradient), so a gradient that is zero but for rounding
    # takes a step of either sign: every weight within that bound, almost all equal.
    equal = total = 0
    for key, value in one["model"].items():
        if key.endswith(BUFFERS):  # BN running statistics: DDP keeps rank 0's, accumulation sees both halves
            continue
        difference = (two["model"][key] - value).abs()
        assert difference.max() <= settings.learning_rate * 2, key
        equal += int((difference <= 1e-5 + 1e-4 * value.abs()).sum())
        total += value.numel()
    assert equal / total > 0.99
    torch.manual_seed(settings.seed)  # and training moved the weights well beyond that tolerance
    initial = build_method("byol", Encoder(settings.encoder), settings.method_settings).state_dict()
    assert max((one["model"][k] - v).abs().max().item() for k, v in initial.items()
               if k.startswith("encoder.") and not k.endswith(BUFFERS)) > 1e-3
    torch.testing.assert_close(two["dro"]["q"], one["dro"]["q"], rtol=1e-6, atol=1e-7)
    assert not torch.allclose(one["dro"]["q"], torch.full((2,), 0.5, dtype=torch.float64))
    rows = [line for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    assert len(rows) == 1  # rank 0 alone writes the metrics
