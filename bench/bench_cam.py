"""Grad-CAM for every head: the project's path vs MONAI's gradient Grad-CAM per head.

Run: .venv/bin/python bench/bench_cam.py [--arch resnet10 --widen 0.5 --size 96 --heads 11 --repeats 3
                                          --layer layer4]
At the last block (layer4) the project's path is the one-forward closed form; at an earlier layer it is one
forward and one batched backward pass for all heads (neuroradfm.cam.layer_cams).
Each path runs in its own child process (so peak memory is its own max RSS); the parent checks
that both give the same maps and prints one Markdown row with both measurements and their ratios.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from neuroradfm.cam import LinearHeadModel, cams_at, encode_for_cam, gradient_cam, upsample
from neuroradfm.models.encoder import Encoder, EncoderConfig


def build(args: argparse.Namespace) -> tuple[Encoder, LinearHeadModel, np.ndarray, torch.Tensor]:
    torch.manual_seed(0)
    encoder = Encoder(EncoderConfig(args.arch, widen_factor=args.widen, conv1_stride=2, no_max_pool=True)).eval()
    weights = np.random.default_rng(0).normal(size=(args.heads, encoder.embedding_dim))
    model = LinearHeadModel(encoder, weights, np.zeros(args.heads)).eval()
    return encoder, model, weights, torch.randn(1, 4, args.size, args.size, args.size)


def fast_path(encoder: Encoder, x: torch.Tensor, weights: np.ndarray, layer: str) -> torch.Tensor:
    activation, z = encode_for_cam(encoder, x, layer)
    cells = cams_at(layer, activation, z, torch.as_tensor(weights, dtype=torch.float32))
    with torch.no_grad():
        return upsample(cells, x.shape[2:])


def naive_path(model: LinearHeadModel, x: torch.Tensor, heads: int, layer: str) -> torch.Tensor:
    maps = [gradient_cam(model, x, f"encoder.net.{layer}", class_idx=h, upsample_to_input=True) for h in range(heads)]
    return torch.cat(maps, dim=1)


def child(args: argparse.Namespace) -> None:
    encoder, model, weights, x = build(args)
    if args.only == "fast":
        def run():
            return fast_path(encoder, x, weights, args.layer)
    else:
        def run():
            return naive_path(model, x, args.heads, args.layer)
    run()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    print(json.dumps({"seconds": float(np.median(times)),
                      "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="resnet10")
    parser.add_argument("--widen", type=float, default=0.5)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--heads", type=int, default=11)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layer", default="layer4", help="encoder stage of the maps (layer1 ... layer4)")
    parser.add_argument("--only", choices=("fast", "naive"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        return child(args)
    encoder, model, weights, x = build(args)
    torch.testing.assert_close(fast_path(encoder, x, weights, args.layer), naive_path(model, x, args.heads, args.layer),
                               rtol=1e-3, atol=1e-6)
    base = [sys.executable, __file__, "--arch", args.arch, "--widen", str(args.widen), "--size", str(args.size),
            "--heads", str(args.heads), "--repeats", str(args.repeats), "--layer", args.layer]
    results = {only: json.loads(subprocess.run(base + ["--only", only], check=True, capture_output=True,
                                               text=True).stdout.splitlines()[-1]) for only in ("fast", "naive")}
    fast, naive = results["fast"], results["naive"]
    print("| encoder | input | layer | heads | all heads at once s | per-head Grad-CAM s | time ratio "
          "| all-at-once max RSS MiB | per-head max RSS MiB | memory ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.arch} x{args.widen} | {args.size}^3 | {args.layer} | {args.heads} "
          f"| {fast['seconds']:.2f} | {naive['seconds']:.2f} "
          f"| {naive['seconds'] / fast['seconds']:.1f}x | {fast['max_rss_mib']:.0f} | {naive['max_rss_mib']:.0f} "
          f"| {naive['max_rss_mib'] / fast['max_rss_mib']:.2f}x |")
    print(f"(maps agree within rtol 1e-3; torch threads {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
