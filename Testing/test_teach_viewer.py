"""The teaching pack's offline case viewer (issue 19): vendored NiiVue, the page's payloads on the right world grid,
the reveal gates, the size budget, bad inputs, and the page itself in headless Chromium with the network cut off.

One native phantom (oblique, 1.2 x 1.2 x 5 mm int16, FLAIR on its own grid) written at 4 mm keeps it fast; its heat
maps are analytic Gaussians on their own oblique grid, so the value expected at any world point is known exactly.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from browser import CHROMIUM, MISSING, WEBGL, network_cut, run_chromium
from neuroradfm import map_files
from neuroradfm.errors import InputError, OutputError, SettingsError
from neuroradfm.phantom import generate_case
from neuroradfm.teach import viewer
from neuroradfm.teach.viewer import MAX_PAGE_BYTES, RevealPanel, render_case_viewer, write_case_viewer

SIGMA_MM = 12.0
PANELS = (RevealPanel("model", "Reveal the model's answer", "<p>IDH1 mutant: <b>0.81</b></p>"),
          RevealPanel("truth", "Reveal the <truth>", "<p>IDH1 mutant</p>"))
NOTICE = "Synthetic phantom - not for clinical use"


def _gaussian_map(centre: np.ndarray, rotation_deg: float = 20.0) -> sitk.Image:
    """exp(-|p - centre|^2 / 2 sigma^2) on an oblique 3 mm grid (40 voxels a side) around ``centre`` (LPS)."""
    angle = np.radians(rotation_deg)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    image = sitk.Image([40, 40, 40], sitk.sitkFloat32)
    image.SetSpacing([3.0, 3.0, 3.0])
    image.SetDirection(direction.ravel().tolist())
    image.SetOrigin((centre - direction @ np.full(3, 19.5 * 3.0)).tolist())
    index = np.stack(np.meshgrid(*(np.arange(40),) * 3, indexing="ij"), axis=-1).reshape(-1, 3)  # (x, y, z)
    points = np.asarray(image.GetOrigin()) + (index * 3.0) @ direction.T
    values = np.exp(-np.sum((points - centre) ** 2, axis=1) / (2 * SIGMA_MM**2)).astype(np.float32)
    array = values.reshape(40, 40, 40).transpose(2, 1, 0)  # to SimpleITK's (z, y, x)
    out = sitk.GetImageFromArray(np.ascontiguousarray(array))
    out.CopyInformation(image)
    return out


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    images, seg, _ = generate_case(2, seed=11, n_sites=4, native=True, spacing=4.0)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.Cast(seg > 0, sitk.sitkUInt8))
    centre = np.array(stats.GetCentroid(1))
    # one map as predict writes it (8-bit NRRD with the scale in its header), read back the way callers do
    levels = sitk.Cast(sitk.Round(_gaussian_map(centre, 35.0) * 255), sitk.sitkUInt8)
    nrrd = tmp_path_factory.mktemp("maps") / "heatmap_mgmt.nrrd"
    sitk.WriteImage(map_files.tag(levels, peak=2.5), str(nrrd), useCompression=True)
    maps = {"IDH1": _gaussian_map(centre), "MGMT": map_files.read_heatmap(nrrd)}
    return {"images": images, "seg": seg, "centre": centre, "maps": maps}


def _write(case: dict, path: Path, **options) -> str:
    arguments = {"title": "Case 7 <b>", "sequences": case["images"], "maps": case["maps"], "tumour": case["seg"],
                 "panels": PANELS, "notice": NOTICE, "spacing_mm": 4.0, "map_spacing_mm": 4.0, **options}
    write_case_viewer(path, **arguments)
    return path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def pages(case, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pages")
    return {"hidden": _write(case, folder / "hidden.html"), "revealed": _write(case, folder / "revealed.html",
                                                                               revealed=True), "folder": folder}


def page_data(page: str) -> dict:
    return json.loads(re.search(r'<script type="application/json" id="case-data">(.*?)</script>', page, re.S)[1])


def decode(payload: str) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(payload)))


def world_points(nifti: nib.Nifti1Image, voxels: np.ndarray) -> np.ndarray:
    """LPS world points (SimpleITK's) of (i, j, k) voxel indices of a NIfTI (RAS affine)."""
    ras = nib.affines.apply_affine(nifti.affine, voxels)
    return ras * np.array([-1.0, -1.0, 1.0])


def inside(image: sitk.Image, point: np.ndarray) -> bool:
    index = np.asarray(image.TransformPhysicalPointToContinuousIndex(point.tolist()))
    return bool(np.all(index >= 0) and np.all(index <= np.asarray(image.GetSize()) - 1))


def test_vendored_niivue_matches_its_version_file():
    folder = viewer.VENDOR
    version = json.loads((folder / "VERSION").read_text(encoding="utf-8"))
    assert version["package"] == "@niivue/niivue" and version["version"] == "0.69.0"
    raw = (folder / "niivue.umd.js").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == version["sha256"] and len(raw) == version["bytes"]
    licence = (folder / "LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("BSD 2-Clause License") and "Copyright (c) 2021, Niivue" in licence
    notices = (folder / "THIRD_PARTY.md").read_text(encoding="utf-8")
    for package in ("fflate", "gl-matrix", "nifti-reader-js", "zarrita", "array-equal", "@lukeed/uuid",
                    "@ungap/structured-clone"):
        assert f"## {package} (" in notices, package


def test_the_page_inlines_niivue_unchanged_and_has_no_url(pages):
    page = pages["hidden"]
    assert len(page.encode("utf-8")) <= MAX_PAGE_BYTES
    assert re.search(r"(https?|ftp|wss?)://|//cdn", page, re.IGNORECASE) is None
    scripts = re.findall(r"<script>(.*?)</script>", page, re.S)
    licence, niivue, _ = scripts
    assert "Copyright (c) 2021, Niivue" in licence and "Arjun Barrett" in licence  # BSD-2 and fflate's MIT
    restored = re.sub(r"(https?:)/\\/", r"\1//", niivue).encode("utf-8")
    version = json.loads((viewer.VENDOR / "VERSION").read_text(encoding="utf-8"))
    assert hashlib.sha256(restored).hexdigest() == version["sha256"]
    markup = re.sub(r"<script\b.*?</script>", "", page, flags=re.S)
    assert not re.search(r"\b(src|href)=|<link|url\(|@import", markup, re.IGNORECASE)


def test_payloads_decode_onto_the_world_grid_of_the_sequences(case, pages):
    data = page_data(pages["hidden"])
    assert [(s["key"], s["label"]) for s in data["sequences"]] == [("t1", "T1"), ("t1ce", "T1ce"), ("t2", "T2"),
                                                                    ("flair", "FLAIR")]
    rng = np.random.default_rng(0)
    first = decode(data["sequences"][0]["data"])
    assert np.allclose(first.affine[:3, :3], np.diag([4.0, 4.0, 4.0]))  # axis-aligned, RAS+
    # the grid covers the first sequence's voxels, and by less than one voxel more on each side
    source = case["images"]["t1"]
    corners = np.array([source.TransformContinuousIndexToPhysicalPoint([(s - 0.5) * b - 0.5 * (1 - b) for s, b in
                                                                        zip(source.GetSize(), bits)])
                        for bits in np.ndindex(2, 2, 2)]) * np.array([-1.0, -1.0, 1.0])
    grid = nib.affines.apply_affine(first.affine, np.array([[-0.5] * 3, np.array(first.shape) - 0.5]))
    assert np.all(grid[0] <= corners.min(0) + 1e-3) and np.all(grid[1] >= corners.max(0) - 1e-3)
    assert np.all(grid[0] > corners.min(0) - 4.0) and np.all(grid[1] < corners.max(0) + 4.0)

    for item in data["sequences"]:  # each sequence's levels are a linear function of its own value there
        nifti = decode(item["data"])
        assert nifti.get_data_dtype() == np.uint8 and np.allclose(nifti.affine, first.affine)
        levels = np.asarray(nifti.dataobj)
        voxels = rng.permutation(np.argwhere((levels > 0) & (levels < 255)))[:300]
        image = case["images"][item["key"]]
        pairs = [(levels[tuple(v)], image.EvaluateAtPhysicalPoint(p.tolist(), sitk.sitkLinear))
                 for v, p in zip(voxels, world_points(nifti, voxels)) if inside(image, p)]
        assert len(pairs) > 200
        assert np.corrcoef(np.array(pairs, dtype=float).T)[0, 1] > 0.999, item["key"]

    outline = decode(data["outline"])
    assert outline.header.get_intent()[0] == "label" and np.allclose(outline.affine, first.affine)
    labels = np.asarray(outline.dataobj)
    voxels = np.argwhere(labels > 0)
    assert set(np.unique(labels[labels > 0])) <= {1, 2, 3, 4} and len(voxels) > 20
    truth = [case["seg"].EvaluateAtPhysicalPoint(p.tolist(), sitk.sitkNearestNeighbor)
             for p in world_points(outline, voxels)]
    assert np.mean(np.array(truth) == labels[tuple(voxels.T)]) > 0.99
    start_lps = np.array(page_data(pages["revealed"])["start"]) * np.array([-1.0, -1.0, 1.0])
    assert np.linalg.norm(start_lps - case["centre"]) < 4.0  # the teacher's page: the crosshair starts at the tumour
    hidden_start = np.array(data["start"]) * np.array([-1.0, -1.0, 1.0])  # the students': at the centre, no hint
    assert np.linalg.norm(hidden_start - case["centre"]) > 10.0

    assert [m["name"] for m in data["maps"]] == ["IDH1", "MGMT"] and data["mapRange"] == [0.2, 1.0]
    heat = decode(data["maps"][0]["data"])
    assert heat.get_data_dtype() == np.uint8 and np.isclose(heat.dataobj.slope, 1 / 255)
    assert np.allclose(heat.affine[:3, :3], np.diag([4.0, 4.0, 4.0]))  # map_spacing_mm
    values = heat.get_fdata()
    voxels = np.argwhere(np.ones(values.shape, bool))
    points = world_points(heat, voxels)
    gaussian = np.exp(-np.sum((points - case["centre"]) ** 2, axis=1) / (2 * SIGMA_MM**2))
    expected = np.where(gaussian < 0.2, 0, gaussian)  # under the threshold: not drawn
    clear = np.abs(gaussian - 0.2) > 0.03
    assert (values[tuple(voxels.T)][clear] > 0).sum() > 50
    assert np.max(np.abs(values[tuple(voxels.T)] - expected)[clear]) < 0.03


def test_subsets_come_in_order_and_the_first_sets_the_extent(case, tmp_path):
    images = case["images"]
    page = render_case_viewer(title="t", sequences={"flair": images["flair"], "t1ce": images["t1ce"]},
                              spacing_mm=8.0)
    data = page_data(page)
    assert [s["key"] for s in data["sequences"]] == ["t1ce", "flair"]
    assert data["maps"] == [] and data["outline"] is None and data["gates"] == {"maps": None, "outline": None}
    assert np.allclose(decode(data["sequences"][0]["data"]).affine[:3, :3], np.diag([8.0] * 3))
    assert 'id="map-controls"' not in page and 'id="outline-controls"' not in page


def test_reveal_gates_and_escaping(case, pages):
    hidden, revealed = page_data(pages["hidden"]), page_data(pages["revealed"])
    assert hidden["gates"] == revealed["gates"] == {"maps": "model", "outline": "truth"}
    assert hidden["revealed"] == [] and revealed["revealed"] == ["model", "truth"]
    page = pages["hidden"]
    assert "<title>Case 7 &lt;b&gt;</title>" in page and f'<p class="notice">{NOTICE}</p>' in page
    assert '<button class="reveal">Reveal the &lt;truth&gt;</button>' in page
    assert '<div class="answer" hidden><p>IDH1 mutant: <b>0.81</b></p>' in page  # trusted HTML, as given
    assert '<div class="answer"><p>IDH1 mutant: <b>0.81</b></p>' in pages["revealed"]
    outline = np.asarray(decode(hidden["outline"]).dataobj)  # the colour key lists the labels the case has
    present = sorted(set(np.unique(outline).tolist()) - {0})
    key = re.search(r'<ul class="key">(.*?)</ul>', page)[1]
    assert present and re.findall(r"</span>([^<]*)</li>", key) == [viewer.TUMOUR_LABELS[k][0] for k in present]
    # without a "model" / "truth" panel the maps and the outline are shown from the start
    other = page_data(render_case_viewer(title="t", sequences={"t1": case["images"]["t1"]}, maps=case["maps"],
                                         tumour=case["seg"], panels=[RevealPanel("quiz", "Answer", "<p>x</p>")],
                                         spacing_mm=8.0, map_spacing_mm=8.0))
    assert other["gates"] == {"maps": None, "outline": None}


def test_over_budget_is_refused_and_nothing_is_written(case, tmp_path, monkeypatch):
    target = tmp_path / "viewer.html"
    target.write_text("earlier page", encoding="utf-8")
    monkeypatch.setattr(viewer, "MAX_PAGE_BYTES", 1_000_000)
    with pytest.raises(OutputError) as error:
        write_case_viewer(target, title="t", sequences=case["images"], spacing_mm=8.0)
    assert str(target) in str(error.value) and "MiB" in str(error.value) and "spacing_mm (now 8)" in str(error.value)
    assert target.read_text(encoding="utf-8") == "earlier page"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["viewer.html"]


def _shifted(image: sitk.Image, mm: float) -> sitk.Image:
    out = sitk.Image(image)
    out.SetOrigin([v + mm for v in image.GetOrigin()])
    return out


def _with_value(image: sitk.Image, value: float) -> sitk.Image:
    array = sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkFloat32))
    array.flat[array.size // 2] = value
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


@pytest.mark.parametrize(("change", "error", "words"), [
    (lambda c: {"sequences": {}}, SettingsError, "no sequence given"),
    (lambda c: {"sequences": {"t1gd": c["images"]["t1"]}}, SettingsError, "unknown sequence 't1gd'"),
    (lambda c: {"spacing_mm": 0}, SettingsError, "spacing_mm"),
    (lambda c: {"spacing_mm": 0.01}, SettingsError, "too large"),
    (lambda c: {"map_threshold": 1.5}, SettingsError, "map_threshold"),
    (lambda c: {"maps": {"far": _shifted(c["maps"]["IDH1"], 1000.0)}}, InputError, "heat map 'far' lies outside"),
    (lambda c: {"tumour": _shifted(c["seg"], -1000.0)}, InputError, "tumour label map lies outside"),
    (lambda c: {"maps": {"x": _with_value(c["maps"]["IDH1"], 3.0)}}, InputError, "fractions 0..1"),
    (lambda c: {"maps": {"x": _with_value(c["maps"]["IDH1"], np.nan)}}, InputError, "non-finite"),
    (lambda c: {"sequences": {"t1": _with_value(c["images"]["t1"], np.inf)}}, InputError, "non-finite"),
    (lambda c: {"sequences": {"t1": c["images"]["t1"] * 0}}, InputError, "no non-zero voxels"),
    (lambda c: {"tumour": sitk.Cast(c["seg"], sitk.sitkUInt8) * 7}, InputError, "BraTS labels"),
    (lambda c: {"panels": [PANELS[0], PANELS[0]]}, SettingsError, "two panels share a key"),
    (lambda c: {"sequences": {"t1": sitk.Image([8, 8], sitk.sitkFloat32)}}, InputError, "a 3-D scalar image"),
])
def test_bad_inputs_are_refused_with_a_clear_error(case, tmp_path, change, error, words):
    arguments = {"title": "t", "sequences": {"t1": case["images"]["t1"]}, "spacing_mm": 8.0, "map_spacing_mm": 8.0,
                 **change(case)}
    target = tmp_path / "viewer.html"
    with pytest.raises(error, match=re.escape(words)):
        write_case_viewer(target, **arguments)
    assert not target.exists()


def test_a_damaged_niivue_file_is_refused(tmp_path, monkeypatch):
    damaged = tmp_path / "niivue.umd.js"
    damaged.write_bytes(viewer.NIIVUE_FILE.read_bytes() + b"\n")
    monkeypatch.setattr(viewer, "NIIVUE_FILE", damaged)
    viewer.niivue_script.cache_clear()
    try:
        with pytest.raises(InputError, match="does not match the sha256 in its VERSION file"):
            viewer.niivue_script()
    finally:
        viewer.niivue_script.cache_clear()


# ---- in headless Chromium (WebGL2 in SwiftShader), the network cut off where this machine allows it ----------

STEPS = """<script>
const watch = setInterval(() => {  // the test's own clicks, once the page says it is loaded
  if (document.documentElement.dataset.state !== "OK") return;
  clearInterval(watch);
  const names = () => nv.volumes.map((v) => v.name.replace(".nii.gz", "")).join("+");
  const log = [names()];
  const click = (key, button) => document.querySelector(`[data-key="${key}"] .${button}`).click();
  $("sequence").value = "flair"; $("sequence").onchange(); log.push(names());
  click("model", "reveal"); log.push(names() + (($("map-controls").hidden) ? " maps hidden" : " maps shown"));
  $("map").value = "1"; $("map").onchange(); log.push(names());
  click("truth", "reveal"); $("sequence").value = "t2"; $("sequence").onchange(); log.push(names());
  $("outline").checked = false; $("outline").onchange(); log.push(names());
  click("model", "hide"); click("truth", "hide"); log.push(names());
  document.title = "STEPS " + log.join(" | ");
}, 50);
</script>
"""


def _colours(png: Path) -> dict[str, int]:
    """Pixel counts: warm (the heat map and its colour bar), magenta (the necrotic core's outline), grey (MRI)."""
    with Image.open(png) as image:
        rgb = np.asarray(image.convert("RGB")).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return {"warm": int(((r > 150) & (r - b > 100) & (g < r + 10)).sum()),
            "magenta": int(((r > 180) & (g < 110) & (b > 180)).sum()),
            "grey": int(((abs(r - g) < 8) & (abs(g - b) < 8) & (r > 60)).sum())}


def _title(dom: str) -> str:
    return re.search(r"<title>(.*?)</title>", dom, re.S)[1]  # the page's own (the head comes first)


def _state(dom: str) -> str:
    """What the page says of its loading: "OK" or "ERROR: ..." (an attribute of <html>, the tab keeps its title)."""
    found = re.search(r'<html[^>]*\sdata-state="([^"]*)"', dom)
    return found[1] if found else "(not loaded)"


@pytest.mark.skipif(CHROMIUM is None, reason=MISSING)
def test_the_pages_load_and_draw_offline_in_chromium(pages, tmp_path):
    if not network_cut():
        print("note: unshare -n is not allowed here; the page ran with the network on (no URL in it: checked)")
    folder = pages["folder"]
    shots = {}
    for name in ("revealed", "hidden"):
        page = folder / f"{name}.html"
        if name == "hidden":  # the reveal buttons, selectors and toggles, clicked by a script added to a copy
            text = pages["hidden"]
            page = tmp_path / "hidden-steps.html"
            page.write_text(text[:text.rindex("</body>")] + STEPS + "</body>\n</html>\n", encoding="utf-8")
        shots[name] = tmp_path / f"{name}.png"
        done = run_chromium(page, tmp_path / f"profile-{name}", "--dump-dom", f"--screenshot={shots[name]}",
                            "--window-size=1200,800", "--virtual-time-budget=30000", gpu=WEBGL, timeout=150)
        assert done.returncode == 0, done.stderr[-2000:]
        if name == "revealed":
            assert _state(done.stdout) == "OK", done.stdout[-3000:]
            assert _title(done.stdout) == "Case 7 &lt;b&gt;"
            data = page_data(pages["revealed"])
            x, y, z = data["start"]
            assert (f'<p id="position">Crosshair: {"R" if x >= 0 else "L"} {abs(x):.1f}, {"A" if y >= 0 else "P"} '
                    f'{abs(y):.1f}, {"S" if z >= 0 else "I"} {abs(z):.1f} mm</p>') in done.stdout
        else:
            assert _title(done.stdout) == ("STEPS t1 | flair | flair+map0 maps shown | flair+map1 | t2+map1+tumour | "
                                           "t2+map1 | t2"), _title(done.stdout)[:2000]
    revealed, hidden = _colours(shots["revealed"]), _colours(shots["hidden"])
    assert revealed["warm"] > 2000 and revealed["magenta"] > 20, revealed
    assert hidden["warm"] == 0 and hidden["magenta"] == 0 and hidden["grey"] > 5000, hidden
