"""Evidence for SSL pretraining with Group-DRO on the phantom cohort (with its site shortcuts).

Run (PYTHONPATH pointing at the core; see bench/RESULTS.md for the exact commands measured):
  neuroradfm phantom --n 48 --sites 4 --seed 7 --spacing 4 --out /tmp/evidence-phantom
  python bench/bench_pretrain.py --manifest /tmp/evidence-phantom/manifest.csv --work /tmp/ev --steps 300 \
      --mae-patch 8 --dro-method none
  python bench/bench_pretrain.py --manifest /tmp/evidence-phantom/manifest.csv --work /tmp/ev --methods "" \
      --mae-patch 8 --dro-train-per-site 2,8,8,8 --dro-heldout-per-site 4 --dro-steps 600 --eta-q 0.1 \
      --dro-seeds 0,1

1. Each method (``--methods``), ERM: the training loss of the first and last 20 steps; for DINO also its
   terms (cross-entropy = teacher entropy + KL(teacher || student)), logged per step by the trainer; and the
   mean pairwise cosine of 16 cases' embeddings (and EMA head outputs) before and after training.
2. ERM vs Group-DRO (``--dro-method``, default MAE: its loss is a reconstruction error of the input, so it
   can be compared between models; the other methods' losses are relative to each model's own teacher).
   The cohort is split per site, in sorted site order, into training cases (``--dro-train-per-site``, e.g.
   one site under-represented) and held-out cases (``--dro-heldout-per-site``, never trained on). Every mode
   (``--dro-modes``; ``-balanced`` adds the group-balanced sampler, ``-sampled`` draws the cases from q) is
   trained from the same seed(s) (same initialisation, data order and views), then
   evaluated on the held-out cases with fixed views and masks (``--eval-draws`` per case, seeds no training
   step used, eval-mode BatchNorm): per-site mean loss, the worst site, the mean, and q's trajectory.
   ``--eval-only`` trains nothing: it re-evaluates the runs already in WORK (their checkpoints, metrics and
   split manifests), and ``--eval-split train`` evaluates them on their TRAINING cases instead, the loss whose
   worst group Group-DRO minimises (Sagawa et al.), with the same fixed views and masks.
Prints Markdown tables and writes ``WORK/results.json`` (``WORK/results-eval-SPLIT.json`` with ``--eval-only``).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from neuroradfm.io import read_manifest
from neuroradfm.metrics import read_metrics
from neuroradfm.models.encoder import NORMS, Encoder, EncoderConfig
from neuroradfm.preprocess import PreprocessSettings
from neuroradfm.ssl import MethodSettings, build_method
from neuroradfm.ssl.augment import FLIPS
from neuroradfm.ssl.base import HEAD_NORMS
from neuroradfm.ssl.dino import DINO_CENTERINGS
from neuroradfm.ssl.mae import mask_spec
from neuroradfm.train.cohort import cache_cohort, file_hash
from neuroradfm.train.data import PretrainDataset, group_labels
from neuroradfm.train.pretrain import PretrainSettings, pretrain


def settings_from(args: argparse.Namespace, method: str, dro: str = "erm", seed: int | None = None,
                  steps: int | None = None) -> PretrainSettings:
    return PretrainSettings(
        method=method, encoder=EncoderConfig(args.arch, widen_factor=args.widen, conv1_stride=2, no_max_pool=True,
                                             norm=args.norm),
        preprocessing=PreprocessSettings(spacing_mm=4.0, size=(args.size,) * 3, n4=False), crop_size=args.crop,
        augment_strength=args.augment_strength, flips=args.flips,
        method_settings=MethodSettings(hidden_dim=128, proj_dim=64, dino_out_dim=args.dino_out_dim, dino_bottleneck=64,
                                       mae_decoder_dim=64, mae_patch=args.mae_patch, ema_momentum=args.ema,
                                       mae_mask_ratio=args.mask_ratio, mae_mask_per_sequence=args.mask_per_sequence,
                                       dino_teacher_temp=args.dino_teacher_temp,
                                       dino_teacher_temp_warmup=args.dino_temp_warmup,
                                       dino_centering=args.dino_centering, dino_koleo=args.dino_koleo,
                                       dino_center_momentum=args.dino_center_momentum,
                                       dino_head_norm=args.dino_head_norm),
        epochs=10_000, max_steps=steps or args.steps, batch_size=args.batch, learning_rate=args.lr,
        weight_decay=0.05, warmup_fraction=args.warmup, dro=dro, eta_q=args.eta_q, checkpoint_every=10_000,
        num_workers=0, seed=args.seed if seed is None else seed, device="cpu")


def train(args, manifest: Path, settings: PretrainSettings, run: Path, cache: Path) -> tuple[list[dict], float]:
    if args.eval_only:  # the run exists: check it was trained with these settings on this manifest, train nothing
        check_run(settings, run, manifest)
        return read_metrics(run / "metrics.jsonl"), float("nan")
    for stale in (run / "metrics.jsonl", run / "ckpt.pt"):
        stale.unlink(missing_ok=True)
    start = time.perf_counter()
    pretrain(manifest, run / "bundle", settings, cache_dir=cache, metrics_path=run / "metrics.jsonl",
             checkpoint_path=run / "ckpt.pt")
    return read_metrics(run / "metrics.jsonl"), time.perf_counter() - start


def check_run(settings: PretrainSettings, run: Path, manifest: Path) -> None:
    """Refuse to re-evaluate a run whose card disagrees with the settings rebuilt from the command line (e.g. a
    different ``--mae-patch`` would load fine but evaluate other masks) or whose training manifest changed."""
    card = json.loads((run / "bundle" / "card.json").read_text())
    recorded = card["training"]["settings"]
    # method settings added since the run was trained had their defaults then
    recorded["method_settings"] = {**MethodSettings().to_dict(), **recorded["method_settings"]}
    rebuilt = json.loads(json.dumps({k: v for k, v in asdict(settings).items() if k in recorded}))
    ignored = {"device", "num_workers", "checkpoint_every"}
    differ = sorted(k for k in rebuilt if k not in ignored and rebuilt[k] != recorded[k])
    if {**EncoderConfig().to_dict(), **card["architecture"]} != settings.encoder.to_dict():
        differ.append("encoder")
    if card["preprocessing"] != json.loads(json.dumps(settings.preprocessing.to_dict())):
        differ.append("preprocessing")
    if card["training"]["manifest_hash"] != file_hash(manifest):
        differ.append(f"training manifest ({manifest})")
    if differ:
        raise SystemExit(f"{run}: the run was trained with other {', '.join(differ)}; pass its settings")


@torch.no_grad()
def evaluate(manifest: Path, settings: PretrainSettings, run: Path | None, cache: Path, draws: int,
             eval_seed: int) -> dict[str, float]:
    """Per-site mean loss of a trained method on the manifest's cases, fixed views (eval-mode BatchNorm)."""
    entries = read_manifest(manifest)
    cohort = cache_cohort(entries, settings.preprocessing, cache)
    names, ids = group_labels(cohort.entries, "site", manifest)
    torch.manual_seed(settings.seed)
    encoder = Encoder(settings.encoder)
    model = build_method(settings.method, encoder, settings.method_settings, settings.crop_size)
    if run is not None:  # None: the untrained model of settings.seed (the initialisation every mode starts from)
        model.load_state_dict(torch.load(run / "ckpt.pt", weights_only=True)["model"])
    model.eval()
    ms = settings.method_settings
    dataset = PretrainDataset(cohort, ids, settings.crop_size, seed=eval_seed,
                              **mask_spec(settings.method, encoder, ms))
    losses = {n: [] for n in names}
    for draw in range(draws):
        dataset.epoch = draw
        for index in range(len(dataset)):
            sample = dataset[index]
            batch = {k: v[None] for k, v in sample.items() if k not in ("group", "index")}
            losses[names[ids[index]]].append(float(model(batch)[0]))
    return {n: float(np.mean(v)) for n, v in losses.items()}


