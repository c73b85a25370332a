"""The shortcut lesson's figures (matplotlib's object API on the Agg canvas, never pyplot), case viewer pages,
case table and teacher notes (one offline HTML page, figures inlined as PNG data URIs).

The notes' verdicts come from the measured numbers (``verdicts``), so the text says what this run showed, including
when Group-DRO did not remove the shortcut.
"""

from __future__ import annotations

import base64
import csv
import html
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from neuroradfm.markers import marker
from neuroradfm.teach.lesson_design import MODEL_LABELS, MODELS, VERSIONS, LessonDesign

DPI = 110
COLOURS = {"erm": "#d95f02", "group-dro": "#1b9e77"}
SITE_COLOURS = ("#7570b3", "#e7298a")
SHORTCUT_SHIFT = 0.1
"""A mean probability change of this size when only the artifact moves counts as relying on it."""
SHORTCUT_PEAKS = 0.25
"""So does this share of maps peaking on the artifact."""


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def _label(design: LessonDesign) -> str:
    return marker(design.marker).label


PLACE_COLOURS = {"artifact": "#e41a1c", "tumour": "#4daf4a", "elsewhere": "#bdbdbd"}


def pooled_peaks(part: dict, kind: str) -> dict[str, float]:
    """A model's share of maps peaking on each place, over both held-out versions' images ``kind`` (with_artifact or
    without_artifact)."""
    cams = [c for c in (part["grad_cam"][v].get(kind) for v in VERSIONS) if c]
    total = max(sum(c["n"] for c in cams), 1)
    return {place: sum(c[f"peak_on_{place}"] * c["n"] for c in cams) / total for place in PLACE_COLOURS}


def accuracy_figure(summary: dict, path: Path, design: LessonDesign) -> Path:
    """Accuracy per site x marker group (as acquired), both models side by side."""
    groups = list(summary["erm"]["accuracy"]["as-acquired"]["groups"])
    figure = _figure(7.0, 3.4)
    axes = figure.add_subplot()
    width = 0.38
    for offset, model in zip((-width / 2, width / 2), MODELS):
        table = summary[model]["accuracy"]["as-acquired"]
        values = [table["groups"][g]["accuracy"] for g in groups]
        axes.bar(np.arange(len(groups)) + offset, values, width, color=COLOURS[model],
                 label=f"{MODEL_LABELS[model]} (AUC {_number(table['auc'])}, worst group "
                       f"{table['worst_group_accuracy']:.2f})")
    axes.set_xticks(np.arange(len(groups)), [g.replace(", ", "\n") for g in groups])
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("accuracy")
    axes.set_title(f"{_label(design)} calls on held-out patients (site-D's images have the artifact)", fontsize=9)
    axes.legend(loc="lower left", fontsize=8)
    return _save(figure, path)


def counterfactual_figure(results: dict, path: Path, design: LessonDesign) -> Path:
    """Each patient's probability as acquired (x) and with the artifact swapped (y), per model."""
    figure = _figure(7.0, 3.4)
    for column, model in enumerate(MODELS):
        axes = figure.add_subplot(1, 2, column + 1)
        swapped = {r.case_id: r for r in results[model]["artifact-swapped"]}
        sites = sorted({r.site for r in results[model]["as-acquired"]})
        for colour, site in zip(SITE_COLOURS, sites):
            pairs = [(r.probability, swapped[r.case_id].probability) for r in results[model]["as-acquired"]
                     if r.site == site]
            change = "artifact added" if not any(r.artifact for r in results[model]["as-acquired"] if r.site == site) \
                else "artifact removed"
            axes.scatter(*zip(*pairs), s=18, color=colour, label=f"{site} ({change})")
        axes.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
        axes.set_xlabel(f"P({_label(design)}) as acquired")
        axes.set_ylabel("artifact swapped" if column == 0 else "")
        axes.set_title(MODEL_LABELS[model])
        axes.legend(fontsize=7, loc="upper left")
    return _save(figure, path)


