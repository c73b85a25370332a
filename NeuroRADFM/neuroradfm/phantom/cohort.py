"""Phantom cases and cohorts on disk (BraTS-2023 naming, clinical table, manifest)."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from neuroradfm import SEQUENCES
from neuroradfm.atomic import atomic_file
from neuroradfm.errors import SettingsError
from neuroradfm.output_paths import check_destinations
from neuroradfm.phantom import anatomy, render
from neuroradfm.phantom.anatomy import PhantomOptions
from neuroradfm.phantom.biology import Traits, sample_patient
from neuroradfm.phantom.sites import (
    Site,
    add_scanner_artifact,
    contrast_factors,
    make_site,
    scanner_artifact_record,
    site_name,
)
from neuroradfm.progress import Progress, null_progress

GENERATOR_VERSION = "2"
FIXED_GENERATOR_VERSION = "1"
"""``--anatomy fixed`` without other options writes generator 1's cohort, phantom.json included, byte for byte."""
FILE_SUFFIX = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"}
INTENSITY_SCALE = 1000.0
"""Images are stored as int16: rendered intensity x 1000."""
NATIVE_FOV_MM = (240.0, 240.0, 180.0)
FLAIR_SLICE_FACTOR = 1.5


def case_id(index: int) -> str:
    return f"BraTS-PHN-{index:05d}-000"


def _acquisition_grid(site: Site, centre: np.ndarray, slice_factor: float = 1.0) -> sitk.Image:
    """An oblique, anisotropic acquisition box around ``centre`` (LPS or RAS axes, per site)."""
    tilt = sitk.Euler3DTransform()
    tilt.SetRotation(np.deg2rad(site.native_tilt_deg), 0.0, np.deg2rad(site.native_tilt_deg / 2))
    base = np.diag([-1.0, -1.0, 1.0]) if site.native_ras else np.eye(3)
    direction = np.asarray(tilt.GetMatrix()).reshape(3, 3) @ base
    spacing = np.array(site.native_spacing) * np.array([1.0, 1.0, slice_factor])
    size = np.maximum(np.round(np.array(NATIVE_FOV_MM) / spacing).astype(int), 8)
    grid = sitk.Image([int(v) for v in size], sitk.sitkFloat32)
    grid.SetSpacing(spacing.tolist())
    grid.SetDirection(direction.ravel().tolist())
    grid.SetOrigin((centre - direction @ (spacing * (size - 1) / 2)).tolist())
    return grid


@dataclass
class PhantomCase:
    """One phantom: four images, the tumour label map (on the T1ce grid), the clinical row, and the case's
    anatomy and lesion draws (phantom.json; empty with fixed anatomy)."""

    images: dict[str, sitk.Image]
    seg: sitk.Image
    row: dict
    draws: dict = field(default_factory=dict)


def generate_case(index: int, seed: int, n_sites: int = 4, native: bool = False, spacing: float = 1.0,
                  site_contrast: float = 0.0,
                  options: PhantomOptions | None = None) -> tuple[dict[str, sitk.Image], sitk.Image, dict]:
    """One phantom: four images, the tumour label map (on the T1ce grid) and the clinical row (``draw_case``)."""
    case = draw_case(index, seed, n_sites, native, spacing, site_contrast, options)
    return case.images, case.seg, case.row


def _lesion_options(rng: np.random.Generator, options: PhantomOptions, subtype: str) -> dict:
    """Which optional lesion types this case gets: three uniforms always drawn, so each flag leaves the
    others' choices alone."""
    u_low, u_multi, u_cavity = rng.random(3)
    return {"low_grade": bool(subtype != "glioblastoma" and u_low < options.low_grade),
            "multifocal": bool(u_multi < options.multifocal),
            "resection_cavity": bool(u_cavity < options.resection_cavity)}


