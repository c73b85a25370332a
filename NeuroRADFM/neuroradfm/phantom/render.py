"""Rendering a phantom patient: MNI152 anatomy + a glioma in four contrasts + site effects.

Tissue fractions (GM, WM, CSF; in native mode also scalp, skull and outer CSF shells) and the
lesion compartments (necrosis, enhancing rim, solid non-enhancing tumour, edema) are soft maps;
each contrast is their intensity-weighted sum (CONTRASTS). Site effects follow in sites.py order.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from neuroradfm import SEQUENCES
from neuroradfm.phantom.biology import Traits
from neuroradfm.phantom.sites import Site
from neuroradfm.template import load_brain_mask, load_template

# Intensities (arbitrary units) of each compartment in T1, T1ce, T2, FLAIR.
CONTRASTS = {
    "csf": (0.20, 0.22, 1.00, 0.08),
    "gm": (0.60, 0.62, 0.62, 0.68),
    "wm": (0.85, 0.86, 0.45, 0.52),
    "necrosis": (0.18, 0.20, 1.05, 0.40),
    "edema": (0.55, 0.56, 0.85, 0.95),
    "scalp": (0.95, 0.95, 0.55, 0.75),
    "skull": (0.05, 0.05, 0.05, 0.05),
}
HEAD_SHELLS_MM = {"csf": 3.0, "skull": 5.0, "scalp": 5.0}
HEAD_PADDING_MM = 20.0
LABEL_NECROTIC_CORE, LABEL_EDEMA, LABEL_ENHANCING, LABEL_RESECTION_CAVITY = 1, 2, 3, 4


def working_grid(spacing: float, pad_mm: float = 0.0) -> sitk.Image:
    """The template's box (optionally padded) at ``spacing`` mm, template axes."""
    template = load_template("t1")
    direction = np.asarray(template.GetDirection()).reshape(3, 3)
    t_spacing = np.asarray(template.GetSpacing())
    first_corner = np.asarray(template.GetOrigin()) - direction @ (t_spacing / 2 + pad_mm)
    extent = np.asarray(template.GetSize()) * t_spacing + 2 * pad_mm
    size = np.ceil(extent / spacing - 1e-6).astype(int)
    grid = sitk.Image([int(v) for v in size], sitk.sitkFloat32)
    grid.SetSpacing([spacing] * 3)
    grid.SetDirection(direction.ravel().tolist())
    grid.SetOrigin((first_corner + direction @ np.full(3, spacing / 2)).tolist())
    return grid


def physical_coordinates(grid: sitk.Image) -> np.ndarray:
    """(K, J, I, 3) physical (LPS) coordinates of every voxel centre."""
    size = grid.GetSize()
    k, j, i = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in size[::-1]], indexing="ij")
    index = np.stack([i, j, k], axis=-1) * np.asarray(grid.GetSpacing(), np.float32)
    return index @ np.asarray(grid.GetDirection(), np.float32).reshape(3, 3).T + np.asarray(grid.GetOrigin(),
                                                                                           np.float32)


def _on_grid(image: sitk.Image, grid: sitk.Image, transform: sitk.Transform | None = None) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.Resample(image, grid, transform or sitk.Transform(), sitk.sitkLinear, 0.0,
                                                sitk.sitkFloat32))


def smooth_noise(grid: sitk.Image, rng: np.random.Generator, scale_mm: float) -> np.ndarray:
    """Unit-variance random field with features of about ``scale_mm`` (coarse lattice, linear up)."""
    extent = np.asarray(grid.GetSize()) * np.asarray(grid.GetSpacing())
    coarse_size = np.maximum(np.ceil(extent / scale_mm).astype(int) + 3, 4)
    coarse = sitk.GetImageFromArray(rng.normal(size=coarse_size[::-1]).astype(np.float32))
    coarse.SetSpacing([scale_mm] * 3)
    coarse.SetDirection(grid.GetDirection())
    direction = np.asarray(grid.GetDirection()).reshape(3, 3)
    coarse.SetOrigin((np.asarray(grid.GetOrigin()) - direction @ np.full(3, 1.5 * scale_mm)).tolist())
    field = sitk.GetArrayFromImage(sitk.Resample(coarse, grid, sitk.Transform(), sitk.sitkLinear, 0.0))
    return (field - field.mean()) / (field.std() + 1e-6)


