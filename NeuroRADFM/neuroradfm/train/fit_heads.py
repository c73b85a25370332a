"""Complete a (pretrained, encoder-only) bundle: fit probes, Cox and OOD on its frozen embeddings.

The encoder and its preprocessing come from the given bundle unchanged; the heads are fitted on every
usable case of the manifest (neuroradfm.train.baseline.fit_heads, cross-validated metrics in the card).
A cohort too small for the heads' cross-validation (fewer than MIN_HEAD_CASES usable cases), or without one
marker or survival that has enough labelled cases, is refused before preprocessing when the manifest shows it
and again after it when cases that failed to load leave too few; a single marker without enough positives or
negatives is skipped, with its reason in the card.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import torch

import neuroradfm
from neuroradfm import CAM_LAYERS
from neuroradfm.errors import SettingsError
from neuroradfm.io import read_manifest
from neuroradfm.models.bundle import BUNDLE_FILES, load_bundle, save_bundle
from neuroradfm.models.encoder import resolve_device
from neuroradfm.output_paths import check_destination, check_destinations
from neuroradfm.progress import Progress, null_progress, sub_progress
from neuroradfm.train.baseline import DEFAULT_CAM_LAYER, check_heads_cohort, embed, fit_heads, heads_cv, manifest_cohort
from neuroradfm.train.cohort import file_hash, prepare_cohort
from neuroradfm.train.sequence_subsets import subset_reliability


def fit_heads_bundle(model: str | Path, manifest: str | Path, out: str | Path, card: dict[str, Any] | None = None,
                     progress: Progress = null_progress, cache_dir: str | Path | None = None, seed: int = 0,
                     device: str = "auto", cam_layer: str = DEFAULT_CAM_LAYER) -> Path:
    """Write ``out``: the bundle ``model``'s encoder with heads fitted on the manifest's cases; returns it."""
    manifest = Path(manifest)
    check_destination(out, BUNDLE_FILES, [model, manifest, cache_dir])  # the encoder bundle itself is never replaced
    check_destinations(folders={"--cache": cache_dir})
    bundle = load_bundle(model)
    if cam_layer not in CAM_LAYERS:
        raise SettingsError("--cam-layer", f"unknown Grad-CAM layer {cam_layer!r}; choose one of "
                                           f"{', '.join(CAM_LAYERS)}")
    resolved = resolve_device(device)
    entries = read_manifest(manifest)
    check_heads_cohort(manifest, manifest_cohort(entries), len(entries))
    cohort = prepare_cohort(entries, bundle.preprocessing, sub_progress(progress, 0.0, 0.6), cache_dir,
                            bundle.sequence_subsets)
    check_heads_cohort(manifest, cohort, len(entries))  # cases that failed to load may have left too few
    progress("embed", 0.6, f"embedding {len(cohort.case_ids)} cases")
    embeddings, reference = embed(bundle.encoder.to(resolved), cohort.inputs, resolved, cam_layer=cam_layer)
    progress("heads", 0.8, "fitting probes, Cox and OOD on frozen embeddings")
    heads, skipped = fit_heads(embeddings, cohort, seed, reference, cam_layer)
    progress("heads", 0.9, "held-out AUC of each sequence subset")
    reliability = subset_reliability(bundle.encoder, cohort, embeddings, heads, bundle.sequence_subsets, resolved, seed,
                                     "the heads' cases")
    full = {k: v for k, v in bundle.card.items()
            if k not in ("format", "format_version", "architecture", "embedding_dim", "preprocessing", "heads",
                         "content_hash", "subset_reliability")}
    full["sequence_subsets"] = [list(s) for s in bundle.sequence_subsets]
    if reliability is not None:
        full["subset_reliability"] = reliability
    full["description"] = (str(bundle.card.get("description", "")) + " Heads fitted on frozen embeddings.").strip()
    full.update(card or {})
    training = dict(bundle.card.get("training", {}))
    training["heads"] = {"manifest": manifest.name, "manifest_hash": file_hash(manifest),
                         "cases": len(cohort.case_ids), "failed_cases": cohort.failures, "skipped_heads": skipped,
                         "sites": sorted(set(cohort.sites)), **heads_cv(cohort), "seed": seed, "encoder_bundle_hash":
                         bundle.card.get("content_hash"),
                         "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                         "software": {"neuroradfm": neuroradfm.__version__, "torch": torch.__version__}}
    full["training"] = training
    path = save_bundle(out, bundle.encoder.cpu(), heads, bundle.preprocessing, full)
    progress("done", 1.0, str(path))
    return path