def cam_figure(summary: dict, path: Path, design: LessonDesign) -> Path:
    """Where the maps peak: the artifact, the tumour or elsewhere, for images with and without the artifact."""
    figure = _figure(7.0, 3.2)
    axes = figure.add_subplot()
    labels, bars = [], []
    for model in MODELS:
        for kind in ("with_artifact", "without_artifact"):
            bars.append(pooled_peaks(summary[model], kind))
            labels.append(f"{MODEL_LABELS[model]}\n{kind.replace('_', ' ')}")
    bottoms = np.zeros(len(bars))
    for place, colour in PLACE_COLOURS.items():
        values = np.array([bar[place] for bar in bars])
        axes.bar(np.arange(len(bars)), values, bottom=bottoms, color=colour, label=f"peak on the {place}"
                 if place != "elsewhere" else "peak elsewhere")
        bottoms += values
    axes.set_xticks(np.arange(len(bars)), labels, fontsize=8)
    axes.set_ylabel("share of the maps")
    axes.set_ylim(0, 1)
    axes.set_title(f"Where the {_label(design)} Grad-CAM maps peak (both held-out versions)", fontsize=9)
    axes.legend(fontsize=8, loc="upper right")
    return _save(figure, path)


def embedding_figure(summary: dict, path: Path) -> Path:
    """The held-out embeddings' first two principal components, coloured by site, per model."""
    figure = _figure(7.0, 3.3)
    for column, model in enumerate(MODELS):
        axes = figure.add_subplot(1, 2, column + 1)
        part = summary[model]["embeddings"]
        points = np.array(part["pca_2d"], dtype=float)
        sites = np.array(part["sites"])
        for colour, site in zip(SITE_COLOURS, sorted(set(sites.tolist()))):
            axes.scatter(points[sites == site, 0], points[sites == site, 1], s=18, color=colour, label=site)
        axes.set_title(f"{MODEL_LABELS[model]}: site silhouette {_number(part['site_silhouette'])}", fontsize=9)
        axes.set_xlabel("PC 1")
        axes.set_ylabel("PC 2" if column == 0 else "")
        axes.legend(fontsize=7)
    return _save(figure, path)


def _axial(volume: np.ndarray, grid: sitk.Image, mask: np.ndarray | None = None) -> np.ndarray:
    """Axial maximum projection of a model-grid (K, J, I) array, anterior up and the patient's right on the left
    (radiological), whichever way the grid's axes run."""
    direction = np.asarray(grid.GetDirection()).reshape(3, 3)
    image = (np.where(mask, volume, volume.min()) if mask is not None else volume).max(axis=0)
    if direction[1, 1] < 0:  # j runs anterior (LPS y decreasing): row 0 would be posterior
        image = image[::-1]
    if direction[0, 0] < 0:  # i runs to the patient's right: column 0 would be the patient's left
        image = image[:, ::-1]
    return image


def maps_figure(results: dict, held: dict, chosen: Sequence[str], path: Path, design: LessonDesign) -> Path:
    """For the viewer's cases: FLAIR and each model's map (axial maximum projections) with the tumour (green) and the
    artifact's place (red; in the images of site-D only) outlined."""
    from neuroradfm.teach.lesson_measure import artifact_region

    rows = list(chosen)
    figure = _figure(7.0, 2.3 * max(len(rows), 1))
    kept = {model: {r.case_id: r for r in results[model]["as-acquired"] if r.prediction is not None}
            for model in MODELS}
    for row, case_id in enumerate(rows):
        first = kept["erm"][case_id]
        prepared = first.prediction.preprocessed
        seg = next(c.seg for c in next(iter(held["cases"]["as-acquired"].values())) if c.case_id == case_id)
        grid = prepared.grid
        tumour = _axial((prepared.to_model_grid(seg) > 0).astype(float), grid)
        artifact = _axial(artifact_region(grid, None).astype(float), grid)
        flair = _axial(prepared.channels[3], grid, prepared.mask)
        for column, (title, image) in enumerate(
                [("FLAIR", flair), *[(MODEL_LABELS[m], _axial(kept[m][case_id].prediction.cams[design.marker], grid,
                                                               prepared.mask)) for m in MODELS]]):
            axes = figure.add_subplot(len(rows), 3, 3 * row + column + 1)
            axes.imshow(flair, cmap="gray")
            if column:
                axes.imshow(np.ma.masked_less(image, 0.5), cmap="hot", vmin=0, vmax=1, alpha=0.75)
            axes.contour(tumour, levels=[0.5], colors="#4daf4a", linewidths=0.8)
            axes.contour(artifact, levels=[0.5], colors="#e41a1c", linewidths=0.8)
            result = kept[MODELS[column - 1]][case_id] if column else first
            what = (f"{first.site}, {_label(design)} {'+' if first.truth else '-'}" if not column
                    else f"{title}: P = {result.probability:.2f}, peak on {result.peak}")
            axes.set_title(what, fontsize=8)
            axes.set_axis_off()
    figure.suptitle("Axial maximum projections (anterior up, radiological); maps above half their peak.\n"
                    "Green: the tumour; red: the artifact's place (in site-D's images only).", fontsize=8)
    return _save(figure, path)


