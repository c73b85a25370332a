"""Complete a (pretrained, encoder-only) bundle: fit probes, Cox and OOD on its frozen embeddings.

The encoder and its preprocessing come from the given bundle unchanged; the heads are fitted on every
usable case of the manifest (neuroradfm.train.baseline.fit_heads, cross-validated metrics in the card).
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import torch

import neuroradfm
from neuroradfm.io import read_manifest
from neuroradfm.models.bundle import load_bundle, save_bundle
from neuroradfm.models.encoder import resolve_device
from neuroradfm.progress import Progress, null_progress, sub_progress
from neuroradfm.train.baseline import DEFAULT_CAM_LAYER, embed, fit_heads
from neuroradfm.train.cohort import file_hash, prepare_cohort


def fit_heads_bundle(model: str | Path, manifest: str | Path, out: str | Path, card: dict[str, Any] | None = None,
                     progress: Progress = null_progress, cache_dir: str | Path | None = None, seed: int = 0,
                     device: str = "auto", cam_layer: str = DEFAULT_CAM_LAYER) -> Path:
    bundle = load_bundle(model)
    manifest = Path(manifest)
    resolved = resolve_device(device)
    cohort = prepare_cohort(read_manifest(manifest), bundle.preprocessing, sub_progress(progress, 0.0, 0.6),
                            cache_dir)
    progress("embed", 0.6, f"embedding {len(cohort.case_ids)} cases")
    embeddings, reference = embed(bundle.encoder.to(resolved), cohort.inputs, resolved, cam_layer=cam_layer)
    progress("heads", 0.8, "fitting probes, Cox and OOD on frozen embeddings")
    heads, skipped = fit_heads(embeddings, cohort, seed, reference, cam_layer)
    full = {k: v for k, v in bundle.card.items()
            if k not in ("format", "format_version", "architecture", "embedding_dim", "preprocessing", "heads",
                         "content_hash")}
    full["description"] = (str(bundle.card.get("description", "")) + " Heads fitted on frozen embeddings.").strip()
    full.update(card or {})
    training = dict(bundle.card.get("training", {}))
    training["heads"] = {"manifest": manifest.name, "manifest_hash": file_hash(manifest),
                         "cases": len(cohort.case_ids), "failed_cases": cohort.failures, "skipped_heads": skipped,
                         "sites": sorted(set(cohort.sites)), "seed": seed, "encoder_bundle_hash":
                         bundle.card.get("content_hash"),
                         "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                         "software": {"neuroradfm": neuroradfm.__version__, "torch": torch.__version__}}
    full["training"] = training
    path = save_bundle(out, bundle.encoder.cpu(), heads, bundle.preprocessing, full)
    progress("done", 1.0, str(path))
    return path
