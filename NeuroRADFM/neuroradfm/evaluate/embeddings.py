"""Frozen embeddings of a cohort, extracted once per (bundle, case) and kept on disk.

Extraction is the only slow part of an evaluation (preprocessing, then the encoder), so every case's result is
written as soon as it is computed: a killed run resumes where it stopped. A cache file is named by the bundle's
content hash (a folder per bundle) and by the case's preprocessing key (its files' paths, sizes and modification
times and the preprocessing settings, as the trainers' preprocessed cache), and it records the bundle hash and the
settings it was made with: a file written by another bundle or other settings is never read back as this one's.

With a bundle that has heads and a case with a tumour segmentation, the same forward pass also scores the
bundle's Grad-CAM maps against the tumour (``cam_localisation``), so a cached case needs no second pass.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from neuroradfm.atomic import atomic_file
from neuroradfm.cam import cams_at, encode_for_cam, upsample
from neuroradfm.errors import describe_failure
from neuroradfm.evaluate.cam_localisation import localisation, tumour_ball
from neuroradfm.io import CaseEntry
from neuroradfm.models.bundle import Bundle
from neuroradfm.predict import map_keys, map_signs, unsigned_map_weights
from neuroradfm.progress import Progress, null_progress
from neuroradfm.subsets import keep_only
from neuroradfm.train.cohort import _cache_stem, _prepare_case

EMBEDDINGS_FOLDER = "embeddings"
DILATION_MM = 4.0
"""How far around the segmented tumour a map's peak still counts as on the tumour: a model-grid cell or two."""


@dataclass
class Embedded:
    """One bundle's embeddings of the cases that could be embedded, in manifest order."""

    case_ids: list[str]
    features: np.ndarray
    failures: dict[str, str] = field(default_factory=dict)
    cam: dict[str, dict[str, tuple[bool, float]]] = field(default_factory=dict)
    """case id -> head key -> (map peak inside the dilated tumour, share of the map's mass inside it); only cases
    with a segmentation, only bundles with heads."""
    cached: int = 0
    """How many cases came from the cache."""


def bundle_folder(cache_dir: Path, bundle: Bundle) -> Path:
    digest = str(bundle.card.get("content_hash", "")).removeprefix("sha256:")
    return cache_dir / EMBEDDINGS_FOLDER / (digest[:24] or "unhashed")


def _identity(bundle: Bundle) -> tuple[str, str]:
    return str(bundle.card.get("content_hash", "")), json.dumps(bundle.preprocessing.to_dict(), sort_keys=True)


def _read(path: Path, bundle: Bundle) -> tuple[np.ndarray, dict[str, tuple[bool, float]]] | None:
    """A cached case, or None when there is none, it is unreadable or it was made by another bundle or settings."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            if (str(stored["bundle_hash"]), str(stored["preprocessing"])) != _identity(bundle):
                return None
            embedding = np.asarray(stored["embedding"], np.float64)
            keys = [str(k) for k in stored["cam_keys"]]
            cam = {k: (bool(p), float(m)) for k, p, m in zip(keys, stored["cam_peak"], stored["cam_mass"])}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return None
    if embedding.shape != (bundle.encoder.embedding_dim,) or not np.isfinite(embedding).all():
        return None
    return embedding, cam


def _write(path: Path, bundle: Bundle, embedding: np.ndarray, cam: dict[str, tuple[bool, float]]) -> None:
    bundle_hash, preprocessing = _identity(bundle)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, embedding=embedding, bundle_hash=np.array(bundle_hash), preprocessing=np.array(preprocessing),
                 cam_keys=np.array(list(cam), dtype=str), cam_peak=np.array([v[0] for v in cam.values()], bool),
                 cam_mass=np.array([v[1] for v in cam.values()], np.float64))


def encode(bundle: Bundle, channels: np.ndarray, device: torch.device) -> np.ndarray:
    """(B, D) float64 embeddings of (B, C, K, J, I) model inputs: the encoder's pooled features, no maps."""
    x = torch.from_numpy(np.asarray(channels, np.float32)).to(device)
    with torch.no_grad():
        z = bundle.encoder(x)[1]
    return z.double().cpu().numpy()