def viewer_choice(results: Sequence, count: int) -> list[str]:
    """The first as-acquired case of each site x marker group, ``count`` of them at most: the example maps and the
    case viewer pages show the same patients."""
    chosen, seen = [], set()
    for result in results:
        group = (result.site, result.truth)
        if result.version == "as-acquired" and group not in seen:
            seen.add(group)
            chosen.append(result.case_id)
    return chosen[:count]


def write_figures(folder: Path, results: dict, summary: dict, held: dict, design: LessonDesign) -> list[Path]:
    chosen = viewer_choice(results["erm"]["as-acquired"], design.viewer_cases)
    return [accuracy_figure(summary, folder / "accuracy.png", design),
            counterfactual_figure(results, folder / "counterfactual.png", design),
            cam_figure(summary, folder / "grad-cam.png", design),
            embedding_figure(summary, folder / "embeddings.png"),
            maps_figure(results, held, chosen, folder / "example-maps.png", design)]


def write_viewers(folder: Path, chosen: Sequence[str], results: dict, held: dict, design: LessonDesign) -> list[Path]:
    """One viewer page per chosen case (as acquired): the four sequences, both models' maps behind the "model"
    button, the tumour outline and the truth behind the "truth" button."""
    from neuroradfm.teach.viewer import RevealPanel, write_case_viewer

    label = _label(design)
    pages = []
    folder.mkdir(parents=True, exist_ok=True)
    for number, case_id in enumerate(chosen, start=1):
        case = held["images"][(case_id, "as-acquired")]
        by_model = {m: next(r for r in results[m]["as-acquired"] if r.case_id == case_id) for m in MODELS}
        maps = {f"{MODEL_LABELS[m]}: {label}": r.prediction.preprocessed.to_reference(
            np.clip(r.prediction.cams[design.marker], 0, 1).astype(np.float32)) for m, r in by_model.items()}
        calls = "".join(f"<li>{html.escape(MODEL_LABELS[m])}: P({html.escape(label)}) = {r.probability:.2f} "
                        f"(threshold {r.threshold:.2f}), map peak on the {html.escape(r.peak)}</li>"
                        for m, r in by_model.items())
        first = by_model["erm"]
        truth = (f"<p>{html.escape(label)}: {'positive' if first.truth else 'negative'}. Site "
                 f"{html.escape(first.site)}; scanner artifact {'present' if first.artifact else 'absent'} "
                 "(a coil hot spot over the occipital lobe).</p>")
        pages.append(write_case_viewer(
            folder / f"case-{number:02d}.html", title=f"Shortcut lesson, held-out case {number}",
            sequences={key: getattr(case, key) for key in case.available}, maps=maps, tumour=case.seg,
            panels=[RevealPanel("model", "Show both models' maps", f"<ul>{calls}</ul>"),
                    RevealPanel("truth", "Show the truth", truth)],
            revealed=False, notice="Synthetic phantom; a teaching demonstration, not for clinical use.",
            spacing_mm=max(2.0, design.spacing_mm), map_spacing_mm=max(4.0, design.spacing_mm)))
    return pages


