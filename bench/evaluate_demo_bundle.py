"""Held-out evaluation of the demo bundle on fresh phantom cases (a seed it never saw).

Run: .venv/bin/python bench/evaluate_demo_bundle.py [--n 40] [--native-fraction 0.25] [--model BUNDLE]
Prints marker AUCs, the survival c-index, the Grad-CAM localisation (fraction of maps whose peak lies
inside the planted tumour) per head, and how often the OOD score flags these in-distribution cases
(BraTS-style and native apart); the figures go into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from lifelines.utils import concordance_index
from sklearn.metrics import roc_auc_score

from neuroradfm.demo import demo_bundle_path
from neuroradfm.evaluate.cam_localisation import hit_fraction, peak_in_tumour
from neuroradfm.io.case import Case
from neuroradfm.models.bundle import load_bundle
from neuroradfm.phantom import generate_case
from neuroradfm.phantom.cohort import is_native
from neuroradfm.predict import SURVIVAL_HEAD, predict_case


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--seed", type=int, default=424242)
    parser.add_argument("--native-fraction", type=float, default=0.0)
    parser.add_argument("--model", type=Path, default=None,
                        help="a candidate bundle trained on the demo cohort (default: the demo bundle)")
    args = parser.parse_args()
    bundle = load_bundle(args.model or demo_bundle_path())
    truth, probability, risk, days, events, hits = {}, {}, [], [], [], []
    flags: dict[str, list[bool]] = {"native": [], "brats-style": []}
    start = time.perf_counter()
    for index in range(args.n):
        native = is_native(index, args.seed, args.native_fraction)
        images, seg, row = generate_case(index, seed=args.seed, n_sites=4, spacing=2.0, native=native)
        prediction = predict_case(Case(f"eval-{index}", **images, seg=seg), bundle, device="cpu")
        flags["native" if native else "brats-style"].append(prediction.ood_flag)
        for m in prediction.markers:
            truth.setdefault(m.key, []).append(row[m.key])
            probability.setdefault(m.key, []).append(m.probability)
        risk.append(prediction.survival.risk_score)
        days.append(row["os_days"])
        events.append(row["os_event"])
        hits.append(peak_in_tumour(prediction, seg))
    seconds = (time.perf_counter() - start) / args.n
    fractions = hit_fraction(hits)
    print(f"{args.n} held-out phantom cases (seed {args.seed}), {seconds:.1f} s per case\n")
    print("| head | held-out AUC / c-index | CAM peak in tumour |")
    print("|---|---|---|")
    for key in truth:
        y = np.asarray(truth[key])
        auc = roc_auc_score(y, probability[key]) if 0 < y.sum() < len(y) else float("nan")
        print(f"| {key} | {auc:.2f} | {fractions[key]:.0%} |")
    c_index = concordance_index(days, -np.asarray(risk), events)
    print(f"| {SURVIVAL_HEAD} | {c_index:.2f} | {fractions[SURVIVAL_HEAD]:.0%} |")
    print(f"| all maps | | {fractions['all']:.0%} |")
    for kind, flagged in flags.items():
        if flagged:
            print(f"OOD flag on held-out {kind} cases: {sum(flagged)}/{len(flagged)}")


if __name__ == "__main__":
    main()
