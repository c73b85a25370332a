"""The model bundle: the one format and the one loader.

A bundle is a folder with two files:
- ``weights.safetensors``: encoder weights (``encoder.*``) and large head arrays (``heads.*``);
- ``card.json``: everything else: architecture, input spec, preprocessing settings, heads
  (probe weights, feature scaling, thresholds, Cox coefficients and baseline survival),
  training provenance, intended use, and a content hash over both files.
No pickle: safetensors holds tensors only and the card is plain JSON.

``read_bundle_card`` checks a bundle without torch (what ``neuroradfm info`` prints); ``load_bundle``, the one
loader, runs the same checks through it and then reads the weights and builds the model. torch is imported only
where tensors are made, so the commands that need no model start without it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors import SafetensorError, safe_open

from neuroradfm import SEQUENCES
from neuroradfm.atomic import atomic_folder
from neuroradfm.errors import BundleError, InputError, not_a_file
from neuroradfm.hashing import file_sha256
from neuroradfm.models.card_schema import FORMAT, FORMAT_VERSION, Shapes, card_problems, report, tensor_problems
from neuroradfm.models.heads import CoxHead, Heads, MarkerHead, OodHead
from neuroradfm.preprocess.settings import PreprocessSettings

if TYPE_CHECKING:  # torch is imported where tensors are made: reading a card needs none
    import torch

    from neuroradfm.models.encoder import Encoder

CARD = "card.json"
WEIGHTS = "weights.safetensors"
BUNDLE_FILES = (CARD, WEIGHTS)
"""Everything a bundle folder holds; a folder holding anything else is not replaced by a new bundle."""
_DTYPE_NAMES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32", "float64": "F64"}
"""safetensors' names of the float dtypes by torch's (the card schema checks head tensors by these)."""


@dataclass
class Bundle:
    path: Path
    card: dict[str, Any]
    encoder: Encoder
    heads: Heads | None
    """None for an encoder-only bundle (a pretrained encoder before ``neuroradfm fit-heads``)."""
    preprocessing: PreprocessSettings

    @property
    def name(self) -> str:
        return str(self.card.get("name", self.path.name))

    @property
    def sequence_subsets(self) -> list[tuple[str, ...]]:
        """The sets of input sequences the bundle was trained for (card ``sequence_subsets``; all four when the
        card does not say: bundles trained before subsets existed)."""
        subsets = self.card.get("sequence_subsets") or [list(SEQUENCES)]
        return [tuple(s for s in SEQUENCES if s in subset) for subset in subsets]

    def require_subset(self, available: tuple[str, ...], case_id: str) -> None:
        """Refuse a case whose sequences are not a subset the bundle was trained for, naming the ones it takes."""
        if tuple(available) not in self.sequence_subsets:
            takes = "; ".join(" + ".join(s.upper() for s in subset) for subset in self.sequence_subsets)
            lacking = ", ".join(s.upper() for s in SEQUENCES if s not in available)
            raise InputError(None, f"case {case_id} has {' + '.join(s.upper() for s in available)} (no {lacking}); "
                                   f"the bundle {self.name} was trained for: {takes}")

    def require_heads(self) -> Heads:
        """The heads, or a clear error for an encoder-only bundle (pretrained, before ``fit-heads``)."""
        if self.heads is None:
            raise BundleError(self.path, "an encoder-only bundle has no heads to predict with; add them with "
                                         "neuroradfm fit-heads")
        if not self.heads.markers and self.heads.cox is None:
            raise BundleError(self.path, "the bundle has neither marker probes nor a survival model to predict "
                                         "with (its cohort had too few labelled cases: see training.skipped_heads)")
        return self.heads


def _canonical(card: dict[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in card.items() if k != "content_hash"}, sort_keys=True,
                      separators=(",", ":")).encode()


def content_hash(card: dict[str, Any], weights_file: Path) -> str:
    return "sha256:" + file_sha256(weights_file, prefix=_canonical(card))


def heads_to_card(heads: Heads) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Split heads into JSON-able card entries and large tensors for the weights file."""
    import torch

    card: dict[str, Any] = {
        "feature_mean": [float(v) for v in heads.feature_mean],
        "feature_scale": [float(v) for v in heads.feature_scale],
        "markers": [m.to_dict() for m in heads.markers],
        "cox": None if heads.cox is None else heads.cox.to_dict(),
        "ood": None,
        "cam_layer": heads.cam_layer,
    }
    tensors: dict[str, torch.Tensor] = {}
    if heads.ood is not None:
        card["ood"] = {"threshold": heads.ood.threshold, "percentile": heads.ood.percentile,
                       "mean": "heads.ood.mean", "precision": "heads.ood.precision"}
        tensors["heads.ood.mean"] = torch.as_tensor(heads.ood.mean, dtype=torch.float64)
        tensors["heads.ood.precision"] = torch.as_tensor(heads.ood.precision, dtype=torch.float64)
    if heads.cam_reference is not None:
        card["cam_reference"] = "heads.cam.reference"
        tensors["heads.cam.reference"] = torch.as_tensor(heads.cam_reference, dtype=torch.float32)
    return card, tensors


