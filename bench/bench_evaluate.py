"""Speed of `neuroradfm evaluate`, side by side with a naive version in one run (ratios hold on a noisy machine).

1. Embeddings: one bundle's cases embedded from an empty embedding cache (the preprocessed cases already cached,
   as after training) against a rerun that reads every embedding back from the cache.
2. Analysis: every section (marker probes with bootstrap CIs, continuous targets, survival, site invariance, data
   efficiency, the comparison) for two bundles on 200 cases, as ``evaluate`` runs it (BLAS/OpenMP limited to one
   thread around the thousands of small fits; bootstrap AUCs as scipy's Mann-Whitney U) against the obvious way
   (default threads; scikit-learn's roc_auc_score in every bootstrap draw). The 200 cases are the cohort's real
   embeddings, repeated with small noise to reach 200 (a repeat keeps its case's subject id, so that it stays in
   its fold): the cost depends on the number of cases, features and markers, not on what they hold.

Run: python bench/bench_evaluate.py --manifest build/eval-phantom/manifest.csv \
         --model build/eval-bundles/erm build/eval-bundles/dro --cache build/eval-cache
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from neuroradfm.evaluate import compare, run
from neuroradfm.evaluate.data import eval_data
from neuroradfm.evaluate.embeddings import bundle_folder, embed_cases
from neuroradfm.evaluate.splits import make_split
from neuroradfm.io import read_manifest
from neuroradfm.models.bundle import load_bundle

N_CASES = 200


def _timed(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def analysis(features: list[np.ndarray], data, settings, naive: bool) -> float:
    """Seconds for every section of every bundle and their comparison."""
    split = make_split(data, "kfold", folds=settings.folds, seed=settings.seed)
    limit = nullcontext if naive else (lambda: threadpool_limits(1))
    patches = [mock.patch.object(module, "auc", roc_auc_score) for module in
               (run.markers_eval, compare)] if naive else []
    start = time.perf_counter()
    for patch in patches:
        patch.start()
    try:
        oofs = []
        for x in features:
            with limit():
                _, oof = run._analyse(x, data, split, settings, None, False, lambda *a, **k: None)
            oofs.append(oof)
        with limit():
            compare.compare_bundles("a", oofs[0], "b", oofs[1], data, seed=settings.seed, n_boot=settings.n_boot)
    finally:
        for patch in patches:
            patch.stop()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--model", type=Path, nargs=2, required=True)
    parser.add_argument("--cache", type=Path, required=True, help="preprocessed-case cache of the cohort")
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap draws per interval (evaluate: 1000)")
    parser.add_argument("--efficiency-seeds", type=int, default=2, help="data-efficiency repeats (evaluate: 5)")
    args = parser.parse_args()
    entries = read_manifest(args.manifest)
    bundles = [load_bundle(m) for m in args.model]
    device = torch.device("cpu")

    scratch = Path(tempfile.mkdtemp(prefix="bench-evaluate-"))
    try:  # a copy of the preprocessed cache without embeddings: the cold run embeds, the warm one reads back
        for item in args.cache.glob("*.npy"):
            (scratch / item.name).symlink_to(item.resolve())
        cold, first = _timed(lambda: embed_cases(bundles[0], entries, scratch, device, batch_size=4))
        warm, again = _timed(lambda: embed_cases(bundles[0], entries, scratch, device, batch_size=4))
        assert np.array_equal(first.features, again.features) and again.cached == len(entries)
        cache_mb = sum(f.stat().st_size for f in bundle_folder(scratch, bundles[0]).glob("*.npz")) / 1e6
    finally:
        shutil.rmtree(scratch)
    print(f"| embeddings, {len(entries)} cases, one bundle | {cold:.1f} s (empty cache) | {warm:.2f} s (cached) | "
          f"{cold / warm:.0f}x | cache {cache_mb:.2f} MB |")

    features = [embed_cases(b, entries, args.cache, device).features for b in bundles]
    data, _, _ = eval_data(entries)
    rng = np.random.default_rng(0)
    repeat = rng.choice(len(entries), N_CASES - len(entries), replace=True)
    rows = np.concatenate([np.arange(len(entries)), repeat])
    big = data.subset(rows)
    big.case_ids = [f"{c}#{i}" for i, c in enumerate(big.case_ids)]  # subjects stay the originals'
    big_features = [x[rows] + rng.normal(0, 0.05, size=(N_CASES, x.shape[1])) * x.std(axis=0) for x in features]
    settings = run.EvaluateSettings(device="cpu", n_boot=args.bootstrap, efficiency_seeds=args.efficiency_seeds)
    ours = analysis(big_features, big, settings, naive=False)
    naive = analysis(big_features, big, settings, naive=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"| analysis, {N_CASES} cases x 2 bundles, all sections, {settings.n_boot} bootstrap draws, "
          f"{settings.efficiency_seeds} efficiency seeds | {ours:.1f} s | naive {naive:.1f} s | "
          f"{naive / ours:.1f}x | peak RSS {peak:.0f} MB |")


if __name__ == "__main__":
    main()
