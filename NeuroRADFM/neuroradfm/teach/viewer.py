"""The teaching pack's case viewer: one self-contained HTML page that opens from file:// with no network.

Why one file: a teaching pack is copied to laptops and opened by students in any browser, so the page carries
everything: NiiVue 0.69.0 (vendored, BSD-2-Clause, inlined as a plain <script>) and the volumes as base64
gzipped 8-bit NIfTI (written with nibabel). All volumes are resampled (SimpleITK) onto axis-aligned grids that
cover the first sequence's extent, keeping world coordinates (LPS in SimpleITK, RAS in the NIfTI affine), so
sequences, heat maps and the tumour outline line up. docs/VIEWER-CHOICE.md records the choice and its pitfalls.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import html
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from neuroradfm import SEQUENCE_LABELS
from neuroradfm.atomic import atomic_file
from neuroradfm.errors import InputError, OutputError, SettingsError

MAX_PAGE_BYTES = 15 * 1024 * 1024
"""A larger page is refused: it loads slowly (12.7 MiB: 18 s in Chromium's software WebGL) and packs grow heavy."""
TUMOUR_LABELS = {1: ("necrotic core", (230, 60, 230)), 2: ("edema", (40, 220, 40)),
                 3: ("enhancing tumour", (40, 220, 230)), 4: ("resection cavity", (255, 255, 255))}
"""BraTS labels and their outline colours: no warm colours, so the outline never reads as heat."""
MAX_GRID_VOXELS = 64 * 1024 * 1024
VENDOR = Path(__file__).parent / "vendor" / "niivue-0.69.0"
NIIVUE_FILE = VENDOR / "niivue.umd.js"


@dataclass(frozen=True)
class RevealPanel:
    """One answer hidden behind a button: ``key`` "model" also gates the heat maps, "truth" the tumour outline."""

    key: str
    button: str
    html: str
    """A trusted HTML fragment: callers escape their own text."""


def write_case_viewer(path: str | Path, *, title: str, sequences: Mapping[str, sitk.Image],
                      maps: Mapping[str, sitk.Image] | None = None, tumour: sitk.Image | None = None,
                      panels: Sequence[RevealPanel] = (), revealed: bool = False, notice: str = "",
                      spacing_mm: float = 2.0, map_spacing_mm: float = 2.0, map_threshold: float = 0.2,
                      map_opacity: float = 0.6) -> Path:
    """Write the viewer page for one case; returns ``path``.

    ``sequences``: any non-empty subset of t1, t1ce, t2, flair, on any grid. ``maps``: name -> heat map as
    fractions (0..1) of its peak (neuroradfm.map_files.read_heatmap); values under ``map_threshold`` are not drawn.
    ``tumour``: a BraTS label map (1-4), drawn as a coloured outline. ``revealed=True`` is the teacher's version.
    A page over MAX_PAGE_BYTES is an OutputError and nothing is written.
    """
    path = Path(path)
    page = render_case_viewer(title=title, sequences=sequences, maps=maps, tumour=tumour, panels=panels,
                              revealed=revealed, notice=notice, spacing_mm=spacing_mm, map_spacing_mm=map_spacing_mm,
                              map_threshold=map_threshold, map_opacity=map_opacity).encode("utf-8")
    if len(page) > MAX_PAGE_BYTES:
        raise OutputError(path, f"the case viewer page would be {len(page) / 2**20:.1f} MiB, over its "
                                f"{MAX_PAGE_BYTES / 2**20:.0f} MiB budget; not written: raise spacing_mm (now "
                                f"{spacing_mm:g}) or map_spacing_mm (now {map_spacing_mm:g}), or pass fewer maps")
    with atomic_file(path) as staging:
        staging.write_bytes(page)
    return path


def render_case_viewer(*, title: str, sequences: Mapping[str, sitk.Image],
                       maps: Mapping[str, sitk.Image] | None = None, tumour: sitk.Image | None = None,
                       panels: Sequence[RevealPanel] = (), revealed: bool = False, notice: str = "",
                       spacing_mm: float = 2.0, map_spacing_mm: float = 2.0, map_threshold: float = 0.2,
                       map_opacity: float = 0.6) -> str:
    """The page as text (write_case_viewer's arguments, no size check)."""
    _check_settings(sequences, panels, spacing_mm, map_spacing_mm, map_threshold, map_opacity)
    for key, image in sequences.items():
        _check_image(image, f"sequence {key!r}")
    for name, image in (maps or {}).items():
        _check_image(image, f"heat map {name!r}")
    if tumour is not None:
        _check_image(tumour, "tumour label map")
    keys = [key for key in SEQUENCE_LABELS if key in sequences]
    bounds = _bounds(sequences[keys[0]])
    grid = _grid(bounds, spacing_mm)
    volumes: dict = {"sequences": [{"key": key, "label": SEQUENCE_LABELS[key],
                                    "data": _nifti_base64(_sequence_levels(sequences[key], grid, key))}
                                   for key in keys]}
    volumes["maps"] = []
    if maps:
        map_grid = _grid(bounds, map_spacing_mm, "map_spacing_mm")
        for name, image in maps.items():
            _check_overlap(image, bounds, f"heat map {name!r}")
            levels = _map_levels(image, map_grid, name, map_threshold)
            volumes["maps"].append({"name": str(name), "data": _nifti_base64(levels, slope=1.0 / 255)})
    start = _centre_ras(bounds)
    volumes["outline"] = None
    present = None
    if tumour is not None:
        _check_overlap(tumour, bounds, "tumour label map")
        labels = _tumour_labels(tumour, grid)
        volumes["outline"] = _nifti_base64(_outline(labels, grid), label=True)
        present = [label for label in TUMOUR_LABELS if (labels == label).any()]
    panel_keys = {panel.key for panel in panels}
    if tumour is not None and (revealed or "truth" not in panel_keys):  # else the crosshair would give it away
        start = _centroid_ras(labels, grid) or start
    config = {**volumes, "start": start, "mapRange": [map_threshold, 1.0], "mapOpacity": map_opacity,
              "gates": {"maps": "model" if "model" in panel_keys else None,
                        "outline": "truth" if "truth" in panel_keys else None},
              "revealed": sorted(panel_keys) if revealed else []}
    return _page(title, notice, panels, config, present)


def _check_settings(sequences: Mapping[str, sitk.Image], panels: Sequence[RevealPanel], spacing_mm: float,
                    map_spacing_mm: float, map_threshold: float, map_opacity: float) -> None:
    if not sequences:
        raise SettingsError("sequences", f"no sequence given: pass at least one of {', '.join(SEQUENCE_LABELS)}")
    unknown = [key for key in sequences if key not in SEQUENCE_LABELS]
    if unknown:
        raise SettingsError("sequences", f"unknown sequence {unknown[0]!r}: expected among "
                                         f"{', '.join(SEQUENCE_LABELS)}")
    for name, value in (("spacing_mm", spacing_mm), ("map_spacing_mm", map_spacing_mm)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise SettingsError(name, f"must be a positive number of millimetres, not {value!r}")
    for name, value in (("map_threshold", map_threshold), ("map_opacity", map_opacity)):
        if not (isinstance(value, (int, float)) and 0 <= value <= 1):
            raise SettingsError(name, f"must be between 0 and 1, not {value!r}")
    keys = [panel.key for panel in panels]
    if len(set(keys)) != len(keys):
        raise SettingsError("panels", f"two panels share a key: {', '.join(keys)}")


def _bounds(image: sitk.Image) -> np.ndarray:
    """(2, 3) LPS box (min, max) around the image's voxels (their outer faces), whatever its orientation."""
    size = image.GetSize()
    corners = [image.TransformContinuousIndexToPhysicalPoint([(s - 0.5) if bit else -0.5 for s, bit in zip(size, b)])
               for b in np.ndindex(2, 2, 2)]
    return np.array([np.min(corners, axis=0), np.max(corners, axis=0)])


def _grid(bounds: np.ndarray, spacing: float, setting: str = "spacing_mm") -> sitk.Image:
    """An empty axis-aligned (identity direction) grid at ``spacing`` mm, centred on and covering ``bounds``."""
    size = np.maximum(np.ceil((bounds[1] - bounds[0]) / spacing - 1e-6), 1).astype(int)
    if int(np.prod(size)) > MAX_GRID_VOXELS:
        raise SettingsError(setting, f"{spacing:g} mm gives a {' x '.join(map(str, size))} grid, too large "
                                          "for a page: raise it")
    grid = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    grid.SetSpacing([float(spacing)] * 3)
    grid.SetOrigin([float(v) for v in (bounds[0] + bounds[1]) / 2 - (size - 1) * spacing / 2])
    return grid


def _check_overlap(image: sitk.Image, bounds: np.ndarray, what: str) -> None:
    other = _bounds(image)
    if np.any(np.minimum(other[1], bounds[1]) <= np.maximum(other[0], bounds[0])):
        raise InputError(None, f"{what} lies outside the sequences' extent (its box {_box(other)} mm, the "
                               f"sequences' {_box(bounds)} mm, LPS): is it from another case?")


def _box(bounds: np.ndarray) -> str:
    return " x ".join(f"[{lo:.0f}, {hi:.0f}]" for lo, hi in bounds.T)


def _check_image(image: sitk.Image, what: str) -> None:
    """Only 3-D scalar images with finite values can be resampled and scaled."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(None, f"{what}: a 3-D scalar image is needed, not {image.GetDimension()}-D with "
                               f"{image.GetNumberOfComponentsPerPixel()} components")
    values = sitk.GetArrayViewFromImage(image)
    if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
        raise InputError(None, f"{what} has non-finite values (NaN or infinity)")


def _resampled(image: sitk.Image, grid: sitk.Image, interpolator: int) -> np.ndarray:
    """``image`` on ``grid`` as a (z, y, x) float32 array, 0 outside the image."""
    out = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), grid, sitk.Transform(), interpolator, 0.0,
                        sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def _on_grid(levels: np.ndarray, grid: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(levels)
    image.CopyInformation(grid)
    return image


def _sequence_levels(image: sitk.Image, grid: sitk.Image, key: str) -> sitk.Image:
    """8-bit levels of a sequence: its 0.5-99.5 percentile window (inside non-zero voxels) to 0..255; zero stays 0."""
    values = _resampled(image, grid, sitk.sitkLinear)
    inside = values != 0
    if not inside.any():
        raise InputError(None, f"sequence {key!r} has no non-zero voxels inside its own extent")
    low, high = np.percentile(values[inside], [0.5, 99.5])
    scaled = np.rint(np.clip((values - low) / max(high - low, 1e-6), 0, 1) * 255)
    return _on_grid(np.where(inside, scaled, 0).astype(np.uint8), grid)


def _map_levels(image: sitk.Image, grid: sitk.Image, name: str, threshold: float) -> sitk.Image:
    """A heat map as 8-bit levels (level / 255 = fraction of the peak); under ``threshold``: 0 (compresses well)."""
    values = _resampled(image, grid, sitk.sitkLinear)
    low, high = float(values.min()), float(values.max())
    if low < -1e-3 or high > 1 + 1e-3:
        raise InputError(None, f"heat map {name!r} has values {low:.3g}..{high:.3g}: fractions 0..1 of the peak "
                               "are expected (neuroradfm.map_files.read_heatmap gives them)")
    levels = np.rint(np.clip(values, 0, 1) * 255)
    levels[values < threshold] = 0
    return _on_grid(levels.astype(np.uint8), grid)


def _tumour_labels(image: sitk.Image, grid: sitk.Image) -> np.ndarray:
    source = sitk.GetArrayViewFromImage(image)
    found = set(np.unique(source).tolist()) - {0, *TUMOUR_LABELS}
    if found:
        raise InputError(None, f"tumour label map has labels {sorted(found)[:5]}: BraTS labels "
                               f"{', '.join(f'{k} {n}' for k, (n, _) in TUMOUR_LABELS.items())} are expected")
    return _resampled(image, grid, sitk.sitkNearestNeighbor).astype(np.uint8)


def _outline(labels: np.ndarray, grid: sitk.Image) -> sitk.Image:
    """Each label's 3-D boundary voxels (those with a neighbour of another label): a ring on every slice through
    the region, drawn in the label's colour (NiiVue's own atlas outline is a dark line)."""
    out = np.zeros_like(labels)
    for label in TUMOUR_LABELS:
        region = labels == label
        if region.any():
            out[region & ~ndimage.binary_erosion(region, border_value=0)] = label
    return _on_grid(out, grid)


def _centroid_ras(labels: np.ndarray, grid: sitk.Image) -> list[float] | None:
    """World (RAS mm) centre of the labelled voxels, None when there are none."""
    where = np.argwhere(labels > 0)
    if not len(where):
        return None
    x, y, z = grid.TransformContinuousIndexToPhysicalPoint(where.mean(axis=0)[::-1].tolist())
    return [-x, -y, z]


def _centre_ras(bounds: np.ndarray) -> list[float]:
    x, y, z = (bounds[0] + bounds[1]) / 2
    return [-float(x), -float(y), float(z)]


def _nifti_image(image: sitk.Image) -> nib.Nifti1Image:
    """A SimpleITK image as a NIfTI image with the same voxels at the same world points (LPS -> RAS), in the
    closest canonical (RAS+) voxel order."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.array(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    nifti = nib.as_closest_canonical(nib.Nifti1Image(sitk.GetArrayFromImage(image).transpose(2, 1, 0), affine))
    nifti.set_sform(nifti.affine, code=1)
    nifti.set_qform(nifti.affine, code=1)
    nifti.header.set_xyzt_units("mm")
    return nifti


def _nifti_base64(image: sitk.Image, slope: float | None = None, label: bool = False) -> str:
    """Gzipped NIfTI as base64, how the page hands it to NVImage.loadFromBase64; ``slope``: NIfTI scl_slope."""
    nifti = _nifti_image(image)
    if slope is not None:
        nifti.header.set_slope_inter(slope, 0.0)
    if label:
        nifti.header.set_intent("label")
    return base64.b64encode(gzip.compress(nifti.to_bytes(), compresslevel=6, mtime=0)).decode("ascii")


@functools.lru_cache(maxsize=1)
def niivue_script() -> str:
    r"""The vendored NiiVue bundle as page text, after checking it against VERSION's sha256 (a damaged install
    would give a blank page). Its ten documentation links (shader comments, one error message) are written
    ``https:/\/``: the same text once JavaScript reads the string, and a page with no URL in it at all."""
    raw = NIIVUE_FILE.read_bytes()
    expected = json.loads((VENDOR / "VERSION").read_text(encoding="utf-8"))["sha256"]
    if hashlib.sha256(raw).hexdigest() != expected:
        raise InputError(NIIVUE_FILE, "does not match the sha256 in its VERSION file: reinstall neuroradfm")
    text = raw.decode("utf-8")
    if re.search(r"</script|<!--", text, re.IGNORECASE):
        raise InputError(NIIVUE_FILE, "holds '</script' or '<!--' and cannot be inlined in a page")
    return re.sub(r"(https?:)//", r"\1/\\/", text)


@functools.lru_cache(maxsize=1)
def _licence_comment() -> str:
    """NiiVue's licence and the notices of what its bundle contains, as a comment travelling with the page."""
    text = "\n\n".join((VENDOR / name).read_text(encoding="utf-8").strip() for name in ("LICENSE", "THIRD_PARTY.md"))
    if "*/" in text or "</" in text:
        raise InputError(VENDOR, "a licence text holds '*/' or '</' and cannot go into a script comment")
    return f"/*! NiiVue 0.69.0 (@niivue/niivue), inlined unmodified but for its links.\n\n{text}\n*/"


def _page(title: str, notice: str, panels: Sequence[RevealPanel], config: dict, tumour_labels: list[int] | None) -> str:
    """The HTML around the data: the controls in plain HTML, ``tumour_labels`` (those present) in the key."""
    esc = html.escape
    options = "".join(f'<option value="{esc(s["key"])}">{esc(s["label"])}</option>' for s in config["sequences"])
    map_options = "".join(f'<option value="{i}">{esc(m["name"])}</option>' for i, m in enumerate(config["maps"]))
    maps_html = "" if not config["maps"] else (
        '<fieldset id="map-controls" hidden><legend>Model heat map</legend>'
        f'<label>Map <select id="map">{map_options}</select></label>'
        '<label>Opacity <input type="range" id="opacity" min="0" max="100" '
        f'value="{round(config["mapOpacity"] * 100)}"></label></fieldset>')
    swatches = "".join(f'<li><span class="swatch" style="background: rgb{TUMOUR_LABELS[label][1]}"></span>'
                       f'{esc(TUMOUR_LABELS[label][0])}</li>' for label in tumour_labels or ())
    tumour_html = "" if tumour_labels is None else (
        '<fieldset id="outline-controls" hidden><legend>Tumour (ground truth)</legend>'
        '<label><input type="checkbox" id="outline" checked> Outline</label>'
        f'<ul class="key">{swatches}</ul></fieldset>')
    open_keys = set(config["revealed"])
    panels_html = "".join(
        f'<section class="panel" data-key="{esc(p.key)}">'
        f'<button class="reveal"{" hidden" if p.key in open_keys else ""}>{esc(p.button)}</button>'
        f'<div class="answer"{"" if p.key in open_keys else " hidden"}>{p.html}'
        '<button class="hide">Hide again</button></div></section>' for p in panels)
    colours = [(0, 0, 0), *(colour for _, colour in TUMOUR_LABELS.values())]
    lut = {"R": [c[0] for c in colours], "G": [c[1] for c in colours], "B": [c[2] for c in colours],
           "A": [0] + [255] * len(TUMOUR_LABELS), "I": [0, *TUMOUR_LABELS],
           "labels": ["", *(name for name, _ in TUMOUR_LABELS.values())]}
    data = json.dumps({**config, "outlineColours": lut}, separators=(",", ":"))
    data = data.replace("<", "\\u003c").replace(">", "\\u003e")  # no "</script>" inside the data
    parts = {"TITLE": esc(title), "NOTICE": f'<p class="notice">{esc(notice)}</p>' if notice else "",
             "SEQUENCES": options, "MAPS": maps_html, "TUMOUR": tumour_html, "PANELS": panels_html, "DATA": data,
             "LICENCE": _licence_comment(), "NIIVUE": niivue_script(), "APP": APP_SCRIPT}
    return re.sub(r"@([A-Z]+)@", lambda match: parts[match.group(1)], PAGE)


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>@TITLE@</title>
<style>
body { margin: 0; font: 14px/1.4 system-ui, sans-serif; background: #111; color: #ddd; }
header { padding: 8px 16px; border-bottom: 1px solid #333; }
h1 { font-size: 18px; margin: 0; }
.notice { margin: 6px 0 0; padding: 4px 8px; border: 2px solid #8ab4f8; color: #fff; font-weight: bold; }
main { display: flex; gap: 12px; padding: 12px; }
#view { flex: 1; min-width: 0; height: calc(100vh - 110px); min-height: 360px; }
aside { width: 290px; flex: none; }
fieldset { border: 1px solid #444; margin: 0 0 10px; padding: 6px 10px; }
label { display: block; margin: 4px 0; }
select, input[type=range] { width: 100%; }
button { margin: 4px 0; padding: 4px 10px; }
.answer { border-left: 3px solid #8ab4f8; padding: 2px 10px; margin: 6px 0 12px; }
.key { list-style: none; margin: 4px 0; padding: 0; }
.swatch { display: inline-block; width: 12px; height: 12px; margin-right: 6px; vertical-align: middle; }
#status.error { color: #ff9090; }
</style>
</head>
<body>
<header><h1>@TITLE@</h1>@NOTICE@</header>
<main>
<div id="view"><canvas id="gl1"></canvas></div>
<aside>
<fieldset><legend>Sequence</legend><select id="sequence">@SEQUENCES@</select></fieldset>
@MAPS@
@TUMOUR@
<p id="position"></p>
<p id="status">Loading the volumes...</p>
@PANELS@
</aside>
</main>
<script type="application/json" id="case-data">@DATA@</script>
<script>@LICENCE@</script>
<script>@NIIVUE@</script>
<script>@APP@</script>
</body>
</html>
"""

APP_SCRIPT = """
"use strict";
const data = JSON.parse(document.getElementById("case-data").textContent);
const $ = (id) => document.getElementById(id);
function fail(message) {
  document.documentElement.dataset.state = "ERROR: " + message;
  $("status").textContent = "Error: " + message;
  $("status").className = "error";
}
window.addEventListener("error", (event) => fail(event.message));
window.addEventListener("unhandledrejection", (event) => fail(String(event.reason?.message || event.reason)));

const revealed = new Set(data.revealed);
const isOpen = (gate) => !gate || revealed.has(gate);
const volumes = {sequences: {}, maps: {}, outline: null};
let ready = false;
const nv = new niivue.Niivue({backColor: [0, 0, 0, 1], crosshairColor: [0.3, 0.6, 1, 1], crosshairWidth: 1,
  crosshairWidthUnit: "mm",
  isColorbar: true, isRadiologicalConvention: true, multiplanarShowRender: niivue.SHOW_RENDER.NEVER});

// Only the shown volumes are in the scene: the sequence, then the map, then the outline on top.
// New ones are added before any is moved (setVolume on a volume not in the scene removes the last one).
function sync() {
  if (data.maps.length) $("map-controls").hidden = !isOpen(data.gates.maps);
  if (data.outline) $("outline-controls").hidden = !isOpen(data.gates.outline);
  if (!ready) return;
  const want = [volumes.sequences[$("sequence").value]];
  if (data.maps.length && isOpen(data.gates.maps)) want.push(volumes.maps[$("map").value]);
  if (data.outline && isOpen(data.gates.outline) && $("outline").checked) want.push(volumes.outline);
  for (const v of want) if (!nv.volumes.includes(v)) nv.addVolume(v);
  want.forEach((v, i) => { if (nv.volumes[i] !== v) nv.setVolume(v, i); });
  for (const v of nv.volumes.slice()) if (!want.includes(v)) nv.removeVolume(v);
}

const axis = (v, plus, minus) => (v >= 0 ? plus : minus) + " " + Math.abs(v).toFixed(1);
function showPosition(mm) {
  $("position").textContent = "Crosshair: " + axis(mm[0], "R", "L") + ", " + axis(mm[1], "A", "P") + ", " +
    axis(mm[2], "S", "I") + " mm";
}

for (const panel of document.querySelectorAll(".panel")) {
  const show = (open) => {
    if (open) revealed.add(panel.dataset.key); else revealed.delete(panel.dataset.key);
    panel.querySelector(".reveal").hidden = open;
    panel.querySelector(".answer").hidden = !open;
    sync();
  };
  panel.querySelector(".reveal").onclick = () => show(true);
  panel.querySelector(".hide").onclick = () => show(false);
}
$("sequence").onchange = sync;
if (data.maps.length) {
  $("map").onchange = sync;
  $("opacity").oninput = () => {
    for (const v of Object.values(volumes.maps)) v.opacity = $("opacity").value / 100;
    nv.updateGLVolume();
  };
}
if (data.outline) $("outline").onchange = sync;
sync();

async function load(base64, name, options) {
  return niivue.NVImage.loadFromBase64({base64, name: name + ".nii.gz", ...options});
}

async function main() {
  await nv.attachTo("gl1");
  nv.setSliceType(nv.sliceTypeMultiplanar);
  nv.onLocationChange = (location) => showPosition(location.mm);
  const jobs = data.sequences.map(async (s) => {
    volumes.sequences[s.key] = await load(s.data, s.key, {colormap: "gray", cal_min: 0, cal_max: 255,
      colorbarVisible: false});
  });
  data.maps.forEach((m, i) => jobs.push(load(m.data, "map" + i, {colormap: "warm", opacity: data.mapOpacity,
    cal_min: data.mapRange[0], cal_max: data.mapRange[1]}).then((v) => { volumes.maps[i] = v; })));
  if (data.outline) {
    jobs.push(load(data.outline, "tumour", {colorbarVisible: false}).then((v) => {
      v.setColormapLabel(data.outlineColours);
      volumes.outline = v;
    }));
  }
  await Promise.all(jobs);
  ready = true;
  sync();
  nv.scene.crosshairPos = nv.mm2frac(data.start);
  nv.drawScene();
  showPosition(data.start);
  $("status").textContent = "Click or drag in a view to move the crosshair; right-drag changes the contrast.";
  document.documentElement.dataset.state = "OK";
}
main().catch((error) => fail(error?.message || String(error)));
"""