def _own_anatomy(rng: np.random.Generator, anatomy_rng: np.random.Generator, age: float, traits: Traits,
                 options: PhantomOptions, grid: sitk.Image, coords: np.ndarray, native: bool,
                 resected: bool) -> tuple[dict, np.ndarray, dict]:
    """The case's own brain (docs/PHANTOM.md): tissues on ``grid``, the tumour centre (drawn from ``rng`` on the
    anatomy without the tumour), and the record of every draw. The tumour's mass effect needs its centre, so
    the tissues are pulled through the case's transform twice: without, then with it."""
    draws = anatomy.draw(anatomy_rng, age, options)
    unpushed = anatomy.case_transform(draws, grid)
    template_points = anatomy.template_coordinates(unpushed, grid)
    tissues = render.anatomy(grid, with_head=False, transform=unpushed)
    centre = render.choose_centre(rng, traits, coords, tissues, template_points)
    inserted = anatomy.inserted_volume_ml(draws, traits.radius_mm, traits.edema_mm) * (0.5 if resected else 1.0)
    side = float(template_points[grid.TransformPhysicalPointToIndex(centre.tolist())[::-1]][0])  # template x
    compression = anatomy.ventricle_compression_mm(inserted)
    transform = anatomy.case_transform(draws, grid, anatomy.mass_effect(centre, inserted, grid),
                                       anatomy.ventricle_transform(draws, side, compression))
    tissues = render.anatomy(grid, with_head=native, transform=transform)
    anatomy.cortical_atrophy(tissues, draws.atrophy, grid.GetSpacing()[0])
    shift = anatomy.midline_shift_mm(centre, unpushed, transform, grid)
    record = {**draws.to_dict(), "mass_effect": {
        "inserted_ml": round(inserted, 2), "midline_shift_mm": round(shift, 2),
        "side": "left" if side > 0 else "right", "ventricle_compression_mm": round(compression, 2)}}
    return tissues, centre, record


