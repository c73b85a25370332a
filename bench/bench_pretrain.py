"""Evidence for SSL pretraining with Group-DRO on the phantom cohort (with its site shortcuts).

Run (PYTHONPATH pointing at the core):
  neuroradfm phantom --n 32 --sites 4 --seed 5 --spacing 4 --out /tmp/ssl-phantom
  python bench/bench_pretrain.py --manifest /tmp/ssl-phantom/manifest.csv --work /tmp/ssl-bench --steps 150

1. Each method (BYOL, DINO, MoCo v3, MAE), ERM: the training loss of the first and last 20 steps.
2. One method (``--dro-method``, default MAE) trained three times on the same data and seed: ERM,
   Group-DRO (exponentiated, ``--eta-q``) and the hard worst-group mode; then every model is evaluated on
   every case with fixed views (seeds no training step used) and the per-site mean loss is reported,
   with the final q of the DRO runs.
Prints Markdown tables and writes ``WORK/results.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from neuroradfm.io import read_manifest
from neuroradfm.metrics import read_metrics
from neuroradfm.models.encoder import Encoder, EncoderConfig
from neuroradfm.preprocess import PreprocessSettings
from neuroradfm.ssl import MethodSettings, build_method
from neuroradfm.ssl.mae import encoder_stride
from neuroradfm.train.cohort import cache_cohort
from neuroradfm.train.data import PretrainDataset, group_labels
from neuroradfm.train.pretrain import PretrainSettings, pretrain


def settings_from(args: argparse.Namespace, method: str, dro: str = "erm") -> PretrainSettings:
    return PretrainSettings(
        method=method, encoder=EncoderConfig(args.arch, widen_factor=args.widen, conv1_stride=2, no_max_pool=True),
        preprocessing=PreprocessSettings(spacing_mm=4.0, size=(args.size,) * 3, n4=False), crop_size=args.crop,
        method_settings=MethodSettings(hidden_dim=128, proj_dim=64, dino_out_dim=256, dino_bottleneck=64,
                                       mae_decoder_dim=64),
        epochs=1000, max_steps=args.steps, batch_size=args.batch, learning_rate=args.lr, weight_decay=0.05,
        warmup_fraction=0.05, dro=dro, eta_q=args.eta_q, checkpoint_every=10_000, num_workers=0, seed=args.seed,
        device="cpu")


def train(args, method: str, dro: str, work: Path) -> tuple[Path, list[dict], float]:
    run = work / f"{method}-{dro}"
    for stale in (run / "metrics.jsonl", run / "ckpt.pt"):
        stale.unlink(missing_ok=True)
    start = time.perf_counter()
    pretrain(args.manifest, run / "bundle", settings_from(args, method, dro), cache_dir=work / "cache",
             metrics_path=run / "metrics.jsonl", checkpoint_path=run / "ckpt.pt")
    return run, read_metrics(run / "metrics.jsonl"), time.perf_counter() - start


@torch.no_grad()
def evaluate(args, method: str, run: Path, work: Path) -> dict[str, float]:
    """Per-site mean loss of the trained method on every case, fixed views (eval-mode BatchNorm)."""
    settings = settings_from(args, method)
    entries = read_manifest(args.manifest)
    cohort = cache_cohort(entries, settings.preprocessing, work / "cache")
    names, ids = group_labels(cohort.entries, "site", args.manifest)
    torch.manual_seed(0)
    encoder = Encoder(settings.encoder)
    model = build_method(method, encoder, settings.method_settings, settings.crop_size)
    model.load_state_dict(torch.load(run / "ckpt.pt", weights_only=True)["model"])
    model.eval()
    patch = encoder_stride(encoder) if method == "mae" else 0
    dataset = PretrainDataset(cohort, ids, settings.crop_size, seed=10_000 + args.seed, mask_patch=patch,
                              mask_ratio=settings.method_settings.mae_mask_ratio)
    losses = {n: [] for n in names}
    for draw in range(args.eval_draws):
        dataset.epoch = draw
        for index in range(len(dataset)):
            sample = dataset[index]
            batch = {k: v[None] for k, v in sample.items() if k not in ("group", "index")}
            losses[names[ids[index]]].append(float(model(batch)[0]))
    return {n: float(np.mean(v)) for n, v in losses.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ssl-bench"))
    parser.add_argument("--methods", default="byol,dino,moco,mae")
    parser.add_argument("--dro-method", default="mae", help="method of the ERM/DRO comparison; none: skip it")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--dro-steps", type=int, default=0, help="steps of the ERM/DRO comparison (0: --steps)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--arch", default="resnet10")
    parser.add_argument("--widen", type=float, default=0.25)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--crop", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eta-q", type=float, default=1.0)
    parser.add_argument("--eval-draws", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "methods": {}, "dro": {}}

    print("| method | steps | loss, first 20 steps | loss, last 20 steps | change | seconds |")
    print("|---|---|---|---|---|---|")
    for method in [m for m in args.methods.split(",") if m]:
        _, rows, seconds = train(args, method, "erm", args.work)
        first = float(np.mean([r["loss"] for r in rows[:20]]))
        last = float(np.mean([r["loss"] for r in rows[-20:]]))
        results["methods"][method] = {"first20": first, "last20": last, "seconds": seconds, "steps": len(rows)}
        print(f"| {method} | {len(rows)} | {first:.4f} | {last:.4f} | {100 * (last - first) / first:+.1f} % | "
              f"{seconds:.0f} |", flush=True)

    if args.dro_method == "none":
        (args.work / "results.json").write_text(json.dumps(results, indent=1))
        return
    steps = args.dro_steps or args.steps
    args_dro = argparse.Namespace(**{**vars(args), "steps": steps})
    print(f"\n{args.dro_method}, {steps} steps, per-site mean loss on every case (fixed views, "
          f"{args.eval_draws} draws):\n")
    table = {}
    for mode in ("erm", "exponentiated", "worst-group"):
        run, rows, seconds = train(args_dro, args.dro_method, mode, args.work)
        per_site = evaluate(args_dro, args.dro_method, run, args.work)
        q = rows[-1]["q"]
        table[mode] = {"per_site": per_site, "worst": max(per_site.values()),
                       "worst_site": max(per_site, key=per_site.get), "mean": float(np.mean(list(per_site.values()))),
                       "q_final": q, "train_group_losses_last": rows[-1]["group_losses"], "seconds": seconds}
    results["dro"] = table
    sites = sorted(table["erm"]["per_site"])
    print("| training | " + " | ".join(sites) + " | worst site | mean | final q |")
    print("|---|" + "---|" * len(sites) + "---|---|---|")
    for mode, r in table.items():
        q = ", ".join(f"{v:.2f}" for v in r["q_final"].values())
        print(f"| {mode} | " + " | ".join(f"{r['per_site'][s]:.4f}" for s in sites)
              + f" | {r['worst']:.4f} ({r['worst_site']}) | {r['mean']:.4f} | {q} |")
    (args.work / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
