"""What every part of the evaluation report shares: reading metrics.json (statuses, reasons, bundles, intervals) and
formatting its numbers and text for the page (HTML-escaped), the figures and the CSV tables."""

from __future__ import annotations

import html
import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

from neuroradfm.markers import MARKER_KEYS, marker

OK = "ok"
NOT_EVALUABLE = "not evaluable"
DPI = 90
"""Figure resolution: enough to read on screen while a 200-case, 2-bundle, 10-marker page stays ~1 MB."""

CONTINUOUS_NAMES = {"ki67_index": "Ki-67 index (%)", "tp53_expression": "TP53 expression (IHC %)"}
BUNDLE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
LOW_COLOUR, HIGH_COLOUR = "#1f77b4", "#d62728"


def _e(value: object) -> str:
    """Escaped text of any value from the metrics (None -> empty)."""
    return html.escape("" if value is None else str(value), quote=True)


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


def _f(value: object, digits: int = 3) -> str:
    return f"{float(value):.{digits}f}" if _is_number(value) else "n/a"  # type: ignore[arg-type]


def _p(value: object) -> str:
    return f"{float(value):.3g}" if _is_number(value) else "n/a"  # type: ignore[arg-type]


def _i(value: object) -> str:
    return str(int(value)) if _is_number(value) else "n/a"  # type: ignore[call-overload]


def _ci_pair(ci: object) -> tuple[Any, Any]:
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        return ci[0], ci[1]
    return None, None


def _ci(ci: object) -> str:
    low, high = _ci_pair(ci)
    if _is_number(low) and _is_number(high):
        return f"[{_f(low)}, {_f(high)}]"
    return "[CI n/a]"


def _with_ci(value: object, ci: object) -> str:
    return f"{_f(value)} {_ci(ci)}" if _is_number(value) else "n/a"


def _plain(value: object) -> str:
    """Escaped text of a setting: lists joined, dicts as key: value, None as 'none'."""
    if value is None:
        return "none"
    if isinstance(value, dict):
        return "; ".join(f"{_e(k)}: {_plain(v)}" for k, v in value.items()) or "none"
    if isinstance(value, (list, tuple)):
        return ", ".join(_plain(v) for v in value) or "none"
    return _e(value)


def _ok(entry: object) -> bool:
    """A computed entry: a dict whose status is 'ok' (entries without a status, e.g. a pooled block, count as ok)."""
    return isinstance(entry, dict) and entry.get("status", OK) == OK


def _reason(entry: object) -> str:
    if not isinstance(entry, dict):
        return "not in metrics.json"
    return str(entry.get("reason") or "no reason given")


def _ne(entry: object) -> str:
    """'not evaluable (reason)' (or the entry's own status) as escaped, marked-up text: never a blank cell."""
    status = entry.get("status") if isinstance(entry, dict) else None
    status = status if status and status != OK else NOT_EVALUABLE
    return f'<span class="ne">{_e(status)} ({_e(_reason(entry))})</span>'


def _marker_name(key: str) -> str:
    try:
        return marker(key).label
    except KeyError:
        return key


def _marker_cell(key: str) -> str:
    name = _marker_name(key)
    return _e(key) if name == key else f'{_e(name)} <span class="muted">({_e(key)})</span>'


def _sort_keys(keys: Iterable[str]) -> list[str]:
    """Setting keys ('1', '10', '0.25') in numeric order; others after, as given."""
    def key(text: str) -> tuple[int, float, str]:
        try:
            return 0, float(text), ""
        except ValueError:
            return 1, 0.0, text
    return sorted(keys, key=key)


def _marker_order(keys: Iterable[str]) -> list[str]:
    keys = list(keys)
    return [k for k in MARKER_KEYS if k in keys] + [k for k in keys if k not in MARKER_KEYS]


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], numeric_from: int = 1) -> str:
    """An HTML table; ``header`` is plain text (escaped here), row cells are HTML already. A row shorter than the
    header has its last cell spanning the rest (a 'not evaluable (reason)' row)."""
    width = len(header)
    out = ["<table><thead><tr>", *(f"<th>{_e(h)}</th>" for h in header), "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>")
        for index, cell in enumerate(row):
            span = width - index if index == len(row) - 1 and len(row) < width else 1
            attrs = f' colspan="{span}"' if span > 1 else ""
            if index >= numeric_from and span == 1 and 'class="ne"' not in cell:
                attrs += ' class="num"'
            out.append(f"<td{attrs}>{cell}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _key_value_table(pairs: Iterable[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in pairs)
    return f"<table><tbody>{rows}</tbody></table>"


def _note(text: str) -> str:
    return f'<p class="note">{text}</p>'


def _absent(text: str) -> str:
    return f'<p class="ne">{text}</p>'


def _bundles(metrics: dict) -> list[tuple[str, dict]]:
    """(label, bundle entry) in metrics order; result labels without a bundle entry are appended."""
    out = [(str(b.get("label")), b) for b in metrics.get("bundles") or [] if isinstance(b, dict)]
    known = {label for label, _ in out}
    out += [(label, {"label": label}) for label in (metrics.get("results") or {}) if label not in known]
    return out


def _result(metrics: dict, label: str, section: str) -> Any:
    return ((metrics.get("results") or {}).get(label) or {}).get(section)