def loss_share(rows: list[dict], q_weighted: bool) -> dict[str, float]:
    """Each group's share of the back-propagated loss, mean over steps: what the weighting actually did. ERM
    and DRO drawing its cases from q weight samples equally (share = the group's fraction of the batch); DRO
    weighting by q gives a present group q_g, renormalised over the groups present (an absent group gets
    nothing that step)."""
    groups = list(rows[0]["q"])
    shares = []
    for row in rows:
        counts = np.array([row["group_counts"][g] for g in groups], float)
        weight = np.where(counts > 0, [row["q"][g] for g in groups], 0.0) if q_weighted else counts
        shares.append(weight / weight.sum())
    return dict(zip(groups, np.mean(shares, axis=0).tolist()))


def split_manifest(manifest: Path, work: Path, train_per_site: list[int], heldout_per_site: int) -> tuple[Path, Path]:
    """Training and held-out manifests (absolute image paths): per site, in sorted site order, the first
    ``train_per_site[i]`` cases train and the LAST ``heldout_per_site`` cases are held out."""
    with manifest.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    fields = list(rows[0])
    for row in rows:
        for key in ("t1", "t1ce", "t2", "flair", "seg"):
            if row.get(key):
                row[key] = str((manifest.parent / row[key]).resolve())
    sites = sorted({r["site"] for r in rows})
    if len(train_per_site) != len(sites):
        raise SystemExit(f"--dro-train-per-site needs {len(sites)} numbers (sites {', '.join(sites)})")
    train_rows, heldout_rows = [], []
    for site, n_train in zip(sites, train_per_site):
        cases = [r for r in rows if r["site"] == site]
        if n_train + heldout_per_site > len(cases):
            raise SystemExit(f"{site} has {len(cases)} cases, fewer than {n_train} + {heldout_per_site}")
        train_rows += cases[:n_train]
        heldout_rows += cases[len(cases) - heldout_per_site:]
    paths = []
    for name, selected in (("train", train_rows), ("heldout", heldout_rows)):
        path = work / f"manifest-{name}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(selected)
        paths.append(path)
    return paths[0], paths[1]


