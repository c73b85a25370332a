"""The pack's static pages: a student sheet per case, the teacher's answer pages, the index.

Plain HTML with the figures embedded (PNG as base64) and relative links only, so a pack opens from a USB stick in
any browser with no network. The index page checks the pack it sits in: it loads each case's ``case.js`` as a
script (the one thing a page opened from file:// may read next to it) and names any case that is missing or was
written by another pack version.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

import numpy as np
import SimpleITK as sitk

from neuroradfm import SEQUENCE_LABELS, SEQUENCES
from neuroradfm.evaluate.report_figures import _figure, _img
from neuroradfm.teach.answers import ON_TUMOUR
from neuroradfm.teach.pack import CASE_CHECK_FILE, PACK_VERSION

NOTICE = "Synthetic phantom for teaching: not a patient, not for clinical use."
QUESTIONS = (
    "Where is the lesion: which hemisphere, and which lobe?",
    "Does it enhance on T1ce (compare with T1)? Is there a necrotic centre?",
    "How far does the FLAIR/T2 signal (edema) reach beyond the lesion? Is the solid tumour darker on FLAIR than on "
    "T2 (a T2-FLAIR mismatch)? Any dark spots (calcifications)?",
    "Which molecular markers would you expect (IDH1, 1p/19q, MGMT, EGFR, ATRX, TP53, CDKN2A/B, TERT, Ki-67), and "
    "which imaging features make you think so?",
    "How good are the images (blur, thick slices, noise, uneven brightness)? Would that change your confidence?",
)
CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1100px;padding:0 1em;color:#222}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
.notice{background:#fff4d6;border:1px solid #e0c060;padding:.4em .7em;border-radius:4px}
.muted{color:#666}table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #ccc;padding:.25em .6em;
text-align:left;vertical-align:top}td.num{text-align:right}.yes{color:#1a7f37;font-weight:600}
.no{color:#c62828;font-weight:600}figure{margin:.5em 0}img{max-width:100%}ol li{margin:.6em 0}
.answer{border-bottom:1px dotted #999;height:2.2em}.problem{background:#fde7e9;border:1px solid #c62828;
padding:.5em .8em;border-radius:4px}.ok{background:#e6f4ea;border:1px solid #1a7f37;padding:.5em .8em;
border-radius:4px}
"""


def _page(title: str, body: str, script: str = "") -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{CSS}</style></head><body><p class=\"notice\">{escape(NOTICE)}</p>{body}"
            f"{f'<script>{script}</script>' if script else ''}</body></html>\n")


def _yes_no(flag: bool | None) -> str:
    if flag is None:
        return '<span class="muted">n/a</span>'
    return '<span class="yes">yes</span>' if flag else '<span class="no">no</span>'


def _radiological(image: sitk.Image) -> np.ndarray:
    """The image as a (K, J, I) array in LPS order: axial rows run anterior to posterior, columns the patient's right
    to left (radiological convention: the patient's right on the viewer's left)."""
    return sitk.GetArrayFromImage(sitk.DICOMOrient(image, "LPS")).astype(np.float32)


OUTLINE_COLOURS = {2: "lime", 3: "cyan", 4: "white", 1: "magenta"}
"""Contours of the planted labels on the teacher's figure, never heat colours; the edema first, so the inner labels'
lines (which share the edema's inner edge) are drawn over it."""


