"""Each phantom patient's own brain: the MNI152 templates pulled through a per-case transform.

A case voxel x maps to the template point V(B(A(M(x)))), one SimpleITK composite transform, so every
tissue map is interpolated once:
  M  mass effect (case space): tissue pushed radially away from the tumour centre, volume inserted there;
  A  head size, shape and position: per-axis scale, small rotation and translation about the brain centre;
  B  a smooth random B-spline deformation (folds and gyri move between cases);
  V  the ventricles (template space): enlarged with age, the one on the tumour's side compressed.
Cortical atrophy (grey matter thinning into CSF) is applied to the tissue fractions afterwards. The tumour
is rendered in case space on the deformed anatomy, so its mask and the recorded truth need no transform.
Every draw comes from the case's own anatomy stream, and phantom.json records it (docs/PHANTOM.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from neuroradfm.errors import SettingsError
from neuroradfm.phantom.render import HEAD_PADDING_MM, anatomy, physical_coordinates, working_grid

ANATOMY_MODES = ("varied", "fixed")
DEFORMATION_MM = 2.5
"""Default B-spline amplitude: the standard deviation of each control point's displacement per axis."""
DEFORMATION_RANGE_MM = (0.0, 5.0)
"""Above 5 mm on a 20 mm control grid the deformation starts to fold (negative Jacobian)."""
CONTROL_SPACING_MM = 20.0
SCALE_SPREAD = 0.1
"""Default per-axis head scale: uniform in 1 +- 0.1."""
SCALE_SPREAD_RANGE = (0.0, 0.15)
ROTATION_DEG = 5.0
TRANSLATION_MM = 5.0
AGE_RANGE = (0.0, 110.0)

VENTRICLE_GROWTH_MM_PER_YEAR = 0.1
"""The ventricles' walls move out 0.1 mm per year after 30 (5 mm at 80), plus N(0, 0.8 mm)."""
VENTRICLE_DILATION_RANGE_MM = (-1.5, 8.0)
VENTRICLE_BAND_MM = 15.0
"""The white matter within 15 mm of a ventricle absorbs its growth or compression (linear taper)."""
ATROPHY_PER_YEAR = 0.004
"""Fraction of cortical grey matter next to CSF lost per year after 30 (0.2 at 80), plus N(0, 0.02)."""
MASS_COMPLIANCE = (0.3, 0.7)
"""Fraction of the abnormal tissue's volume that displaces the brain (the rest infiltrates)."""
EDEMA_EXTENT = 0.8
"""The abnormal tissue's radius for mass effect: core radius + 0.8 x edema reach."""
COMPRESSION_ML = 30.0
MAX_COMPRESSION_MM = 4.0
"""The walls of the ventricle on the tumour's side move in by 4 mm x V / (V + 30 ml), V the inserted volume."""


@dataclass(frozen=True)
class PhantomOptions:
    """What makes each case of a cohort differ beyond biology and site. ``None``: the documented default.

    ``multifocal``, ``low_grade`` and ``resection_cavity`` are fractions of the cases (0: off): satellite
    lesions; a non-enhancing, non-necrotic appearance of IDH-mutant tumours; a post-resection cavity.
    ``age`` fixes every patient's age (teaching: one brain at 30, one at 85) instead of drawing it.
    ``scanner_artifact``: the sites (names such as "site-B", or "all") whose every case gets the scanner artifact
    (``sites.add_scanner_artifact``); empty: none.
    """

    anatomy: str = "varied"
    deformation_mm: float | None = None
    scale_spread: float | None = None
    age: float | None = None
    multifocal: float = 0.0
    low_grade: float = 0.0
    resection_cavity: float = 0.0
    scanner_artifact: tuple[str, ...] = ()

    def check(self) -> None:
        """Settings outside the documented ranges, or that contradict each other: a SettingsError naming the option."""
        if self.anatomy not in ANATOMY_MODES:
            raise SettingsError("--anatomy", f"must be one of {', '.join(ANATOMY_MODES)}, got {self.anatomy!r}")
        shape = {"--deformation-mm": self.deformation_mm, "--scale-spread": self.scale_spread}
        if self.anatomy == "fixed":
            given = [option for option, value in shape.items() if value is not None]
            if given:
                raise SettingsError(given[0], "conflicts with --anatomy fixed (the one MNI152 brain of every case); "
                                              "leave it out, or use --anatomy varied")
        for option, value, (lo, hi) in [("--deformation-mm", self.deformation_mm, DEFORMATION_RANGE_MM),
                                        ("--scale-spread", self.scale_spread, SCALE_SPREAD_RANGE),
                                        ("--age", self.age, AGE_RANGE)]:
            if value is not None and not lo <= value <= hi:  # NaN fails both comparisons
                raise SettingsError(option, f"must lie in {lo:g}..{hi:g}, got {value}")
        for option, value in [("--multifocal", self.multifocal), ("--low-grade", self.low_grade),
                              ("--resection-cavity", self.resection_cavity)]:
            if not 0.0 <= value <= 1.0:
                raise SettingsError(option, f"is the fraction of cases, 0..1, got {value}")
        if not isinstance(self.scanner_artifact, tuple) or not all(
                isinstance(name, str) and name.strip() == name and name for name in self.scanner_artifact):
            raise SettingsError("--scanner-artifact", f"needs site names (e.g. site-B) or all, got "
                                                      f"{self.scanner_artifact!r}")
        if "all" in self.scanner_artifact and len(self.scanner_artifact) > 1:
            raise SettingsError("--scanner-artifact", "'all' already names every site: give it alone")

    def has_scanner_artifact(self, site: str) -> bool:
        """Whether the cases of ``site`` get the scanner artifact."""
        return "all" in self.scanner_artifact or site in self.scanner_artifact

    @property
    def varied(self) -> bool:
        return self.anatomy == "varied"

    def to_dict(self) -> dict:
        return {"mode": self.anatomy,
                "deformation_mm": DEFORMATION_MM if self.deformation_mm is None else self.deformation_mm,
                "control_spacing_mm": CONTROL_SPACING_MM,
                "scale_spread": SCALE_SPREAD if self.scale_spread is None else self.scale_spread,
                "rotation_deg": ROTATION_DEG, "translation_mm": TRANSLATION_MM, "age": self.age,
                "multifocal": self.multifocal, "low_grade": self.low_grade, "resection_cavity": self.resection_cavity}


