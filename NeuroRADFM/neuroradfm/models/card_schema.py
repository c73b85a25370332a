"""What a bundle card may say: a JSON Schema for every field the loader and prediction read, plus the checks
across fields that a schema cannot express.

A malformed card must be refused before anything is built, with every wrong field named by its path in the
card (``heads.markers[2].threshold: expected a number, got null``), all at once, rather than surface later as
a TypeError or a silently wrong prediction. ``card_problems`` checks the card alone (the schema, array lengths
against ``embedding_dim``, the architecture's embedding size, Cox baseline lengths and order, one head per
marker); ``tensor_problems`` checks the weights file's entries against the card (the encoder's tensors and
the head tensors the card names, by shape, from the safetensors header: nothing is loaded).
Neither imports torch: what the architecture implies (embedding size, tensor shapes, activation sizes) is
arithmetic on the card (models/architecture.py), so ``neuroradfm info`` starts in well under a second.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from jsonschema import Draft202012Validator, ValidationError, validators

from neuroradfm import CAM_LAYERS, SEQUENCES
from neuroradfm.markers import MARKER_KEYS
from neuroradfm.models.architecture import (
    BLOCKS,
    NORM_TENSORS,
    EncoderConfig,
    activation_shape,
    build_problem,
    embedding_dim,
    tensor_shapes,
)
from neuroradfm.preprocess.settings import _CHOICES, SPACING_RANGE_MM

FORMAT = "neuroradfm-bundle"
FORMAT_VERSION = 1
MAX_GRID = 1024
"""Voxels per axis of the model grid beyond which a card is refused (MNI152 at 1 mm is 193 x 229 x 193)."""
REPORTED = 20
"""Problems listed in one error; the rest are counted."""
HEAD_TENSOR_DTYPES = ("F16", "F32", "F64")
"""safetensors dtypes a head tensor may have (the heads read them as numpy arrays)."""

Shapes = Mapping[str, tuple[tuple[int, ...], str]]
"""Weights file entry -> (shape, safetensors dtype name such as "F32")."""


def _number(**limits: float) -> dict[str, Any]:
    return {"type": "number", "finite": True, **limits}


_NUMBERS = {"type": "array", "items": _number()}
_METRICS = {"type": "object", "additionalProperties": {"type": "number"}}
"""Informational (cross-validated AUC, c-index, counts): numbers, but NaN is allowed (an undefined metric)."""
_TENSOR_NAME = {"type": "string", "minLength": 1}

MARKER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["key", "coef", "intercept", "threshold"],
    "additionalProperties": False,
    "properties": {
        "key": {"title": "marker", "enum": list(MARKER_KEYS)},
        "coef": _NUMBERS,
        "intercept": _number(),
        "threshold": _number(minimum=0, maximum=1),
        "metrics": _METRICS,
    },
}

COX_SCHEMA: dict[str, Any] = {
    "type": ["object", "null"],
    "required": ["coef", "offset", "baseline_times", "baseline_survival", "median_risk"],
    "additionalProperties": False,
    "properties": {
        "coef": _NUMBERS,
        "offset": _number(),
        "baseline_times": {"type": "array", "minItems": 1, "items": _number(minimum=0)},
        "baseline_survival": {"type": "array", "minItems": 1, "items": _number(minimum=0, maximum=1)},
        "median_risk": _number(),
        "metrics": _METRICS,
    },
}

OOD_SCHEMA: dict[str, Any] = {
    "type": ["object", "null"],
    "required": ["threshold", "mean", "precision"],
    "additionalProperties": False,
    "properties": {
        "threshold": _number(minimum=0),
        "percentile": _number(exclusiveMinimum=0, maximum=100),
        "mean": _TENSOR_NAME,
        "precision": _TENSOR_NAME,
    },
}

HEADS_SCHEMA: dict[str, Any] = {
    "type": ["object", "null"],
    "required": ["feature_mean", "feature_scale"],
    "additionalProperties": False,
    "properties": {
        "feature_mean": _NUMBERS,
        "feature_scale": {"type": "array", "items": _number(exclusiveMinimum=0)},
        "markers": {"type": "array", "items": MARKER_SCHEMA},
        "cox": COX_SCHEMA,
        "ood": OOD_SCHEMA,
        "cam_layer": {"title": "Grad-CAM layer", "enum": list(CAM_LAYERS)},
        "cam_reference": {"type": ["string", "null"], "minLength": 1},
    },
}

ARCHITECTURE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["arch"],
    "additionalProperties": False,
    "properties": {
        "arch": {"title": "encoder", "enum": list(BLOCKS)},
        "in_channels": {"type": "integer", "const": len(SEQUENCES)},
        "conv1_stride": {"type": "integer", "minimum": 1},
        "widen_factor": _number(exclusiveMinimum=0),
        "no_max_pool": {"type": "boolean"},
        "availability_mask": {"type": "boolean"},
        "norm": {"title": "normalisation", "enum": list(NORM_TENSORS)},
    },
}

PREPROCESSING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "spacing_mm": _number(minimum=SPACING_RANGE_MM[0], maximum=SPACING_RANGE_MM[1]),
        "size": {"type": "array", "minItems": 3, "maxItems": 3,
                 "items": {"type": "integer", "minimum": 8, "maximum": MAX_GRID}},
        "reference": {"title": "reference sequence", "enum": list(SEQUENCES)},
        "n4": {"type": "boolean"},
        **{name: {"title": f"{name} choice", "enum": list(choices)} for name, choices in _CHOICES.items()},
    },
}

_SUBSET = {"type": "array", "minItems": 1, "maxItems": len(SEQUENCES), "uniqueItems": True,
           "items": {"title": "sequence", "enum": list(SEQUENCES)}}

SUBSET_RELIABILITY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["subsets"],
    "properties": {
        "method": {"type": "string"},
        "cases": {"type": "integer", "minimum": 0},
        "subsets": {"type": "array", "items": {
            "type": "object",
            "required": ["sequences"],
            "properties": {"sequences": _SUBSET, "mean_auc": {"type": ["number", "null"]},
                           "auc": {"type": "object", "additionalProperties": {"type": ["number", "null"]}}},
        }},
    },
}
"""Informational, quoted next to predictions: the held-out AUC of each marker for each evaluated sequence subset."""

CARD_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "neuroradfm model bundle card",
    "description": "card.json of a neuroradfm bundle. Numbers marked 'finite' must not be NaN or Infinity. "
                   "Descriptive fields (training, input, rebuild_command, ...) are free.",
    "type": "object",
    "required": ["format", "format_version", "architecture", "embedding_dim", "preprocessing", "heads"],
    "properties": {
        "format": {"const": FORMAT},
        "format_version": {"const": FORMAT_VERSION},
        "content_hash": {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"},
        "name": {"type": "string"},
        "description": {"type": "string"},
        "intended_use": {"type": "string"},
        "architecture": ARCHITECTURE_SCHEMA,
        "embedding_dim": {"type": "integer", "minimum": 1},
        "preprocessing": PREPROCESSING_SCHEMA,
        "heads": HEADS_SCHEMA,
        "sequence_subsets": {"type": "array", "minItems": 1, "items": _SUBSET},
        "subset_reliability": SUBSET_RELIABILITY_SCHEMA,
    },
}


def _finite(validator: Any, wanted: bool, instance: Any, schema: dict[str, Any]):
    """The ``finite`` keyword: JSON from Python may hold NaN and Infinity, which every other keyword lets pass."""
    if wanted and validator.is_type(instance, "number") and not math.isfinite(instance):
        yield ValidationError(f"expected a finite number, got {_show(instance)}")


CardValidator = validators.extend(
    Draft202012Validator, {"finite": _finite},
    # JSON Schema counts 2.0 as an integer; torch's layers do not take a float channel count or stride
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool)),
)

_TYPE_WORDS = {"number": "a number", "integer": "a whole number", "string": "text", "boolean": "true or false",
               "array": "a list", "object": "an object", "null": "null"}


def path_text(parts: Any) -> str:
    """``heads.markers[2].threshold`` for the parts ("heads", "markers", 2, "threshold")."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(the card)"