def anatomy(grid: sitk.Image, with_head: bool, transform: sitk.Transform | None = None) -> dict[str, np.ndarray]:
    """Tissue fractions on ``grid``: gm, wm, csf (inside the brain) and, for a head, the shells.
    ``transform`` maps a grid point to its template point (the case's own anatomy; None: the template's)."""
    brain = np.clip(_on_grid(sitk.Cast(load_brain_mask(), sitk.sitkFloat32), grid, transform), 0, 1)
    gm = np.clip(_on_grid(load_template("gm"), grid, transform), 0, 1)
    wm = np.clip(_on_grid(load_template("wm"), grid, transform), 0, 1)
    total = np.maximum(gm + wm, 1.0)
    gm, wm = gm / total * brain, wm / total * brain
    tissues = {"gm": gm, "wm": wm, "csf": np.clip(brain - gm - wm, 0, 1), "brain": brain}
    if with_head:
        spacing = grid.GetSpacing()[0]
        outside = ndimage.distance_transform_edt(brain < 0.5, sampling=spacing)
        edges = np.cumsum([0.0, *HEAD_SHELLS_MM.values()])
        for (name, _), lo, hi in zip(HEAD_SHELLS_MM.items(), edges[:-1], edges[1:]):
            shell = ((outside > lo) & (outside <= hi)).astype(np.float32)
            tissues[name] = tissues.get(name, 0) + ndimage.gaussian_filter(shell, 0.5)
    return tissues


def choose_centre(rng: np.random.Generator, traits: Traits, coords: np.ndarray, tissues: dict,
                  template_points: np.ndarray | None = None) -> np.ndarray:
    """A white-matter point in the trait's region, deep enough for the core to stay inside the brain.
    The region is judged at each voxel's ``template_points`` (its template point; None: the voxel itself)."""
    spacing = float(np.linalg.norm(coords[0, 0, 1] - coords[0, 0, 0]))
    depth = ndimage.distance_transform_edt(tissues["brain"] > 0.5, sampling=spacing)
    where = coords if template_points is None else template_points
    ras_y, ras_z = -where[..., 1], where[..., 2]
    if traits.region == "frontal":
        region = (ras_y > 15) & (ras_z > -5)
    else:
        region = (ras_y < 0) & (ras_y > -60) & (ras_z > -25) & (ras_z < 35)
    for min_depth in (traits.radius_mm * 0.9, traits.radius_mm * 0.6, 5.0):
        candidates = np.argwhere(region & (tissues["wm"] > 0.5) & (depth > min_depth))
        if len(candidates):
            return coords[tuple(candidates[rng.integers(len(candidates))])].astype(np.float64)
    raise RuntimeError("no place for the tumour: the template anatomy did not load correctly")


def _step(x: np.ndarray, width: float) -> np.ndarray:
    """Soft 0/1 step at x = 0 (x > 0 inside), about ``width`` wide."""
    return 1.0 / (1.0 + np.exp(-np.clip(x / max(width, 1e-3), -30, 30)))


def lesion(rng: np.random.Generator, traits: Traits, centre: np.ndarray, grid: sitk.Image, coords: np.ndarray,
           tissues: dict) -> dict[str, np.ndarray]:
    """Soft compartments: necrosis, rim (enhancing), solid (non-enhancing) and edema, within the brain."""
    spacing = grid.GetSpacing()[0]
    axes = traits.radius_mm * rng.uniform(0.8, 1.2, size=3)
    rotation = sitk.Euler3DTransform()
    rotation.SetRotation(*rng.uniform(-np.pi, np.pi, size=3))
    local = (coords - centre.astype(np.float32)) @ np.asarray(rotation.GetMatrix(), np.float32).reshape(3, 3)
    radial = np.sqrt(((local / axes.astype(np.float32)) ** 2).sum(-1))
    radial = radial * np.exp(-traits.lobulation * smooth_noise(grid, rng, 12.0))
    width = spacing / traits.radius_mm
    core = _step(1.0 - radial, width)
    offset = traits.necrosis_offset * traits.radius_mm * rng.normal(size=3)
    necrotic_radial = np.sqrt((((coords - (centre + offset).astype(np.float32)) / axes.astype(np.float32)) ** 2)
                              .sum(-1))
    necrosis = core * _step(traits.necrosis - necrotic_radial, width)
    inner = _step(1.0 - traits.rim_mm / traits.radius_mm - radial, width)
    rim = np.clip(core - inner - necrosis, 0, 1)
    solid = np.clip(core - rim - necrosis, 0, 1)
    reach = 1.0 + traits.edema_mm * (0.4 + 0.6 * tissues["wm"]) / traits.radius_mm
    edema = np.clip(_step(reach - radial, width) - core, 0, 1)
    brain = tissues["brain"]
    return {"necrosis": necrosis * brain, "rim": rim * brain, "solid": solid * brain, "edema": edema * brain}


def satellite_centres(rng: np.random.Generator, centre: np.ndarray, count: int, radius_mm: float,
                      coords: np.ndarray, tissues: dict) -> list[np.ndarray]:
    """White-matter points 25-50 mm from the main tumour, deep enough for a satellite of ``radius_mm``."""
    spacing = float(np.linalg.norm(coords[0, 0, 1] - coords[0, 0, 0]))
    depth = ndimage.distance_transform_edt(tissues["brain"] > 0.5, sampling=spacing)
    distance = np.linalg.norm(coords - centre.astype(np.float32), axis=-1)
    candidates = np.argwhere((tissues["wm"] > 0.5) & (depth > radius_mm) & (distance > 25) & (distance < 50))
    if not len(candidates):
        return []
    return [coords[tuple(candidates[i])].astype(np.float64) for i in rng.integers(len(candidates), size=count)]