def _heads_from_card(card: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Heads:
    """Heads from a card that ``check_card`` found fine (every field is there, of the right kind and size)."""
    cam_layer = card.get("cam_layer", "layer4")
    ood = None
    if card.get("ood"):
        o = card["ood"]
        ood = OodHead(tensors[o["mean"]].numpy(), tensors[o["precision"]].numpy(), float(o["threshold"]),
                      float(o.get("percentile", 99.0)))
    return Heads(
        feature_mean=np.asarray(card["feature_mean"], np.float64),
        feature_scale=np.asarray(card["feature_scale"], np.float64),
        markers=[MarkerHead.from_dict(m) for m in card.get("markers", [])],
        cox=None if not card.get("cox") else CoxHead.from_dict(card["cox"]),
        ood=ood,
        cam_reference=tensors[card["cam_reference"]].numpy() if card.get("cam_reference") else None,
        cam_layer=cam_layer,
    )


def save_bundle(path: str | Path, encoder: Encoder, heads: Heads | None, preprocessing: PreprocessSettings,
                card: dict[str, Any]) -> Path:
    """Write a bundle folder atomically (a temporary sibling folder, then rename).

    ``card`` supplies the descriptive fields (name, description, intended_use, training, input);
    architecture, preprocessing, heads, format and hash are filled in here. ``heads=None`` writes an
    encoder-only bundle (card ``"heads": null``), e.g. the output of SSL pretraining. The card is checked
    as ``load_bundle`` checks it, before anything is written: a malformed card is never written.
    """
    from safetensors.torch import save_file

    path = Path(path)
    heads_card, head_tensors = (None, {}) if heads is None else heads_to_card(heads)
    full = dict(card)
    full.update({
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": encoder.config.to_dict(),
        "embedding_dim": encoder.embedding_dim,
        "preprocessing": preprocessing.to_dict(),
        "heads": heads_card,
    })
    tensors = {f"encoder.{k}": v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    tensors.update(head_tensors)
    check_card(path / CARD, full, {k: (tuple(v.shape), _DTYPE_NAMES.get(str(v.dtype).removeprefix("torch."),
                                                                         str(v.dtype)))
                                   for k, v in tensors.items()}, written=False)
    _check_finite(path / WEIGHTS, tensors, written=False)
    with atomic_folder(path, BUNDLE_FILES) as staging:
        save_file(tensors, str(staging / WEIGHTS), metadata={"format": FORMAT})
        full["content_hash"] = content_hash(full, staging / WEIGHTS)
        (staging / CARD).write_text(json.dumps(full, indent=1) + "\n", encoding="utf-8")
    return path


def read_card(path: str | Path) -> dict[str, Any]:
    """The card alone, checked for format and version (cheap: no weights are read)."""
    path = Path(path)
    card_file = path / CARD
    if not path.exists():
        raise BundleError(path, f"does not exist (a model bundle is a folder with {CARD} and {WEIGHTS})")
    if not path.is_dir():
        raise BundleError(path, f"is a file, not a model bundle: a bundle is a folder with {CARD} and {WEIGHTS} "
                                "(give the folder)")
    if not card_file.is_file():
        problem = not_a_file(card_file)
        raise BundleError(path, f"not a model bundle: {CARD} is missing" if problem == "file not found"
                          else f"{CARD} {problem}")
    try:
        card = json.loads(card_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError, and numbers too long to convert
        reason = "a number of thousands of digits" if "integer string conversion" in str(error) else str(error)
        raise BundleError(card_file, f"card is not valid JSON ({reason})") from None
    except RecursionError:
        raise BundleError(card_file, "card is not a bundle card (nested too deeply to read)") from None
    except OSError as error:
        raise BundleError(card_file, f"card cannot be read ({error.strerror or error})") from None
    found = card.get("format") if isinstance(card, dict) else None
    if found != FORMAT:
        raise BundleError(card_file, f"not a {FORMAT} card (format={found!r})")
    if card.get("format_version") != FORMAT_VERSION:
        raise BundleError(card_file, f"unknown bundle version {card.get('format_version')!r}; "
                                     f"this neuroradfm reads version {FORMAT_VERSION}")
    return card


def check_card(card_file: Path, card: dict[str, Any], shapes: Shapes | None = None, written: bool = True) -> None:
    """Refuse a malformed card with every problem named by its path in the card (a BundleError naming the card).

    ``shapes`` (weights entry -> shape and dtype) adds the checks of the tensors the card names.
    ``written=False``: the card is about to be written (``save_bundle``), and is not.
    """
    problems = card_problems(card)
    if not problems and shapes is not None:
        problems = tensor_problems(card, shapes, WEIGHTS)
    if problems:
        raise BundleError(card_file, report(problems) + ("" if written else " (nothing was written)"))


def _check_finite(path: Path, tensors: dict[str, torch.Tensor], written: bool = True) -> None:
    """NaN or infinite weights would give NaN predictions that look like answers."""
    import torch

    bad = [name for name, tensor in tensors.items()
           if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        raise BundleError(path, f"the tensors {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} hold NaN or "
                                f"infinite values" + ("" if written else " (nothing was written)"))


def _header(weights_file: Path) -> Shapes:
    """Shape and dtype of every entry, from the safetensors header alone (no tensor is read, torch is not needed)."""
    try:
        with safe_open(str(weights_file), framework="numpy") as handle:
            return {name: (tuple(handle.get_slice(name).get_shape()), handle.get_slice(name).get_dtype())
                    for name in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise BundleError(weights_file, f"unreadable weights ({error})") from None


def read_bundle_card(path: str | Path) -> dict[str, Any]:
    """A bundle's card once every check that needs no tensor values has passed: format, version, content hash,
    the whole card (its schema), and the weights file's tensor names, shapes and dtypes against the card (from the
    safetensors header). No torch: ``neuroradfm info`` prints this; ``load_bundle`` starts with it, then reads
    the values (refusing NaN or infinite ones) and builds the model."""
    path = Path(path)
    card = read_card(path)
    weights_file = path / WEIGHTS
    if not weights_file.is_file():
        problem = not_a_file(weights_file)
        raise BundleError(path, f"{WEIGHTS} is missing" if problem == "file not found" else f"{WEIGHTS} {problem}")
    expected = card.get("content_hash")
    actual = content_hash(card, weights_file)
    if expected != actual:
        raise BundleError(path, f"content hash does not match (card says {expected}, files give {actual}): "
                                "the bundle was modified or is corrupt")
    check_card(path / CARD, card, _header(weights_file))
    return card


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> Bundle:
    """The one bundle loader: checks format, version, content hash and the whole card (its schema, and the
    shapes of the tensors it names: ``read_bundle_card``) before building anything."""
    from safetensors.torch import load_file

    from neuroradfm.models.encoder import Encoder, EncoderConfig

    path = Path(path)
    card = read_bundle_card(path)
    weights_file = path / WEIGHTS
    try:
        tensors = load_file(str(weights_file))
    except (SafetensorError, OSError) as error:
        raise BundleError(weights_file, f"unreadable weights ({error})") from None
    _check_finite(weights_file, tensors)
    try:
        encoder = Encoder(EncoderConfig.from_dict(card["architecture"]))
        state = {k.removeprefix("encoder."): v for k, v in tensors.items() if k.startswith("encoder.")}
        encoder.load_state_dict(state)
        heads = None if card["heads"] is None else _heads_from_card(card["heads"], tensors)
        settings = PreprocessSettings.from_dict(card["preprocessing"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise BundleError(path, f"card and weights do not fit together ({error})") from None
    encoder.to(device).eval()
    return Bundle(path=path, card=card, encoder=encoder, heads=heads, preprocessing=settings)