@torch.no_grad()
def spread(args, settings: PretrainSettings, run: Path | None, cache: Path) -> dict[str, float]:
    """Mean pairwise cosine over 16 cases (one fixed view each, eval mode) of the encoder's embedding and of
    the EMA side's head output (BYOL target / MoCo keys / DINO teacher): near 1 = every case looks the same.
    Also the EMA head's view agreement (train mode, as the loss sees it): with each output minus the mean over
    the 32 outputs of two fixed views of the 16 cases, the mean dot product of a case's two views over the mean
    squared norm. 1: the views of a case agree exactly; 0: no more than two cases do (what the untrained
    teacher gives when crop offsets and flips matter more than the case: nothing for DINO to learn from)."""
    entries = read_manifest(args.manifest)
    cohort = cache_cohort(entries, settings.preprocessing, cache)
    _, ids = group_labels(cohort.entries, "site", args.manifest)
    dataset = PretrainDataset(cohort, ids, settings.crop_size, seed=10_000, strength=settings.augment_strength,
                              flips=settings.flips)
    samples = [dataset[i] for i in range(0, len(dataset), max(1, len(dataset) // 16))][:16]
    x = torch.stack([sample["view1"] for sample in samples])
    torch.manual_seed(settings.seed)
    model = build_method(settings.method, Encoder(settings.encoder), settings.method_settings, settings.crop_size)
    if run is not None:
        model.load_state_dict(torch.load(run / "ckpt.pt", weights_only=True)["model"])
    model.eval()

    def cosine(z: torch.Tensor) -> float:
        z = torch.nn.functional.normalize(z.float(), dim=-1)
        n = len(z)
        return float(((z @ z.T).sum() - n) / (n * n - n))

    out = {"embedding": cosine(model.encoder(x)[1])}
    ema = {"byol": ("target", "projector"), "moco": ("target", "projector"), "dino": ("teacher", "head")}
    if settings.method in ema:
        name, head = ema[settings.method]
        side = getattr(model, name)
        out["ema_head"] = cosine(side[head](side["encoder"](x)[1]))
        model.train()
        both = torch.cat([x, torch.stack([sample["view2"] for sample in samples])])
        d = side[head](side["encoder"](both)[1]).float()
        d = d - d.mean(dim=0, keepdim=True)
        n = len(samples)
        out["view_agreement"] = float((d[:n] * d[n:]).sum(dim=1).mean() / (d * d).sum(dim=1).mean())
    return out


def mean_of(rows: list[dict], key: str, sub: str | None = None) -> float:
    values = [r[key] if sub is None else r[key][sub] for r in rows]
    return float(np.mean([v for v in values if v is not None]))


def methods_table(args, results: dict) -> None:
    cache = args.work / "cache"
    print("| method | steps | lr | EMA | loss, first 20 steps | loss, last 20 steps | change | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    dino_rows = None
    for method in [m for m in args.methods.split(",") if m]:
        settings = settings_from(args, method)
        rows, seconds = train(args, args.manifest, settings, args.work / f"{method}-erm", cache)
        first, last = mean_of(rows[:20], "loss"), mean_of(rows[-20:], "loss")
        results["methods"][method] = {"first20": first, "last20": last, "seconds": seconds, "steps": len(rows),
                                      "lr": args.lr, "ema": args.ema}
        print(f"| {method} | {len(rows)} | {args.lr:g} | {args.ema:g} | {first:.4f} | {last:.4f} | "
              f"{100 * (last - first) / first:+.1f} % | {seconds:.0f} |", flush=True)
        if method == "dino":
            dino_rows = rows
        results["methods"][method]["cosine_untrained"] = spread(args, settings, None, cache)
        results["methods"][method]["cosine_trained"] = spread(args, settings, args.work / f"{method}-erm", cache)
    print("\nMean pairwise cosine over 16 cases of the embedding and of the EMA side's head output "
          "(untrained -> trained):\n")
    print("| method | embedding | EMA head output | EMA head's view agreement |")
    print("|---|---|---|---|")
    for method, r in results["methods"].items():
        a, b = r["cosine_untrained"], r["cosine_trained"]
        ema = f"{a['ema_head']:.3f} -> {b['ema_head']:.3f}" if "ema_head" in a else "-"
        agree = f"{a['view_agreement']:.3f} -> {b['view_agreement']:.3f}" if "view_agreement" in a else "-"
        print(f"| {method} | {a['embedding']:.3f} -> {b['embedding']:.3f} | {ema} | {agree} |")
    if dino_rows is None:
        return
    # DINO's terms: cross-entropy = H(teacher) + KL(teacher || student); batch entropy = H(mean teacher)
    log_k = dino_rows[0]["diagnostics"]["log_k"]
    n = len(dino_rows)
    spans = [(0, 20), (n // 4 - 10, n // 4 + 10), (n // 2 - 10, n // 2 + 10), (n - 20, n)]
    print(f"\nDINO's terms (means over 20 steps; log K = {log_k:.3f}):\n")
    print("| steps | teacher temperature | cross-entropy | teacher entropy H | KL(teacher, student) | "
          "entropy of the batch-mean teacher | student entropy |")
    print("|---|---|---|---|---|---|---|")
    table = []
    for a, b in spans:
        part = dino_rows[max(0, a):b]
        row = {k: mean_of(part, "diagnostics", k) for k in
               ("teacher_temperature", "cross_entropy", "teacher_entropy", "kl", "batch_teacher_entropy",
                "student_entropy")}
        row["steps"] = f"{part[0]['step']}-{part[-1]['step']}"
        table.append(row)
        print(f"| {row['steps']} | {row['teacher_temperature']:.3f} | {row['cross_entropy']:.3f} | "
              f"{row['teacher_entropy']:.3f} | {row['kl']:.3f} | {row['batch_teacher_entropy']:.3f} | "
              f"{row['student_entropy']:.3f} |")
    results["dino_terms"] = {"log_k": log_k, "spans": table}


def dro_tables(args, results: dict) -> None:
    cache = args.work / "cache"
    if args.eval_only:  # the manifests the runs were trained and evaluated with (check_run compares the hash)
        train_manifest, heldout_manifest = args.work / "manifest-train.csv", args.work / "manifest-heldout.csv"
    else:
        train_manifest, heldout_manifest = split_manifest(args.manifest, args.work,
                                                          [int(v) for v in args.dro_train_per_site.split(",")],
                                                          args.dro_heldout_per_site)
    eval_manifest = train_manifest if args.eval_split == "train" else heldout_manifest
    steps = args.dro_steps or args.steps
    seeds = [int(v) for v in args.dro_seeds.split(",")]
    modes = [m for m in args.dro_modes.split(",") if m]
    table: dict = {}
    for seed in seeds:
        settings = settings_from(args, args.dro_method, "erm", seed, steps)
        per_site = evaluate(eval_manifest, settings, None, cache, args.eval_draws, eval_seed=10_000)
        table[f"untrained/seed{seed}"] = {
            "mode": "untrained", "seed": seed, "per_site": per_site, "worst": max(per_site.values()),
            "worst_site": max(per_site, key=per_site.get), "mean": float(np.mean(list(per_site.values())))}
        for mode in modes:
            dro_mode = mode.removesuffix("-balanced").removesuffix("-sampled")
            settings = settings_from(args, args.dro_method, dro_mode, seed, steps)
            settings.group_balanced = mode.endswith("-balanced")  # every site sampled equally often
            settings.dro_sampling = mode.endswith("-sampled")  # each step's cases drawn in proportion to q
            run = args.work / f"dro-{args.dro_method}-{mode}-seed{seed}"
            rows, seconds = train(args, train_manifest, settings, run, cache)
            per_site = evaluate(eval_manifest, settings, run, cache, args.eval_draws, eval_seed=10_000)
            marks = sorted({max(1, round(f * len(rows))) for f in (0.25, 0.5, 0.75, 1.0)})
            table[f"{mode}/seed{seed}"] = {
                "mode": mode, "seed": seed, "per_site": per_site, "worst": max(per_site.values()),
                "worst_site": max(per_site, key=per_site.get), "mean": float(np.mean(list(per_site.values()))),
                "q": {str(m): rows[m - 1]["q"] for m in marks},
                "q_mean": {g: mean_of(rows, "q", g) for g in rows[0]["q"]},
                "train_loss_first20": mean_of(rows[:20], "loss"), "train_loss_last20": mean_of(rows[-20:], "loss"),
                "train_group_loss_mean": {g: mean_of(rows, "group_losses", g) for g in rows[0]["q"]},
                "loss_share": loss_share(rows, q_weighted=dro_mode != "erm" and not settings.dro_sampling),
                "seconds": seconds}
            r = table[f"{mode}/seed{seed}"]
            print(f"# {mode} seed {seed}: worst {r['worst']:.4f} ({r['worst_site']}), mean {r['mean']:.4f}, "
                  f"{seconds:.0f} s", flush=True)
    results["dro"] = table
    sites = sorted(next(iter(table.values()))["per_site"])
    cases = (f"the training cases ({train_manifest})" if args.eval_split == "train"
             else f"{args.dro_heldout_per_site} held-out cases per site")
    print(f"\n{args.dro_method}, {steps} steps, training cases per site {args.dro_train_per_site}; per-site mean "
          f"loss on {cases} ({args.eval_draws} fixed views each):\n")
    print("| training | seed | " + " | ".join(sites) + " | worst site | mean |")
    print("|---|---|" + "---|" * len(sites) + "---|---|")
    for r in table.values():
        print(f"| {r['mode']} | {r['seed']} | " + " | ".join(f"{r['per_site'][s]:.4f}" for s in sites)
              + f" | {r['worst']:.4f} ({r['worst_site']}) | {r['mean']:.4f} |")
    if len(seeds) > 1:
        for mode in ["untrained", *modes]:
            runs = [r for r in table.values() if r["mode"] == mode]
            print(f"| {mode} | mean of {len(runs)} | "
                  + " | ".join(f"{np.mean([r['per_site'][s] for r in runs]):.4f}" for s in sites)
                  + f" | {np.mean([r['worst'] for r in runs]):.4f} | {np.mean([r['mean'] for r in runs]):.4f} |")
    print("\nq (" + ", ".join(sites) + ") during training:\n")
    marks = list(next(r for r in table.values() if "q" in r)["q"])
    print("| training | seed | " + " | ".join(f"step {m}" for m in marks) + " | mean over steps |")
    print("|---|---|" + "---|" * len(marks) + "---|")
    for r in table.values():
        if r["mode"] in ("erm", "erm-balanced", "untrained"):
            continue
        print(f"| {r['mode']} | {r['seed']} | " + " | ".join(", ".join(f"{v:.2f}" for v in r["q"][m].values())
                                                           for m in marks)
              + " | " + ", ".join(f"{v:.2f}" for v in r["q_mean"].values()) + " |")
    print("\nShare of each step's back-propagated loss per site (" + ", ".join(sites) + "), mean over steps:\n")
    print("| training | seed | share |")
    print("|---|---|---|")
    for r in table.values():
        if "loss_share" in r:
            print(f"| {r['mode']} | {r['seed']} | " + ", ".join(f"{v:.3f}" for v in r["loss_share"].values()) + " |")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ssl-bench"))
    parser.add_argument("--methods", default="byol,dino,moco,mae")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--arch", default="resnet10")
    parser.add_argument("--widen", type=float, default=0.25)
    parser.add_argument("--norm", choices=tuple(NORMS), default="batch",
                        help="encoder normalisation layers")
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--crop", type=int, default=32)
    parser.add_argument("--augment-strength", type=float, default=1.0,
                        help="scale of the views' affine and intensity augmentation (0: crops and flips only)")
    parser.add_argument("--flips", choices=tuple(FLIPS), default="all", help="axes the views are flipped along")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=float, default=0.05, help="warm-up fraction of the steps")
    parser.add_argument("--mae-patch", type=int, default=0, help="MAE masked cube side (0: the encoder's stride)")
    parser.add_argument("--mask-ratio", type=float, default=0.6, help="MAE: fraction of masked cubes")
    parser.add_argument("--mask-per-sequence", action="store_true", help="MAE: each sequence's cubes on their own")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ema", type=float, default=0.996, help="EMA teacher momentum at the start (cosine to 1)")
    parser.add_argument("--dino-teacher-temp", type=float, default=0.07, help="final teacher temperature")
    parser.add_argument("--dino-centering", choices=DINO_CENTERINGS, default="ema")
    parser.add_argument("--dino-out-dim", type=int, default=256, help="DINO prototypes K")
    parser.add_argument("--dino-koleo", type=float, default=0.0, help="DINO: weight of the KoLeo term (0: off)")
    parser.add_argument("--dino-head-norm", choices=HEAD_NORMS, default="batch",
                        help="DINO: normalisation of the head's hidden layer")
    parser.add_argument("--dino-center-momentum", type=float, default=0.9, help="DINO: EMA momentum of the centre")
    parser.add_argument("--dino-temp-warmup", type=float, default=0.3,
                        help="fraction of training of the teacher temperature warm-up from 0.04 (0: constant)")
    parser.add_argument("--dro-method", default="mae", help="method of the ERM/DRO comparison; none: skip it")
    parser.add_argument("--dro-steps", type=int, default=0, help="steps of the ERM/DRO comparison (0: --steps)")
    parser.add_argument("--dro-modes", default="erm,exponentiated,worst-group",
                        help="comma-separated DRO modes; a '-balanced' suffix (e.g. exponentiated-balanced) also "
                             "samples every site equally often (--group-balanced), as Sagawa et al.'s DRO runs do; "
                             "'-sampled' draws each step's cases in proportion to q (--dro-sampling)")
    parser.add_argument("--dro-seeds", default="0")
    parser.add_argument("--dro-train-per-site", default="8,8,8,8", help="training cases per site (sorted sites)")
    parser.add_argument("--dro-heldout-per-site", type=int, default=4)
    parser.add_argument("--eta-q", type=float, default=0.1)
    parser.add_argument("--eval-draws", type=int, default=4)
    parser.add_argument("--eval-only", action="store_true",
                        help="train nothing: re-evaluate the ERM/DRO runs already in WORK (same settings needed)")
    parser.add_argument("--eval-split", choices=("heldout", "train"), default="heldout",
                        help="cases the ERM/DRO runs are evaluated on (train: their own training cases)")
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.eval_only and args.methods:
        raise SystemExit("--eval-only re-evaluates the ERM/DRO comparison only; pass --methods \"\"")
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "methods": {}, "dro": {}}
    if args.methods:
        methods_table(args, results)
    if args.dro_method != "none":
        dro_tables(args, results)
    name = f"results-eval-{args.eval_split}.json" if args.eval_only else "results.json"
    (args.work / name).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