def _forward(bundle: Bundle, channels: np.ndarray, device: torch.device) -> tuple[np.ndarray, np.ndarray | None,
                                                                                   list[str]]:
    """(B, D) embeddings and, for a bundle with heads, every head's map for its predicted call, (B, M, K, J, I)
    rectified on the model grid, with the heads' keys."""
    heads = bundle.heads
    if heads is None or (not heads.markers and heads.cox is None):
        return encode(bundle, channels, device), None, []
    x = torch.from_numpy(channels.astype(np.float32)).to(device)
    layer = heads.cam_layer
    weights, biases = heads.marker_weights()
    cox_w, cox_b = heads.cox_weights() if heads.cox is not None else (None, 0.0)
    keys = map_keys(heads)
    activation, z = encode_for_cam(bundle.encoder, x, layer, copies=len(keys))
    embeddings = z[::len(keys)].detach().double().cpu().numpy()
    with np.errstate(all="ignore"):
        signs = np.stack([map_signs(heads, weights @ embedding + biases,
                                    None if cox_w is None else float(cox_w @ embedding + cox_b))
                          for embedding in embeddings])
    w = torch.as_tensor(unsigned_map_weights(heads), dtype=torch.float32, device=device)
    reference = None if heads.cam_reference is None else torch.as_tensor(heads.cam_reference)
    cells = cams_at(layer, activation, z, w, reference, copies=len(keys), rectify=False)
    with torch.no_grad():
        maps = upsample(cells, channels.shape[2:]).cpu().numpy()
    maps *= signs[:, :, None, None, None]
    return embeddings, np.maximum(maps, 0.0), keys


def embed_cases(bundle: Bundle, entries: list[CaseEntry], cache_dir: str | Path, device: torch.device,
                progress: Progress = null_progress, batch_size: int = 4,
                dilation_mm: float = DILATION_MM) -> Embedded:
    """Every case's embedding (from the cache when there, else preprocessed, encoded and written to it). A case that
    fails is reported and left out; the others go on."""
    cache = Path(cache_dir)
    folder = bundle_folder(cache, bundle)
    settings = bundle.preprocessing
    bundle.encoder.to(device).eval()
    found: dict[str, tuple[np.ndarray, dict[str, tuple[bool, float]]]] = {}
    failures: dict[str, str] = {}
    targets: dict[str, Path] = {}
    for entry in entries:
        stem = _cache_stem(entry, settings, cache)
        if stem is None:
            failures[entry.case_id] = describe_failure(_missing(entry))[1]
            continue
        targets[entry.case_id] = folder / f"{stem.name}.npz"
        cached = _read(targets[entry.case_id], bundle)
        if cached is not None:
            found[entry.case_id] = cached
    cached_count = len(found)
    todo = [e for e in entries if e.case_id in targets and e.case_id not in found]
    ball = tumour_ball(dilation_mm / settings.spacing_mm)
    done = cached_count
    for start in range(0, len(todo), batch_size):
        batch, channels, tumours = [], [], []
        for entry in todo[start:start + batch_size]:
            progress("embed", done / max(len(entries), 1), f"{bundle.name}: {entry.case_id}")
            try:
                prepared, tumour = _prepare_case(entry, settings, cache)
            except Exception as error:  # noqa: BLE001 - one failing case is reported, the others go on
                failures[entry.case_id] = describe_failure(error)[1]
                done += 1
                continue
            batch.append(entry)
            channels.append(np.asarray(prepared, np.float32))
            tumours.append(tumour)
        if not batch:
            continue
        embeddings, maps, keys = _forward(bundle, np.stack(channels), device)
        for i, entry in enumerate(batch):
            done += 1
            if not np.isfinite(embeddings[i]).all():
                failures[entry.case_id] = f"{entry.case_id}: the encoder gives non-finite features"
                continue
            cam = {}
            if maps is not None and tumours[i] is not None:
                brain = np.any(channels[i] != 0, axis=0)
                cam = {key: localisation(maps[i, m], tumours[i] > 0, brain, ball) for m, key in enumerate(keys)}
            _write(targets[entry.case_id], bundle, embeddings[i], cam)
            found[entry.case_id] = (embeddings[i], cam)
    progress("embed", 1.0, f"{bundle.name}: {len(found)} cases embedded ({cached_count} from the cache), "
                           f"{len(failures)} failed")
    ids = [e.case_id for e in entries if e.case_id in found]
    features = np.stack([found[i][0] for i in ids]) if ids else np.zeros((0, bundle.encoder.embedding_dim))
    return Embedded(ids, features, failures, {i: found[i][1] for i in ids if found[i][1]}, cached_count)