@dataclass
class Draws:
    """One case's anatomy draws (all recorded in phantom.json)."""

    scale: np.ndarray             # per axis (LPS)
    rotation_deg: np.ndarray      # Euler angles about x, y, z
    translation_mm: np.ndarray
    deformation_mm: float
    coefficients: np.ndarray      # B-spline control-point displacements (mm)
    age: float
    ventricle_dilation_mm: float
    atrophy: float
    compliance: float

    def to_dict(self) -> dict:
        return {"scale": _rounded(self.scale, 4), "rotation_deg": _rounded(self.rotation_deg, 2),
                "translation_mm": _rounded(self.translation_mm, 2), "deformation_mm": self.deformation_mm,
                "deformation_rms_mm": round(float(np.sqrt(np.mean(self.coefficients ** 2))), 3),
                "deformation_max_mm": round(float(np.abs(self.coefficients).max(initial=0.0)), 3),
                "age": self.age, "ventricle_dilation_mm": round(self.ventricle_dilation_mm, 2),
                "cortical_atrophy": round(self.atrophy, 4), "mass_compliance": round(self.compliance, 4)}


def _rounded(values: np.ndarray, digits: int) -> list[float]:
    return [round(float(v), digits) for v in values]


def check_age(age: float) -> None:
    if not AGE_RANGE[0] <= age <= AGE_RANGE[1]:
        raise ValueError(f"age must lie in {AGE_RANGE[0]:g}..{AGE_RANGE[1]:g} years, got {age}")


def draw(rng: np.random.Generator, age: float, options: PhantomOptions) -> Draws:
    """The case's anatomy: the same draws whatever the grid or acquisition."""
    check_age(age)
    spread = SCALE_SPREAD if options.scale_spread is None else options.scale_spread
    amplitude = DEFORMATION_MM if options.deformation_mm is None else options.deformation_mm
    scale = rng.uniform(1 - spread, 1 + spread, size=3)
    rotation = rng.uniform(-ROTATION_DEG, ROTATION_DEG, size=3)
    translation = rng.uniform(-TRANSLATION_MM, TRANSLATION_MM, size=3)
    years = max(age - 30.0, 0.0)
    dilation = float(np.clip(VENTRICLE_GROWTH_MM_PER_YEAR * years + rng.normal(0, 0.8), *VENTRICLE_DILATION_RANGE_MM))
    atrophy = float(np.clip(ATROPHY_PER_YEAR * years + rng.normal(0, 0.02), 0.0, 0.3))
    compliance = float(rng.uniform(*MASS_COMPLIANCE))
    n_parameters = len(_bspline().GetParameters())
    coefficients = np.clip(rng.normal(0.0, 1.0, size=n_parameters), -2.5, 2.5) * amplitude
    return Draws(scale, rotation, translation, float(amplitude), coefficients, float(age), dilation, atrophy,
                 compliance)


def _bspline() -> sitk.BSplineTransform:
    """Control points every ~20 mm over the padded template box: one mesh for every grid and acquisition."""
    domain = working_grid(4.0, HEAD_PADDING_MM)
    extent = np.asarray(domain.GetSize()) * np.asarray(domain.GetSpacing())
    mesh = [max(int(round(e / CONTROL_SPACING_MM)), 1) for e in extent]
    return sitk.BSplineTransformInitializer(domain, mesh, order=3)