def merge(parts: dict[str, np.ndarray], more: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Two lesions' compartments: the stronger at each voxel, the total within 1."""
    merged = {name: np.maximum(parts[name], more[name]) for name in parts}
    total = sum(merged.values())
    return {name: value / np.maximum(total, 1.0) for name, value in merged.items()}


def resect(parts: dict[str, np.ndarray], centre: np.ndarray, radius_mm: float, coords: np.ndarray,
           tissues: dict, spacing: float) -> dict[str, np.ndarray]:
    """A fluid-filled resection cavity (sphere of ``radius_mm``) replaces what lay inside it."""
    distance = np.linalg.norm(coords - centre.astype(np.float32), axis=-1)
    cavity = _step(1.0 - distance / radius_mm, spacing / radius_mm) * tissues["brain"]
    return {**{name: value * (1 - cavity) for name, value in parts.items()}, "cavity": cavity}


COMPARTMENTS = [*CONTRASTS, "rim", "solid"]
"""Every compartment with an intensity of its own (the order of a site's contrast factors)."""


def render(traits: Traits, tissues: dict, parts: dict, grid: sitk.Image, rng: np.random.Generator,
           centre: np.ndarray, contrast: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Clean images in the four contrasts: no site effects but the site's tissue-contrast factors
    (``contrast``: compartment -> one factor per sequence; None = the reference contrasts)."""
    e = traits.enhancement
    values = dict(CONTRASTS)
    values["rim"] = (0.50, 0.55 + e, 0.78, 0.78)
    values["solid"] = (traits.t1_core, traits.t1_core + 0.1 * e, 0.88, 0.88 * traits.flair_mismatch)
    if contrast is not None:
        values = {name: tuple(float(v * f) for v, f in zip(row, contrast[name])) for name, row in values.items()}
    values["cavity"] = values["csf"]  # a resection cavity holds CSF-like fluid
    lesion_total = np.clip(sum(parts.values()), 0, 1)
    texture = 1.0 + traits.texture * smooth_noise(grid, rng, 3.0) * (parts["solid"] + parts["rim"])
    spots = np.zeros_like(lesion_total)
    if traits.calcifications:
        inside = np.argwhere(parts["solid"] + parts["necrosis"] + parts["rim"] > 0.5)
        if len(inside):
            for index in inside[rng.integers(len(inside), size=traits.calcifications)]:
                spots[tuple(index)] = 1.0
            spots = np.clip(ndimage.gaussian_filter(spots, 1.5 / grid.GetSpacing()[0]) * 8, 0, 1)
    images = {}
    for channel, sequence in enumerate(SEQUENCES):
        normal = sum(tissues[name] * values[name][channel] for name in tissues if name in CONTRASTS)
        image = (1 - lesion_total) * normal + sum(parts[p] * values[p][channel] for p in parts)
        images[sequence] = (image * texture * (1 - 0.7 * spots)).astype(np.float32)
    return images


def labels(parts: dict) -> np.ndarray:
    """BraTS-2023 labels: 1 necrotic/non-enhancing core, 2 edema, 3 enhancing rim; with a cavity, BraTS-2024's
    post-treatment 4 (resection cavity, as in MU-Glioma-Post)."""
    compartments = [parts["edema"], parts["necrosis"] + parts["solid"], parts["rim"]]
    names = [LABEL_EDEMA, LABEL_NECROTIC_CORE, LABEL_ENHANCING]
    if "cavity" in parts:
        compartments.append(parts["cavity"])
        names.append(LABEL_RESECTION_CAVITY)
    stack = np.stack(compartments)
    label = np.argmax(stack, axis=0).astype(np.uint8)
    label = np.choose(label, names).astype(np.uint8)
    label[stack.sum(axis=0) <= 0.5] = 0
    return label


def site_effects(image: sitk.Image, sequence: str, site: Site, rng: np.random.Generator, bias_field: np.ndarray,
                 support: np.ndarray | None) -> sitk.Image:
    """Blur, slice thickness, bias (``bias_field``: unit-variance smooth field of the case), scale/offset and
    Rician noise; zero outside ``support``."""
    if site.blur_mm > 0:
        image = sitk.SmoothingRecursiveGaussian(image, site.blur_mm)
    if site.slice_mm > 1:
        sigma = site.slice_mm / 2.355 / image.GetSpacing()[2]
        array = ndimage.gaussian_filter1d(sitk.GetArrayFromImage(image), sigma, axis=0)
    else:
        array = sitk.GetArrayFromImage(image)
    array = array * np.exp(site.bias * bias_field) * site.scale[sequence] + site.offset[sequence] * (array > 0.02)
    sd = site.noise * 0.6
    array = np.sqrt((array + rng.normal(0, sd, array.shape)) ** 2 + rng.normal(0, sd, array.shape) ** 2)
    if support is not None:
        array = array * support
    out = sitk.GetImageFromArray(np.clip(array, 0, None).astype(np.float32))
    out.CopyInformation(image)
    return out