def _show(value: Any) -> str:
    """A value as the card spells it (short)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    if isinstance(value, list):
        return f"a list of {len(value)} values"
    if isinstance(value, dict):
        return "an object"
    return repr(value)


def _limit(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _messages(error: ValidationError) -> list[tuple[str, str]]:
    """(path, problem) for one schema error, in words; ``required`` and ``additionalProperties`` name the field."""
    parts = list(error.absolute_path)
    keyword, value, instance, schema = error.validator, error.validator_value, error.instance, error.schema
    if keyword == "required":
        return [(path_text([*parts, name]), "missing") for name in value if name not in instance]
    if keyword == "additionalProperties":
        known = schema.get("properties", {})
        return [(path_text([*parts, name]), "not a field of a bundle card (misspelt, or from a newer neuroradfm?)")
                for name in instance if name not in known]
    if keyword == "type":
        wanted = [value] if isinstance(value, str) else list(value)
        return [(path_text(parts), f"expected {' or '.join(_TYPE_WORDS.get(t, t) for t in wanted)}, "
                                   f"got {_show(instance)}")]
    if keyword == "enum":
        return [(path_text(parts), f"unknown {schema.get('title', 'value')} {_show(instance)}; choose one of "
                                   f"{', '.join(map(str, value))}")]
    if keyword == "const":
        return [(path_text(parts), f"must be {_show(value)}, got {_show(instance)}")]
    if keyword in ("minimum", "maximum") and "minimum" in schema and "maximum" in schema:
        return [(path_text(parts), f"must be between {_limit(schema['minimum'])} and {_limit(schema['maximum'])}, "
                                   f"got {_show(instance)}")]
    words = {"minimum": "at least", "maximum": "at most", "exclusiveMinimum": "greater than",
             "exclusiveMaximum": "less than"}
    if keyword in words:
        return [(path_text(parts), f"must be {words[keyword]} {_limit(value)}, got {_show(instance)}")]
    if keyword in ("minItems", "maxItems"):
        low, high = schema.get("minItems"), schema.get("maxItems")
        count = f"{low}" if low == high else (f"at least {low}" if keyword == "minItems" else f"at most {high}")
        return [(path_text(parts), f"expected {count} values, got {len(instance)}")]
    if keyword == "minLength":
        return [(path_text(parts), "must not be empty")]
    if keyword == "pattern":
        return [(path_text(parts), f"does not have the expected form ({value}), got {_show(instance)}")]
    return [(path_text(parts), error.message)]


def _length(card: dict[str, Any], parts: list[Any], expected: int, why: str) -> list[tuple[str, str]]:
    value = _get(card, parts)
    if isinstance(value, list) and len(value) != expected:
        return [(path_text(parts), f"expected {expected} values ({why}), got {len(value)}")]
    return []


def _get(card: Any, parts: list[Any]) -> Any:
    """The value at ``parts``, or None where the card does not have that shape."""
    for part in parts:
        if isinstance(part, int) and isinstance(card, list) and part < len(card):
            card = card[part]
        elif isinstance(part, str) and isinstance(card, dict):
            card = card.get(part)
        else:
            return None
    return card


def _encoder_config(card: dict[str, Any]) -> tuple[EncoderConfig | None, str | None]:
    """The card's encoder settings, or None and why the encoder cannot be built from them."""
    try:
        config = EncoderConfig.from_dict(card["architecture"])
    except (KeyError, TypeError, ValueError) as error:
        return None, str(error)
    problem = build_problem(config)
    return (None, problem) if problem else (config, None)