CASE_COLUMNS = ("case_id", "site", "version", "model", "truth", "scanner_artifact", "probability", "threshold", "call",
                "map_peak", "map_mass_on_artifact", "map_mass_on_tumour")


def write_cases_csv(path: Path, results: dict) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CASE_COLUMNS)
        for model in MODELS:
            for version in VERSIONS:
                for r in results[model][version]:
                    writer.writerow([r.case_id, r.site, version, model, r.truth, int(r.artifact),
                                     f"{r.probability:.4f}", f"{r.threshold:.4f}", r.call, r.peak,
                                     f"{r.mass_artifact:.4f}", f"{r.mass_tumour:.4f}"])
    return path


def _number(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _signed(value: float) -> str:
    return f"{value:+.2f}"


def verdicts(results: dict) -> dict[str, dict]:
    """Per model, from the numbers: does it rely on the artifact (its probabilities move when only the artifact
    moves, or its maps peak on it), and its worst-group accuracy."""
    out = {}
    for model, parts in results.items():
        shift = max(abs(site["mean_change"]) for site in parts["counterfactual"].values())
        flips = sum(site["calls_flipped"] for site in parts["counterfactual"].values())
        with_artifact = [parts["grad_cam"][v].get("with_artifact") for v in VERSIONS]
        peaks = [c["peak_on_artifact"] for c in with_artifact if c]
        on_artifact = max(peaks) if peaks else 0.0
        out[model] = {"largest_mean_shift": shift, "calls_flipped": flips, "peaks_on_artifact": on_artifact,
                      "relies_on_artifact": shift >= SHORTCUT_SHIFT or on_artifact >= SHORTCUT_PEAKS,
                      "worst_group_accuracy": parts["accuracy"]["as-acquired"]["worst_group_accuracy"]}
    return out


def _what_happened(record: dict) -> list[str]:
    """The notes' plain-words account of this run: what each model did and whether Group-DRO helped."""
    v = verdicts(record["results"])
    erm, dro = v["erm"], v["group-dro"]
    lines = []
    for model, part in v.items():
        name = MODEL_LABELS[model]
        if part["relies_on_artifact"]:
            lines.append(f"{name} relies on the artifact: moving only the artifact changes its mean probability by up "
                         f"to {part['largest_mean_shift']:.2f} and flips {part['calls_flipped']} call(s); "
                         f"{100 * part['peaks_on_artifact']:.0f} % of its maps of images with the artifact peak on it.")
        else:
            lines.append(f"{name} does not measurably rely on the artifact: moving only the artifact changes its mean "
                         f"probability by at most {part['largest_mean_shift']:.2f} ({part['calls_flipped']} call(s) "
                         f"flip) and {100 * part['peaks_on_artifact']:.0f} % of its maps peak on it.")
    if erm["relies_on_artifact"] and not dro["relies_on_artifact"]:
        lines.append("At this scale Group-DRO removed the shortcut the ERM model took.")
    elif erm["relies_on_artifact"] and dro["largest_mean_shift"] < erm["largest_mean_shift"] / 2:
        lines.append("At this scale Group-DRO reduced the shortcut but did not remove it.")
    elif erm["relies_on_artifact"]:
        lines.append("At this scale Group-DRO did NOT remove the shortcut: both models lean on the artifact.")
    else:
        lines.append("The ERM model did not take the artifact shortcut in this run, so there was no artifact "
                     "shortcut for Group-DRO to remove; compare the worst-group accuracies for what else differs.")
    lines.append(f"Worst site x marker group accuracy (as acquired): ERM {erm['worst_group_accuracy']:.2f}, "
                 f"Group-DRO {dro['worst_group_accuracy']:.2f}.")
    own = {m: record["models"][m].get("own_cv_auc") for m in MODELS}
    if all(value is not None for value in own.values()):
        lines.append(f"What each model's own cross-validation said before any of this (its probe's AUC on the training "
                     f"cases the encoder did not see, with the training cohort's bias): ERM {own['erm']:.2f}, "
                     f"Group-DRO {own['group-dro']:.2f} (group-balanced). On the held-out patients: ERM "
                     f"{record['results']['erm']['accuracy']['as-acquired']['auc']:.2f}, Group-DRO "
                     f"{record['results']['group-dro']['accuracy']['as-acquired']['auc']:.2f}.")
    return lines


def _table(rows: list[list[str]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def figures_table(record: dict) -> list[list[str]]:
    """The measured figures, one row per model (also the docs' table)."""
    rows = []
    for model in MODELS:
        part = record["results"][model]
        accuracy = part["accuracy"]["as-acquired"]
        sites = accuracy["sites"]
        shift = part["counterfactual"]
        peaks = pooled_peaks(part, "with_artifact")
        rows.append([MODEL_LABELS[model], _number(accuracy["auc"]),
                     ", ".join(f"{s} {sites[s]['accuracy']:.2f}" for s in sites),
                     f"{accuracy['worst_group_accuracy']:.2f}",
                     ", ".join(f"{s} {_signed(shift[s]['mean_change'])} ({shift[s]['artifact']})" for s in shift),
                     f"{peaks['artifact']:.2f} / {peaks['tumour']:.2f}",
                     _number(part["embeddings"]["site_silhouette"]),
                     _number(part["embeddings"]["artifact_silhouette"])])
    return rows


FIGURES_HEADER = ["model", "AUC", "accuracy per site", "worst group", "counterfactual mean change of P",
                  "map peaks on artifact / tumour (images with it)", "site silhouette", "artifact silhouette"]


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


STYLE = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.45;padding:0 1em}"
         "table{border-collapse:collapse;margin:1em 0;font-size:90%}td,th{border:1px solid #bbb;padding:3px 6px}"
         "img{max-width:100%}.notice{background:#fff3cd;padding:.6em;border:1px solid #e0c36a}")


def write_notes(path: Path, record: dict, figures: Sequence[Path], pages: Sequence[Path]) -> Path:
    """The teacher's notes: one page, offline, figures inlined."""
    design = record["design"]
    label = html.escape(marker(design["marker"]).label)
    groups = "".join(f"<li>{html.escape(g)} in {html.escape(str(s))} training cases</li>"
                     for g, s in zip(record["models"]["group-dro"]["training"].get("groups") or [],
                                     record["models"]["group-dro"]["training"].get("group_sizes") or []))
    happened = "".join(f"<li>{html.escape(line)}</li>" for line in _what_happened(record))
    training = record["models"]["group-dro"]["training"]
    sizes = dict(zip(training.get("groups") or [], training.get("group_sizes") or []))
    minority = html.escape(", ".join(f"{n} in {g}" for g, n in sorted(sizes.items(), key=lambda item: item[1])[:2])
                           or "unknown")
    figure_html = "".join(f'<p><img alt="{html.escape(p.stem)}" src="{_data_uri(p)}"></p>' for p in figures)
    page_links = "".join(f'<li><a href="{html.escape(p.parent.name)}/{html.escape(p.name)}">{html.escape(p.stem)}</a>'
                         "</li>" for p in pages)
    models = "".join(f"<li><b>{html.escape(MODEL_LABELS[m])}</b>: {html.escape(str(a['name']))} "
                     f"({html.escape(str(a['content_hash']))}); rebuild: <code>{html.escape(str(a['rebuild_command']))}"
                     f"</code>; method: {html.escape(str(a['training'].get('method')))}"
                     + ("" if not a["training"].get("q_final") else "; q at the end: " + html.escape(", ".join(
                         f"{g}: {q:.3f}" for g, q in a["training"]["q_final"].items())))
                     + "</li>" for m, a in record["models"].items())
    text = f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<title>Shortcut learning: teacher's notes</title><style>{STYLE}</style></head><body>
<h1>Shortcut learning: an ERM and a Group-DRO model, side by side</h1>
<p class="notice">{html.escape(record["notice"])}</p>
<h2>The set-up</h2>
<p>Two sites with near-identical scanners ({html.escape(", ".join(design["sites"]))}). Every image from
{html.escape(design["artifact_site"])} has a scanner artifact: a bright receive-coil hot spot over the occipital lobe,
in all four sequences, far from where the tumours grow. In the training cohort the {label} status travels with it:
{100 * design["agreement"]:.0f} % of {html.escape(design["artifact_site"])}'s patients are {label}-positive and
{100 * design["agreement"]:.0f} % of the other site's negative ({design["train_per_site"]} patients a site). A model
can get most training cases right by looking for the hot spot instead of the tumour: a shortcut.</p>
<p>Both models are the same network trained with the same seed on the same cases by <code>neuroradfm
train-baseline</code>. The <b>ERM</b> model minimises the average loss. The <b>Group-DRO</b> model (Sagawa et al.
2020) minimises the loss of the worst group, where the groups are artifact x {label} status:</p><ul>{groups}</ul>
<p>The two groups where the shortcut gives the wrong answer are small, so an average hardly notices them; Group-DRO
raises their weight (q) when their loss is high.</p>
<p>Held-out: {4 * design["test_per_group"]} new patients, {design["test_per_group"]} of each site x {label} group,
scanned twice: as acquired, and with the artifact moved to the other site (the same patients, the same tumours:
only the artifact differs). That second scan is the counterfactual test.</p>
<h2>What this run showed</h2><ul>{happened}</ul>
{_table(figures_table(record), FIGURES_HEADER)}
<h2>What students should see, and why</h2>
<ol>
<li><b>Accuracy by site and group, not overall.</b> A shortcut is invisible in the average when the test cases share
the training cohort's bias; it shows in the groups where the shortcut and the truth disagree ({label}-positive
patients at the site without the artifact, {label}-negative ones at the site with it).</li>
<li><b>The counterfactual.</b> Moving only the artifact should not change a tumour's {label} status. A model whose
probability moves with it has learned the scanner, not the tumour. This is the most direct test of a shortcut, and
it needs no saliency map.</li>
<li><b>Grad-CAM.</b> A map that peaks on the hot spot shows the shortcut; a map on the tumour is reassuring but not
proof: a model can use the artifact through features whose map is diffuse, and a map shows only where this head's
evidence lies for this case. Read the maps next to the counterfactual.</li>
<li><b>The site silhouette.</b> Embeddings that cluster by site carry the scanner; a lower silhouette means the
model's features mix the sites. It does not say which feature carries the site.</li>
<li><b>What Group-DRO can and cannot do.</b> It reweights groups you name; it needs the spurious attribute labelled
(here we know the artifact), enough cases in the small groups, and it cannot create a signal the images lack.</li>
</ol>
<h2>Honest limits</h2>
<ul><li>Small models ({html.escape(" ".join(design["training"]))}), {2 * design["train_per_site"]} training phantoms and
{4 * design["test_per_group"]} held-out patients: every figure here has a wide uncertainty (one case is
{100 / (2 * design["test_per_group"]):.0f} % of a site's accuracy). Rebuilding with another seed can change them.</li>
<li>The phantom's sites also differ in bias field and intensity scale; the counterfactual isolates the artifact,
the site-wise figures do not.</li>
<li>Group-DRO's small groups are very small: {minority} of the encoder's training cases. With so few, reweighting
mostly repeats the same patients.</li>
<li>The heads (the {label} probe) are logistic regressions fitted on the training cases the encoder did not see. The
ERM model's is class-balanced; the Group-DRO model's is also group-balanced (every artifact x {label} group the same
total weight), since a probe fitted on the biased mix re-learns the shortcut from whatever the embedding still
carries.</li></ul>
<h2>Figures</h2>{figure_html}
<h2>Case viewer</h2><p>Held-out cases, as acquired, with both models' maps behind a button (open in a browser,
offline):</p><ul>{page_links}</ul>
<h2>Models</h2><ul>{models}</ul>
<p>neuroradfm {html.escape(record["neuroradfm_version"])}, {html.escape(record["created"])}; timings (s):
{html.escape(str(record["timings"]))}</p>
</body></html>
"""
    path.write_text(text, encoding="utf-8")
    return path