def _brain_centre(grid: sitk.Image) -> np.ndarray:
    return np.array(grid.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in grid.GetSize()]))


def _head_pose(draws: Draws, grid: sitk.Image) -> sitk.Transform:
    """Case point -> template point: the inverse of scaling, rotating and moving the template brain."""
    forward = sitk.AffineTransform(3)
    forward.SetCenter(_brain_centre(grid).tolist())
    euler = sitk.Euler3DTransform()
    euler.SetRotation(*np.deg2rad(draws.rotation_deg))
    matrix = np.asarray(euler.GetMatrix()).reshape(3, 3) @ np.diag(draws.scale)
    forward.SetMatrix(matrix.ravel().tolist())
    forward.SetTranslation(draws.translation_mm.tolist())
    return forward.GetInverse()


def _field_transform(displacement: np.ndarray, grid: sitk.Image) -> sitk.DisplacementFieldTransform:
    """A (K, J, I, 3) displacement (mm) on ``grid`` as a transform: point -> point + displacement."""
    field = sitk.GetImageFromArray(displacement.astype(np.float64), isVector=True)
    field.CopyInformation(grid)
    return sitk.DisplacementFieldTransform(field)


def _coarse(grid: sitk.Image, spacing_mm: float = 3.0) -> sitk.Image:
    """The grid's box at a coarser spacing: smooth fields need no fine lattice."""
    factor = max(spacing_mm / grid.GetSpacing()[0], 1.0)
    size = [max(int(np.ceil(n / factor)), 2) for n in grid.GetSize()]
    coarse = sitk.Image(size, sitk.sitkFloat32)
    coarse.SetSpacing([grid.GetSpacing()[0] * factor] * 3)
    coarse.SetDirection(grid.GetDirection())
    direction = np.asarray(grid.GetDirection()).reshape(3, 3)
    first = np.asarray(grid.GetOrigin()) - direction @ np.full(3, grid.GetSpacing()[0] / 2)
    coarse.SetOrigin((first + direction @ np.full(3, coarse.GetSpacing()[0] / 2)).tolist())
    return coarse


@lru_cache(maxsize=1)
def _ventricles() -> tuple[sitk.Image, np.ndarray, np.ndarray]:
    """The template's lateral ventricles on its 2 mm grid: deep CSF (> 12 mm inside the brain) off the midline
    (|x| > 3 mm) around the ventricle bodies; with each voxel's LPS coordinates."""
    grid = working_grid(2.0)
    tissues = anatomy(grid, with_head=False)
    coords = physical_coordinates(grid)
    depth = ndimage.distance_transform_edt(tissues["brain"] > 0.5, sampling=2.0)
    body = (np.abs(coords[..., 0]) < 35) & (np.abs(coords[..., 1] - 15) < 45) & (np.abs(coords[..., 2] - 14) < 18)
    mask = (tissues["csf"] > 0.5) & (depth > 12) & (np.abs(coords[..., 0]) > 3) & body
    return grid, coords, mask


@lru_cache(maxsize=3)
def _walls(side: int) -> tuple[np.ndarray, np.ndarray]:
    """Taper and outward unit normal (along k, j, i) around both lateral ventricles (``side`` 0) or the one
    at x of that sign: the same for every case, so computed once."""
    _, coords, mask = _ventricles()
    if side:
        mask = mask & (np.sign(coords[..., 0]) == side)
    inside = ndimage.distance_transform_edt(mask, sampling=2.0)
    outside = ndimage.distance_transform_edt(~mask, sampling=2.0)
    signed = ndimage.gaussian_filter(outside - inside, 1.0)
    gradient = np.stack(np.gradient(signed, 2.0), axis=-1)  # along k, j, i
    normal = gradient / np.maximum(np.linalg.norm(gradient, axis=-1, keepdims=True), 1e-6)
    taper = np.clip(1.0 - signed / VENTRICLE_BAND_MM, 0.0, 1.0)[..., None]
    return taper, normal


def _wall_displacement(side: int, move_mm: float) -> np.ndarray:
    """Pull-back displacement (K, J, I, 3) that moves the ventricles' walls outward by ``move_mm`` (inward if
    negative), tapering to nothing 15 mm away: a point at signed distance D comes from D - move x taper(D)."""
    taper, normal = _walls(side)
    return -move_mm * taper * normal