def _cross_field(card: dict[str, Any], schema_ok: set[str]) -> list[tuple[str, str]]:
    """What a schema cannot say: lengths against ``embedding_dim`` and each other, order, uniqueness."""
    found: list[tuple[str, str]] = []
    dim = card.get("embedding_dim")
    if "architecture" in schema_ok and isinstance(dim, int) and not isinstance(dim, bool):
        config, why = _encoder_config(card)
        if config is None:
            found.append(("architecture", f"this encoder cannot be built ({why})"))
        elif embedding_dim(config) != dim:
            found.append(("embedding_dim", f"the architecture ({config.arch}) gives {embedding_dim(config)} "
                                           f"features, the card says {dim}"))
    heads = card.get("heads")
    if not isinstance(heads, dict):
        return found
    if isinstance(dim, int) and not isinstance(dim, bool):
        why = f"embedding_dim is {dim}"
        for name in ("feature_mean", "feature_scale"):
            found += _length(card, ["heads", name], dim, why)
        markers = heads.get("markers")
        for index in range(len(markers) if isinstance(markers, list) else 0):
            found += _length(card, ["heads", "markers", index, "coef"], dim, why)
        found += _length(card, ["heads", "cox", "coef"], dim, why)
    markers = heads.get("markers")
    first: dict[str, int] = {}
    for index, head in enumerate(markers if isinstance(markers, list) else []):
        key = head.get("key") if isinstance(head, dict) else None
        if isinstance(key, str) and key in first:
            found.append((path_text(["heads", "markers", index, "key"]),
                          f"{key!r} again (also heads.markers[{first[key]}]): one head per marker"))
        elif isinstance(key, str):
            first[key] = index
    times, survival = _get(card, ["heads", "cox", "baseline_times"]), _get(card, ["heads", "cox", "baseline_survival"])
    if isinstance(times, list) and isinstance(survival, list) and len(times) != len(survival):
        found.append(("heads.cox.baseline_survival", f"expected {len(times)} values (as many as "
                                                     f"heads.cox.baseline_times), got {len(survival)}"))
    if isinstance(times, list) and all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in times):
        for index in range(1, len(times)):
            if times[index] < times[index - 1]:
                found.append((path_text(["heads", "cox", "baseline_times", index]),
                              f"times must not decrease, got {_show(times[index])} after {_show(times[index - 1])}"))
                break
    return found