def embed_subsets(bundle: Bundle, entries: list[CaseEntry], cases: list[np.ndarray | None], cache_dir: str | Path,
                  device: torch.device, subsets: list[tuple[str, ...]], progress: Progress = null_progress,
                  batch_size: int = 4) -> tuple[dict[tuple[str, ...], np.ndarray], np.ndarray]:
    """Each case's embedding with only the channels of each subset (``subsets.keep_only``: the others zeroed, as
    preprocessing leaves a missing sequence), cached beside the case's all-four embedding; ``cases`` are the
    (4, K, J, I) model inputs of ``entries``. Returns {subset: (N, D)} and (N,) ``complete``: only a case whose four
    channels all hold an image is embedded (the rows of the others are NaN), since a case that lacks a sequence
    cannot be shown with it removed."""
    cache = Path(cache_dir)
    folder = bundle_folder(cache, bundle)
    bundle.encoder.to(device).eval()
    n, dim = len(entries), bundle.encoder.embedding_dim
    out = {subset: np.full((n, dim), np.nan) for subset in subsets}
    complete = np.zeros(n, bool)
    for done, (i, entry) in enumerate(enumerate(entries)):
        progress("subsets", done / max(n, 1), f"{bundle.name}: {entry.case_id}")
        stem = _cache_stem(entry, bundle.preprocessing, cache)
        paths = {s: None if stem is None else folder / f"{stem.name}.{'-'.join(s)}.npz" for s in subsets}
        cached = {s: None if p is None else _read(p, bundle) for s, p in paths.items()}
        if all(c is not None for c in cached.values()):  # only a complete case's subsets were ever written
            complete[i] = True
            for subset, (embedding, _) in cached.items():
                out[subset][i] = embedding
            continue
        if cases[i] is None:  # its model input could not be read back
            continue
        channels = np.asarray(cases[i], np.float32)
        complete[i] = bool(np.all(np.any(channels.reshape(len(channels), -1) != 0, axis=1)))
        if not complete[i]:
            continue
        todo = [s for s in subsets if cached[s] is None]
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            embeddings = encode(bundle, np.stack([keep_only(channels, s) for s in chunk]), device)
            for subset, embedding in zip(chunk, embeddings):
                out[subset][i] = embedding
                if paths[subset] is not None and np.isfinite(embedding).all():
                    _write(paths[subset], bundle, embedding, {})
        for subset in subsets:
            if cached[subset] is not None:
                out[subset][i] = cached[subset][0]
    progress("subsets", 1.0, f"{bundle.name}: {int(complete.sum())} cases with all four sequences, "
                             f"{len(subsets)} subsets")
    return out, complete


def _missing(entry: CaseEntry) -> Exception:
    """Why a case's files cannot be looked at (the loader's own error names the file)."""
    try:
        entry.load()
    except Exception as error:  # noqa: BLE001 - the loader says what is wrong
        return error
    return OSError(f"{entry.case_id}: its files cannot be read")