def draw_case(index: int, seed: int, n_sites: int = 4, native: bool = False, spacing: float = 1.0,
              site_contrast: float = 0.0, options: PhantomOptions | None = None) -> PhantomCase:
    """One phantom case. Deterministic in its arguments; independent of the cohort size.

    ``site_contrast`` > 0 gives each site tissue contrasts of its own (``sites.contrast_factors``).
    ``options`` (default: varied anatomy) draws the case's own brain from a stream of its own, so
    ``PhantomOptions(anatomy="fixed")`` gives the template brain and every other draw as before.
    """
    if spacing <= 0:
        raise ValueError(f"spacing must be positive, got {spacing}")
    if site_contrast < 0:
        raise ValueError(f"site contrast must be >= 0, got {site_contrast}")
    options = options or PhantomOptions()
    options.check()
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    site = make_site(index % n_sites)
    row, traits = sample_patient(rng, site.index, n_sites, age=options.age)
    grid = render.working_grid(spacing, render.HEAD_PADDING_MM if native else 0.0)
    coords = render.physical_coordinates(grid)
    record: dict = {}
    lesion_rng = np.random.default_rng(np.random.SeedSequence([seed, index, 3]))
    kinds = _lesion_options(lesion_rng, options, row["subtype"])
    if kinds["low_grade"]:
        traits = replace(traits, enhancement=0.0, necrosis=0.0, rim_mm=0.0, edema_mm=0.3 * traits.edema_mm)
    if options.varied:
        tissues, centre, record = _own_anatomy(rng, np.random.default_rng(np.random.SeedSequence([seed, index, 2])),
                                               row["age"], traits, options, grid, coords, native,
                                               resected=kinds["resection_cavity"])
    else:
        tissues = render.anatomy(grid, with_head=native)
        centre = render.choose_centre(rng, traits, coords, tissues)
    parts = render.lesion(rng, traits, centre, grid, coords, tissues)
    if kinds["multifocal"]:
        count = int(lesion_rng.integers(1, 3))
        small = replace(traits, radius_mm=traits.radius_mm * float(lesion_rng.uniform(0.35, 0.55)),
                        edema_mm=0.5 * traits.edema_mm)
        satellites = render.satellite_centres(lesion_rng, centre, count, small.radius_mm, coords, tissues)
        for satellite in satellites:
            parts = render.merge(parts, render.lesion(lesion_rng, small, satellite, grid, coords, tissues))
        record["satellites"] = [{"centre": c, "radius_mm": round(small.radius_mm, 2)} for c in satellites]
    if kinds["resection_cavity"]:
        cavity_mm = 0.75 * traits.radius_mm
        parts = render.resect(parts, centre, cavity_mm, coords, tissues, grid.GetSpacing()[0])
        record["resection_cavity"] = {"centre": centre, "radius_mm": round(cavity_mm, 2)}
    if options.low_grade > 0:
        record["low_grade"] = kinds["low_grade"]
    contrast = contrast_factors(site.index, site_contrast, render.COMPARTMENTS) if site_contrast > 0 else None
    clean = render.render(traits, tissues, parts, grid, rng, centre, contrast)
    if options.has_scanner_artifact(site.name):  # no draw: every other draw of the case stays the same
        clean = add_scanner_artifact(clean, coords)
    label_map = render.labels(parts)
    seg = sitk.GetImageFromArray(label_map)
    seg.CopyInformation(grid)
    del coords
    whole = np.argwhere(np.isin(label_map, (1, 2, 3)))[:, ::-1].mean(axis=0)  # (i, j, k) of the planted tumour
    centroid = np.array(grid.TransformContinuousIndexToPhysicalPoint(whole.tolist()))

    support = None if native else (tissues["brain"] > 0.5).astype(np.float32)
    images: dict[str, sitk.Image] = {}
    bias_field = render.smooth_noise(grid, rng, 80.0)
    for sequence in SEQUENCES:
        image = sitk.GetImageFromArray(clean[sequence])
        image.CopyInformation(grid)
        images[sequence] = render.site_effects(image, sequence, site, rng, bias_field, support)

    tumour_centre = centre
    if native:
        pose = sitk.Euler3DTransform()
        pose.SetCenter(centre.tolist())
        pose.SetRotation(*np.deg2rad(rng.uniform(-10, 10, size=3)))
        pose.SetTranslation(rng.uniform(-10, 10, size=3).tolist())  # acquisition point -> template point
        head_centre = np.array(pose.GetInverse().TransformPoint(
            sitk.Image(grid).TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in grid.GetSize()])))
        acquisitions = {s: _acquisition_grid(site, head_centre, FLAIR_SLICE_FACTOR if s == "flair" else 1.0)
                        for s in SEQUENCES}
        images = {s: sitk.Resample(images[s], acquisitions[s], pose, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
                  for s in SEQUENCES}
        seg = sitk.Resample(seg, acquisitions["t1ce"], pose, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        tumour_centre = np.array(pose.GetInverse().TransformPoint(centre.tolist()))
        centroid = np.array(pose.GetInverse().TransformPoint(centroid.tolist()))
    for lesion in [*record.get("satellites", []), record.get("resection_cavity", {})]:
        if "centre" in lesion:  # where the lesion lies in the stored images
            point = pose.GetInverse().TransformPoint(lesion["centre"].tolist()) if native else lesion["centre"]
            lesion["centre"] = _rounded(point)

    stored = {}
    for sequence, image in images.items():
        array = np.clip(np.round(sitk.GetArrayFromImage(image) * INTENSITY_SCALE), 0, 32767).astype(np.int16)
        out = sitk.GetImageFromArray(array)
        out.CopyInformation(image)
        stored[sequence] = out
    volumes = np.bincount(sitk.GetArrayViewFromImage(seg).ravel(), minlength=5) * np.prod(seg.GetSpacing()) / 1000
    row.update({
        "site": site.name,
        "tumour_x": round(float(tumour_centre[0]), 2), "tumour_y": round(float(tumour_centre[1]), 2),
        "tumour_z": round(float(tumour_centre[2]), 2),
        "necrotic_core_ml": round(float(volumes[1]), 2), "edema_ml": round(float(volumes[2]), 2),
        "enhancing_ml": round(float(volumes[3]), 2),
        **{f"trait_{k}": (round(v, 4) if isinstance(v, float) else v) for k, v in vars(traits).items()},
    })
    if options.varied:
        row.update({f"tumour_centroid_{axis}": value for axis, value in zip("xyz", _rounded(centroid))})
        row["midline_shift_mm"] = record["mass_effect"]["midline_shift_mm"]
    if options.resection_cavity > 0:
        row["cavity_ml"] = round(float(volumes[render.LABEL_RESECTION_CAVITY]), 2)
    if options.multifocal > 0:
        row["foci"] = 1 + len(record.get("satellites", []))
    if options.low_grade > 0:
        row["low_grade"] = int(kinds["low_grade"])
    if options.scanner_artifact:
        row["scanner_artifact"] = int(options.has_scanner_artifact(site.name))
    return PhantomCase(stored, seg, row, record)


def _rounded(point: np.ndarray) -> list[float]:
    return [round(float(v), 2) for v in point]


def _write_image(image: sitk.Image, path: Path) -> None:
    with atomic_file(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)


def _write_csv(path: Path, rows: list[dict]) -> None:
    with atomic_file(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def is_native(index: int, seed: int, native_fraction: float) -> bool:
    """Whether case ``index`` of a mixed cohort is a native acquisition: its own random stream, so the
    choice (and every case's content) is independent of the cohort size."""
    if native_fraction <= 0 or native_fraction >= 1:
        return native_fraction >= 1
    return bool(np.random.default_rng(np.random.SeedSequence([seed, index, 1])).random() < native_fraction)


MAX_CASES = 100_000
SPACING_RANGE_MM = (0.5, 8.0)
"""Rendering grids the MNI152 templates (1 mm) support: finer takes memory for nothing, coarser loses the anatomy."""
MAX_SITE_CONTRAST = 2.0
"""exp(2 u) already changes a tissue's intensity by a factor of 7 at u = 1; more only saturates the images."""


def _check_settings(n: int, sites: int, seed: int, fraction: float, spacing: float, site_contrast: float) -> None:
    """Numbers that cannot make a cohort are a SettingsError naming the option, before any case is drawn."""
    if not 1 <= n <= MAX_CASES:
        raise SettingsError("--n", f"need n >= 1 cases (at most {MAX_CASES}), got {n}")
    if not 1 <= sites <= MAX_CASES:
        raise SettingsError("--sites", f"need sites >= 1 (at most {MAX_CASES}), got {sites}")
    if seed < 0:
        raise SettingsError("--seed", f"must be 0 or more, got {seed}")
    if not 0.0 <= fraction <= 1.0:
        raise SettingsError("--native-fraction", f"must lie in 0..1, got {fraction}")
    if not SPACING_RANGE_MM[0] <= spacing <= SPACING_RANGE_MM[1]:
        raise SettingsError("--spacing", f"the voxel size must lie in {SPACING_RANGE_MM[0]:g}..{SPACING_RANGE_MM[1]:g} "
                                         f"mm, got {spacing}")
    if not 0.0 <= site_contrast <= MAX_SITE_CONTRAST:
        raise SettingsError("--site-contrast", f"must lie in 0..{MAX_SITE_CONTRAST:g}, got {site_contrast}")


def _check_artifact_sites(options: PhantomOptions, sites: int) -> None:
    """Every site ``--scanner-artifact`` names must be one of the cohort's: a typo would silently give no artifact."""
    if not options.scanner_artifact:
        return
    names = {site_name(i) for i in range(sites)}
    unknown = [name for name in options.scanner_artifact if name != "all" and name not in names]
    if unknown:
        shown = ", ".join(site_name(i) for i in range(min(sites, 6))) + (", ..." if sites > 6 else "")
        raise SettingsError("--scanner-artifact", f"no site {', '.join(unknown)} in a cohort of {sites} site(s) "
                                                  f"({shown})")


def generate_cohort(out_dir: str | Path, n: int, sites: int = 4, seed: int = 0, native: bool = False,
                    spacing: float = 1.0, progress: Progress = null_progress, native_fraction: float | None = None,
                    site_contrast: float = 0.0, options: PhantomOptions | None = None,
                    indices: Sequence[int] | None = None) -> Path:
    """Write ``n`` phantom cases; returns the manifest. CSVs are written last, so an interrupted run
    leaves no manifest pointing at missing files.

    ``native_fraction`` (0..1) mixes native acquisitions into a BraTS-style cohort, so that a model
    trained on it meets both kinds of input; ``native`` is the same as a fraction of 1. ``site_contrast``
    (e.g. 0.3) makes the sites differ in tissue contrast too, a site difference that z-scoring cannot remove.
    ``options``: each case's own anatomy (the default) or the one template brain, and optional lesion types.
    ``indices``: which cases of the seed's sequence to write (default 0 .. n-1; a teaching pack picks cases by their
    traits); each case is the one the full cohort would hold at that index, ``phantom.json`` records the indices.
    """
    fraction = 1.0 if native else (native_fraction or 0.0)
    options = options or PhantomOptions()
    _check_settings(n, sites, seed, fraction, spacing, site_contrast)
    chosen = list(range(n)) if indices is None else [int(i) for i in indices]
    if len(chosen) != n or len(set(chosen)) != n or any(not 0 <= i < MAX_CASES for i in chosen):
        raise SettingsError("indices", f"need {n} different case indices in 0..{MAX_CASES - 1}, got {chosen[:5]}")
    options.check()
    _check_artifact_sites(options, sites)
    out = Path(out_dir)
    check_destinations(folders={"--out": out})
    if out.is_dir() and any(out.iterdir()) and not (out / "phantom.json").is_file():
        raise SettingsError("--out", f"{out} holds files of its own (no phantom.json of an earlier phantom cohort); "
                                     "its manifest.csv and case folders would be overwritten: choose an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    clinical, manifest, draws = [], [], {}
    for position, index in enumerate(chosen):
        progress("phantom", position / n, case_id(index))
        native_case = is_native(index, seed, fraction)
        case = draw_case(index, seed, n_sites=sites, native=native_case, spacing=spacing,
                         site_contrast=site_contrast, options=options)
        images, seg, row = case.images, case.seg, case.row
        row["acquisition"] = "native" if native_case else "brats-style"
        cid = case_id(index)
        draws[cid] = case.draws
        folder = out / cid
        folder.mkdir(exist_ok=True)
        paths = {}
        for key, image in [*images.items(), ("seg", seg)]:
            path = folder / f"{cid}-{FILE_SUFFIX[key]}.nii.gz"
            _write_image(image, path)
            paths[key] = path.relative_to(out).as_posix()
        clinical.append({"case_id": cid, **row})
        manifest.append({"case_id": cid, "site": row["site"], **{k: paths[k] for k in [*SEQUENCES, "seg"]},
                         **{k: v for k, v in row.items() if k != "site"}})
    settings = {"generator_version": GENERATOR_VERSION, "seed": seed, "n": n, "sites": sites,
                "native_fraction": fraction, "spacing_mm": spacing, "intensity_scale": INTENSITY_SCALE,
                "site_profiles": [make_site(i).to_dict() for i in range(sites)], "site_contrast": site_contrast}
    if options.scanner_artifact:
        settings["scanner_artifact"] = scanner_artifact_record(
            [site_name(i) for i in range(sites) if options.has_scanner_artifact(site_name(i))])
    if site_contrast > 0:
        settings["site_contrast_factors"] = {
            make_site(i).name: {name: [round(float(f), 4) for f in factors] for name, factors in
                                contrast_factors(i, site_contrast, render.COMPARTMENTS).items()}
            for i in range(sites)}
    if indices is not None:
        settings["indices"] = chosen
    if options == PhantomOptions(anatomy="fixed"):
        settings["generator_version"] = FIXED_GENERATOR_VERSION
    else:
        settings.update({"anatomy": options.to_dict(), "cases": draws})
    with atomic_file(out / "phantom.json") as tmp:
        tmp.write_text(json.dumps(settings, indent=1) + "\n", encoding="utf-8")
    _write_csv(out / "clinical.csv", clinical)
    _write_csv(out / "manifest.csv", manifest)
    progress("phantom", 1.0, f"{n} cases in {out}")
    return out / "manifest.csv"