def card_problems(card: Any) -> list[str]:
    """Every problem of the card alone, as "path: problem" (empty when the card is fine); reads no weights."""
    if not isinstance(card, dict):
        return [f"(the card): expected an object, got {_show(card)}"]
    problems: dict[str, str] = {}  # path -> first problem found there
    for error in CardValidator(CARD_SCHEMA).iter_errors(card):
        for path, problem in _messages(error):
            problems.setdefault(path, problem)
    schema_ok = {name for name in CARD_SCHEMA["properties"]
                 if not any(p == name or p.startswith((f"{name}.", f"{name}[")) for p in problems)}
    for path, problem in _cross_field(card, schema_ok):
        problems.setdefault(path, problem)
    return [f"{path}: {problem}" for path, problem in problems.items()]


def _shape(shape: tuple[int, ...]) -> str:
    return json.dumps(list(shape))


def tensor_problems(card: dict[str, Any], shapes: Shapes, weights_name: str = "weights.safetensors") -> list[str]:
    """Problems of the weights file's entries against a card that ``card_problems`` found fine.

    ``shapes``: every entry of the weights file, with its shape and dtype (the safetensors header).
    """
    problems: list[str] = []
    config, _ = _encoder_config(card)
    if config is not None:
        wanted = {f"encoder.{k}": shape for k, shape in tensor_shapes(config).items()}
        have = {k: v[0] for k, v in shapes.items() if k.startswith("encoder.")}
        missing = sorted(set(wanted) - set(have))
        unexpected = sorted(set(have) - set(wanted))
        wrong = [f"{k} has shape {_shape(have[k])}, the architecture needs {_shape(wanted[k])}"
                 for k in sorted(set(wanted) & set(have)) if tuple(have[k]) != wanted[k]]
        details = ([f"{len(missing)} tensors missing (e.g. {', '.join(missing[:2])})"] if missing else []) + \
                  ([f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:2])})"] if unexpected else []) + \
                  wrong[:3] + ([f"{len(wrong) - 3} more of another shape"] if len(wrong) > 3 else [])
        if details:
            problems.append(f"architecture: {weights_name} does not hold the weights of this encoder "
                            f"({'; '.join(details)})")
    heads = card.get("heads")
    if not isinstance(heads, dict):
        return problems
    dim = card["embedding_dim"]
    named: list[tuple[str, Any, tuple[int, ...] | None, str]] = []  # card path, tensor name, expected shape, why
    if isinstance(heads.get("ood"), dict):
        named.append(("heads.ood.mean", heads["ood"]["mean"], (dim,), "embedding_dim"))
        named.append(("heads.ood.precision", heads["ood"]["precision"], (dim, dim), "embedding_dim squared"))
    if heads.get("cam_reference"):
        layer = heads.get("cam_layer", "layer4")
        size = tuple(card["preprocessing"].get("size", (128, 128, 128)))
        expected, why = None, ""
        if config is not None:
            try:
                expected = activation_shape(config, size, layer)
            except ValueError as error:  # a grid smaller than the encoder's strides
                problems.append(f"preprocessing.size: the {' x '.join(map(str, size))} model grid does not fit this "
                                f"encoder's strides ({error})")
                return problems
            why = f"the {layer} activation on the {' x '.join(map(str, size))} model grid"
        named.append(("heads.cam_reference", heads["cam_reference"], expected, why))
    for path, name, expected, why in named:
        if name not in shapes:
            problems.append(f"{path}: names the tensor {name!r}, which is not in {weights_name}")
            continue
        shape, dtype = shapes[name]
        if expected is not None and tuple(shape) != expected:
            problems.append(f"{path}: the tensor {name!r} has shape {_shape(shape)}, expected {_shape(expected)} "
                            f"({why})")
        elif dtype not in HEAD_TENSOR_DTYPES:
            problems.append(f"{path}: the tensor {name!r} holds {dtype} values, expected one of "
                            f"{', '.join(HEAD_TENSOR_DTYPES)}")
    return problems


def report(problems: list[str]) -> str:
    """The problems as one message (the first ``REPORTED``, then a count)."""
    shown = "; ".join(problems[:REPORTED])
    return shown + (f"; and {len(problems) - REPORTED} more problems" if len(problems) > REPORTED else "")