def ventricle_transform(draws: Draws, side: float = 0.0,
                        compression_mm: float = 0.0) -> sitk.DisplacementFieldTransform:
    """Template space: the lateral ventricles' walls moved out by the age draw; the ventricle at x = ``side``
    (sign) also pushed in by ``compression_mm`` (the tumour's mass effect)."""
    grid, _, _ = _ventricles()
    index_displacement = _wall_displacement(0, draws.ventricle_dilation_mm)
    if side != 0.0 and compression_mm > 0:
        index_displacement = index_displacement + _wall_displacement(int(np.sign(side)), -compression_mm)
    # (k, j, i) components -> physical (LPS) vectors
    direction = np.asarray(grid.GetDirection()).reshape(3, 3)
    return _field_transform(index_displacement[..., ::-1] @ direction.T, grid)


def case_transform(draws: Draws, grid: sitk.Image, mass: sitk.Transform | None = None,
                   ventricles: sitk.Transform | None = None) -> sitk.CompositeTransform:
    """Case point -> template point (see the module docstring); ``mass`` and ``ventricles`` replace the defaults."""
    bspline = _bspline()
    bspline.SetParameters(draws.coefficients.tolist())
    chain = [ventricles or ventricle_transform(draws), bspline, _head_pose(draws, grid)]
    if mass is not None:
        chain.append(mass)
    return sitk.CompositeTransform(chain)


def template_coordinates(transform: sitk.Transform, grid: sitk.Image) -> np.ndarray:
    """(K, J, I, 3) template point of every voxel of ``grid``: where each case voxel's anatomy comes from."""
    field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, grid.GetSize(), grid.GetOrigin(),
                                              grid.GetSpacing(), grid.GetDirection())
    return (physical_coordinates(grid) + sitk.GetArrayViewFromImage(field)).astype(np.float32)


def abnormal_radius(radius_mm: float, edema_mm: float) -> float:
    return radius_mm + EDEMA_EXTENT * edema_mm


def inserted_volume_ml(draws: Draws, radius_mm: float, edema_mm: float) -> float:
    return draws.compliance * 4 / 3 * np.pi * abnormal_radius(radius_mm, edema_mm) ** 3 / 1000


def mass_effect(centre: np.ndarray, inserted_ml: float, grid: sitk.Image) -> sitk.DisplacementFieldTransform:
    """Case space: the tissue at distance r from ``centre`` comes from distance (r^3 - 3V/4pi)^(1/3): a volume
    V inserted at the centre pushes everything outward, by V/(4 pi r^2) far away."""
    coarse = _coarse(grid, 2.0)
    offset = physical_coordinates(coarse).astype(np.float64) - centre
    r = np.linalg.norm(offset, axis=-1, keepdims=True)
    source = np.cbrt(np.maximum(r ** 3 - 3 * inserted_ml * 1000 / (4 * np.pi), 0.0))
    return _field_transform(offset * (source / np.maximum(r, 1e-6) - 1.0), coarse)


def _midline_on_row(transform: sitk.Transform, row: np.ndarray) -> float | None:
    """Where along ``row`` (points, mm apart) the template's midline (x = 0) lies under ``transform``."""
    x = np.array([transform.TransformPoint(point.tolist())[0] for point in row])
    crossings = np.flatnonzero(np.diff(np.sign(x)) != 0)
    if not len(crossings):
        return None
    i = crossings[np.argmin(np.abs(crossings - len(row) // 2))]
    return float(i + x[i] / (x[i] - x[i + 1]))


def midline_shift_mm(centre: np.ndarray, before: sitk.Transform, after: sitk.Transform, grid: sitk.Image) -> float:
    """How far the tumour moved the midline (template x = 0): measured on the line through the tumour centre
    along the grid's first axis, between the case's anatomy without (``before``) and with (``after``) it."""
    axis = np.asarray(grid.GetDirection()).reshape(3, 3)[:, 0]
    row = centre + np.arange(-120.0, 120.5, 0.5)[:, None] * axis
    positions = [_midline_on_row(t, row) for t in (before, after)]
    if None in positions:
        return 0.0
    return round(abs(positions[1] - positions[0]) * 0.5, 2)


def cortical_atrophy(tissues: dict[str, np.ndarray], atrophy: float, spacing: float) -> None:
    """Grey matter next to CSF (sulci, the brain surface) turns to CSF: the fraction ``atrophy`` where it touches."""
    if atrophy <= 0:
        return
    fluid = tissues["csf"] + (1.0 - tissues["brain"])
    touching = np.clip(2.0 * ndimage.gaussian_filter(fluid, 2.0 / spacing), 0.0, 1.0)
    lost = tissues["gm"] * atrophy * touching
    tissues["gm"] = tissues["gm"] - lost
    tissues["csf"] = tissues["csf"] + lost


def ventricle_compression_mm(inserted_ml: float) -> float:
    return MAX_COMPRESSION_MM * inserted_ml / (inserted_ml + COMPRESSION_ML)
