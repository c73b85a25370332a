"""Did self-supervised pretraining learn anything a linear probe can use? Frozen-embedding probes of SSL bundles.

A falling SSL loss is not evidence of a useful representation (BYOL's can fall by predicting a constant; DINO's
can rise into a collapse), so this compares each pretrained encoder-only bundle with an UNTRAINED encoder of the
identical architecture and seed (the initialisation its run started from) on the product's downstream protocol
(``neuroradfm fit-heads``): embed every case on the full model grid, standardise, one logistic probe per marker
(``neuroradfm.probes.fit_marker_probe``: its cross-validated AUC). Also reported: the cross-validated accuracy of a
logistic probe of the SITE (lower = more site-invariant; chance 1 / number of sites), and, as a reference for the
phantom's site-dependent case mix, marker probes on the one-hot site alone (what a pure site shortcut scores).
Every score is averaged over ``--cv-seeds`` shuffles of the folds. Nothing is trained but the probes.

Run (PYTHONPATH at the core; see bench/RESULTS.md for the measured command):
  python bench/probe_pretrained.py --manifest /tmp/evidence-phantom/manifest.csv \
      --bundles byol=/tmp/ev-final-methods/byol-erm/bundle,mae=/tmp/ev-final-methods/mae-erm/bundle \
      --cache /tmp/ev-final-methods/cache
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score

from neuroradfm.io import read_manifest
from neuroradfm.markers import MARKER_KEYS
from neuroradfm.models.bundle import load_bundle
from neuroradfm.models.encoder import Encoder, EncoderConfig
from neuroradfm.probes import fit_marker_probe, fit_scaling
from neuroradfm.train.baseline import embed
from neuroradfm.train.cohort import PreparedCohort, prepare_cohort


def marker_aucs(features: np.ndarray, cohort: PreparedCohort, seeds: list[int]) -> dict:
    """Cross-validated AUC per marker (the probes of ``fit-heads``), averaged over fold shuffles; also the mean
    over markers and its standard deviation over the shuffles (the fold split's share of the noise only)."""
    mean, scale = fit_scaling(features)
    standardised = (features - mean) / scale
    auc = np.array([[fit_marker_probe(standardised, cohort.labels[:, column], key, seed=seed).metrics["cv_auc"]
                     for seed in seeds] for column, key in enumerate(MARKER_KEYS)])
    return {"marker_auc": dict(zip(MARKER_KEYS, auc.mean(axis=1).tolist())),
            "mean_marker_auc": float(auc.mean()), "mean_marker_auc_sd_over_folds": float(auc.mean(axis=0).std())}


def site_accuracy(features: np.ndarray, sites: list[str], seeds: list[int], folds: int = 5) -> float:
    """Cross-validated accuracy of a logistic probe predicting the site: how much site the embedding carries."""
    mean, scale = fit_scaling(features)
    x, y = (features - mean) / scale, np.asarray(sites)
    return float(np.mean([cross_val_score(LogisticRegression(C=0.1, max_iter=5000), x, y,
                                          cv=StratifiedKFold(folds, shuffle=True, random_state=seed)).mean()
                          for seed in seeds]))


def untrained_encoder(architecture: dict, seed: int) -> Encoder:
    """The encoder a pretraining run started from: ``pretrain`` seeds torch with the run's seed, then builds it."""
    torch.manual_seed(seed)
    return Encoder(EncoderConfig.from_dict(architecture)).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--bundles", required=True, help="name=bundle-folder,... (encoder-only SSL bundles)")
    parser.add_argument("--cache", type=Path, help="prepared-cohort cache of the runs (nothing re-preprocessed)")
    parser.add_argument("--cv-seeds", default="0,1,2,3,4")
    parser.add_argument("--untrained-seeds", default="",
                        help="extra initialisation seeds of the untrained encoder (how much a random init varies); "
                             "the runs' own seeds are always included")
    parser.add_argument("--out", type=Path, help="results JSON")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(v) for v in args.cv_seeds.split(",")]
    bundles = {name: load_bundle(path) for name, path in (item.split("=", 1) for item in args.bundles.split(","))}
    first = next(iter(bundles.values()))
    for name, bundle in bundles.items():
        if bundle.preprocessing != first.preprocessing or bundle.card["architecture"] != first.card["architecture"]:
            raise SystemExit(f"{name}: preprocessing or architecture differs from the first bundle's")
    seeds_of_runs = {int(b.card["training"]["settings"]["seed"]) for b in bundles.values()}
    seeds_of_runs |= {int(v) for v in args.untrained_seeds.split(",") if v}
    cached = len(list(args.cache.glob("*.npy"))) if args.cache else 0
    cohort = prepare_cohort(read_manifest(args.manifest), first.preprocessing, cache_dir=args.cache)
    if args.cache and len(list(args.cache.glob("*.npy"))) != cached:
        print(f"# note: the cache {args.cache} did not hold every case; the missing ones were preprocessed")
    device = torch.device("cpu")
    encoders = {f"untrained (seed {s})": untrained_encoder(first.card["architecture"], s)
                for s in sorted(seeds_of_runs)}
    encoders.update({f"{name} ({bundle.card['training']['steps']} steps)": bundle.encoder
                     for name, bundle in bundles.items()})
    results: dict = {}
    for name, encoder in encoders.items():
        features, _ = embed(encoder, cohort.inputs, device)
        results[name] = {**marker_aucs(features, cohort, seeds),
                         "site_accuracy": site_accuracy(features, cohort.sites, seeds)}
        print(f"# {name}: mean AUC {results[name]['mean_marker_auc']:.3f}, "
              f"site accuracy {results[name]['site_accuracy']:.3f}", flush=True)
    sites = sorted(set(cohort.sites))
    one_hot = np.array([[float(s == t) for t in sites] for s in cohort.sites])
    results["site label only (one-hot)"] = {**marker_aucs(one_hot, cohort, seeds), "site_accuracy": None}
    print(f"\n{len(cohort.case_ids)} cases, {len(sites)} sites (chance site accuracy {1 / len(sites):.2f}); "
          f"5-fold CV, mean over {len(seeds)} fold shuffles:\n")
    print("| encoder | mean marker AUC (sd over fold shuffles) | site accuracy |")
    print("|---|---|---|")
    for name, r in results.items():
        site = "-" if r["site_accuracy"] is None else f"{r['site_accuracy']:.3f}"
        print(f"| {name} | {r['mean_marker_auc']:.3f} ({r['mean_marker_auc_sd_over_folds']:.3f}) | {site} |")
    print("\nCross-validated AUC per marker:\n")
    print("| encoder | " + " | ".join(MARKER_KEYS) + " |")
    print("|---|" + "---|" * len(MARKER_KEYS))
    for name, r in results.items():
        print(f"| {name} | " + " | ".join(f"{r['marker_auc'][k]:.2f}" for k in MARKER_KEYS) + " |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