def sequence_figure(sequences: Mapping[str, sitk.Image], tumour: sitk.Image, title: str,
                    outline: bool = False) -> str:
    """Axial and coronal slices of every sequence through the tumour's centroid, as an embedded PNG; ``outline``
    draws the planted label map's contours (the teacher's copy; the tumour must be on the sequences' grid, as the
    phantom's BraTS-style cases are)."""
    seg = _radiological(tumour)
    where = np.argwhere(seg > 0)
    k, j, _ = (where.mean(axis=0).round().astype(int) if len(where) else np.array(seg.shape) // 2)
    names = [s for s in SEQUENCES if s in sequences]
    figure = _figure(2.6 * len(names), 5.4)
    axes = figure.subplots(2, len(names), squeeze=False)
    for column, name in enumerate(names):
        volume = _radiological(sequences[name])
        inside = volume[volume > 0]
        low, high = np.percentile(inside, (1, 99)) if inside.size else (0.0, 1.0)
        for row, (view, labels, label) in enumerate(((volume[k], seg[k], "axial"),
                                                      (volume[::-1, j, :], seg[::-1, j, :], "coronal"))):
            ax = axes[row][column]
            ax.imshow(view, cmap="gray", vmin=low, vmax=high, aspect="auto" if label == "coronal" else "equal")
            if outline and labels.shape == view.shape:
                for value, colour in OUTLINE_COLOURS.items():
                    if (labels == value).any():
                        ax.contour(labels == value, levels=[0.5], colors=colour, linewidths=0.8)
            ax.set_title(f"{SEQUENCE_LABELS[name]} {label}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.text(0.02, 0.5, "R", color="yellow", transform=ax.transAxes, fontsize=8, va="center")
    key = (" Planted tumour: necrotic core magenta, edema green, enhancing cyan, cavity white." if outline else "")
    return _img(figure, f"{title}: the sequences through the lesion",
                "Radiological convention: the patient's right (R) on the left of each image." + key)


def student_sheet(number: int, grade_text: str, figure: str, viewer: str) -> str:
    questions = "".join(f'<li>{escape(q)}<div class="answer"></div><div class="answer"></div></li>'
                        for q in QUESTIONS)
    body = (f"<h1>Case {number}</h1><p class=\"muted\">{escape(grade_text)}</p>{figure}"
            f'<p>Scroll through the whole volume in the <a href="{escape(viewer)}">interactive viewer</a> (opens '
            "offline; the model's answer and the truth stay hidden until you press Reveal).</p>"
            f"<h2>Questions</h2><ol>{questions}</ol>")
    return _page(f"Case {number}", body)


def _truth_rows(truth: Mapping[str, Any]) -> str:
    return "".join((
        f"<tr><th>Location</th><td>{escape(truth['hemisphere'])} {escape(truth['lobe'])} white matter</td></tr>",
        f"<tr><th>Enhancing</th><td>{_yes_no(truth['enhancing'])} (rim gain {truth['enhancement']})</td></tr>",
        f"<tr><th>Necrotic centre</th><td>{_yes_no(truth['necrotic'])}</td></tr>",
        f"<tr><th>Subtype</th><td>{escape(truth['subtype'])}</td></tr>",
        "<tr><th>Volumes (ml)</th><td>" + ", ".join(f"{escape(k.replace('_', ' '))} {v:.1f}"
                                                   for k, v in truth["volumes_ml"].items()) + "</td></tr>"))


def marker_table(truth: Mapping[str, Any], model: Mapping[str, Any]) -> str:
    """Per marker: planted status, the trait that shows it, the model's call and probability, agreement."""
    rows = []
    for key, planted in truth["markers"].items():
        call = model["markers"].get(key)
        rows.append(
            f"<tr><td>{escape(call['label'] if call else key)}</td><td>{'positive' if planted else 'negative'}</td>"
            f"<td>{escape(truth['reasons'].get(key, ''))}</td>"
            + (f"<td>{escape(call['call'])}</td><td class=\"num\">{call['probability']:.2f}</td>"
               f"<td>{_yes_no(call.get('agrees'))}</td>" if call else "<td colspan=\"3\">not predicted</td>")
            + "</tr>")
    return ("<table><thead><tr><th>Marker</th><th>Planted</th><th>Why it shows (trait in this case)</th>"
            "<th>Model's call</th><th>P</th><th>Agrees</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def maps_table(model: Mapping[str, Any]) -> str:
    rows = []
    for key, entry in model["maps"].items():
        share = entry["on_tumour"]
        label = model["markers"].get(key, {}).get("label", key.replace("_", " "))
        shown = "n/a" if share is None else f"{100 * share:.0f} %"
        points = _yes_no(None if share is None else share >= ON_TUMOUR)
        rows.append(f"<tr><td>{escape(label)}</td><td class=\"num\">{shown}</td><td>{points}</td></tr>")
    return ("<table><thead><tr><th>Grad-CAM map</th><th>hot region inside the tumour</th>"
            f"<th>points at the tumour (&ge; {100 * ON_TUMOUR:.0f} %)</th></tr></thead><tbody>{''.join(rows)}"
            "</tbody></table>")


def model_panel(model: Mapping[str, Any]) -> str:
    """The viewer's "model" reveal: calls only (the truth stays behind its own button)."""
    rows = "".join(f"<tr><td>{escape(c['label'])}</td><td>{escape(c['call'])}</td>"
                   f"<td class=\"num\">{c['probability']:.2f}</td></tr>" for c in model["markers"].values())
    survival = model.get("survival")
    extra = (f"<p>Survival risk: {escape(str(survival['risk_group']))} (score {survival['risk_score']:+.2f})</p>"
             if survival else "")
    return (f"<p>Model: {escape(model['bundle'])}</p><table><thead><tr><th>Marker</th><th>Call</th><th>P</th></tr>"
            f"</thead><tbody>{rows}</tbody></table>{extra}")


def truth_panel(truth: Mapping[str, Any], model: Mapping[str, Any]) -> str:
    agreement = model["agreement"]
    return (f"<table><tbody>{_truth_rows(truth)}</tbody></table>{marker_table(truth, model)}"
            f"<p>The model agrees on {agreement['markers']} of {agreement['of']} markers; "
            f"{agreement['maps_on_tumour']} of {agreement['maps']} maps point at the tumour.</p>")


def answer_page(number: int, case_id: str, grade_text: str, site_text: str, truth: Mapping[str, Any],
                model: Mapping[str, Any], viewer: str, overview: str | None, figure: str = "") -> str:
    overview_html = (f'<h2>Model overview</h2><figure><img src="{escape(overview)}" alt="overview of the '
                     'prediction"></figure>' if overview else "")
    body = (f"<h1>Case {number}: answers</h1><p class=\"muted\">{escape(case_id)}; {escape(grade_text)}; "
            f"{escape(site_text)}</p><h2>Planted truth</h2><table><tbody>{_truth_rows(truth)}</tbody></table>{figure}"
            f"<h2>Markers: planted, why, and the model's calls</h2>{marker_table(truth, model)}"
            f"<h2>Where the model looked</h2>{maps_table(model)}"
            f'<p>Open the <a href="{escape(viewer)}">viewer</a> and press Reveal to see each map over the images.</p>'
            f"{overview_html}")
    return _page(f"Case {number}: answers", body)


def answer_key(cases: Sequence[Mapping[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td><a href=\"{escape(c['answers_link'])}\">Case {c['number']}</a></td><td>{c['grade']}</td>"
        f"<td>{escape(c['site'])}</td><td>{escape(c['truth']['subtype'])}</td>"
        f"<td>{escape(c['truth']['hemisphere'])} {escape(c['truth']['lobe'])}</td>"
        f"<td class=\"num\">{c['model']['agreement']['markers']}/{c['model']['agreement']['of']}</td>"
        f"<td class=\"num\">{c['model']['agreement']['maps_on_tumour']}/{c['model']['agreement']['maps']}</td></tr>"
        for c in cases)
    body = ("<h1>Answer key</h1><p>The planted truth of every case and how the model did. Keep this folder "
            "(<code>teacher/</code>) back when you hand the pack to students.</p>"
            "<table><thead><tr><th>Case</th><th>Grade</th><th>Site</th><th>Subtype</th><th>Location</th>"
            "<th>Markers agreeing</th><th>Maps on the tumour</th></tr></thead><tbody>" + rows + "</tbody></table>")
    return _page("Answer key", body)


def index_page(title: str, cases: Sequence[Mapping[str, Any]], grades: str) -> str:
    """The pack's front page; its script checks each case folder (``case.js``) and says plainly what is wrong."""
    rows = "".join(
        f"<tr id=\"case-{c['number']}\"><td>Case {c['number']}</td><td>{c['grade']}</td><td>{escape(c['site'])}</td>"
        f"<td><a href=\"{escape(c['student_sheet'])}\">student sheet</a></td>"
        f"<td><a href=\"{escape(c['viewer'])}\">viewer</a></td><td class=\"state\">checking</td></tr>"
        for c in cases)
    body = (f"<h1>{escape(title)}</h1><div id=\"pack-state\" class=\"ok\">Checking the pack...</div>"
            f"<p>{escape(grades)}</p><table><thead><tr><th>Case</th><th>Grade</th><th>Site</th><th>Sheet</th>"
            f"<th>Viewer</th><th>Files</th></tr></thead><tbody>{rows}</tbody></table>"
            "<h2>Teacher</h2><p><a href=\"teacher/answers.html\">Answer key</a> (the folder <code>teacher/</code>: "
            "keep it back from students).</p>")
    expected = json.dumps({str(c["number"]): c["folder"] for c in cases})
    script = f"""
var expected = {expected}, version = {PACK_VERSION}, seen = {{}}, foreign = [];
function neuroradfmPackCase(number, packVersion) {{
  seen[String(number)] = true;
  if (packVersion !== version) foreign.push(String(number));
}}
function report() {{
  var missing = Object.keys(expected).filter(function (n) {{ return !seen[n]; }});
  Object.keys(expected).forEach(function (n) {{
    var cell = document.querySelector('#case-' + n + ' .state');
    cell.textContent = foreign.indexOf(n) >= 0 ? 'other pack version' : (seen[n] ? 'complete' : 'MISSING');
  }});
  var box = document.getElementById('pack-state'), problems = [];
  if (missing.length) problems.push('case folder(s) missing or incomplete: ' +
    missing.map(function (n) {{ return expected[n]; }}).join(', ') + '. Copy the whole pack folder again.');
  if (foreign.length) problems.push('case(s) ' + foreign.join(', ') + ' come from another version of the pack ' +
    '(this index is version ' + version + '). Rebuild the pack with neuroradfm teach.');
  box.className = problems.length ? 'problem' : 'ok';
  box.textContent = problems.length ? 'This pack is not complete: ' + problems.join(' ') :
    'Pack complete: ' + Object.keys(expected).length + ' cases.';
  document.title = problems.length ? 'PACK PROBLEM' : 'PACK OK';
}}
var pending = Object.keys(expected).length;
Object.keys(expected).forEach(function (n) {{
  var s = document.createElement('script');
  s.src = expected[n] + '/{CASE_CHECK_FILE}';
  s.onload = s.onerror = function () {{ if (--pending === 0) report(); }};
  document.head.appendChild(s);
}});
"""
    return _page(title, body, script)
