"""Reading one image file and checking it is a usable 3D MRI volume.

Every reader path (image files, BraTS folders, manifests, DICOM series, cases built in memory) passes
``check_image``. ``read_image`` first checks what the file's header claims (pixel type, size, geometry, the amount
of data) so that a hostile or broken header is refused before SimpleITK allocates or reads any voxel.
"""

from __future__ import annotations

import gzip
import math
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from neuroradfm.errors import InputError, itk_reason, not_a_file

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")

MAX_VOXELS = 2**30
"""Largest voxel count accepted (1.07e9, 4 GiB as float32). A clinical brain MRI has at most ~1e8 voxels
(512 x 512 x 400) and a 0.25 mm whole-head 7 T research scan ~6e8; a header claiming more is refused before
anything is allocated."""
MIN_SPACING_MM = 0.1
"""Smallest voxel size accepted along any axis: in vivo MRI reaches ~0.2 mm in plane (7 T: ~0.15 mm)."""
MAX_SPACING_MM = 20.0
"""Largest voxel size (slice spacing) accepted along any axis: clinical slices are at most ~10 mm thick, plus a
gap. N4 and the registrations misbehave far outside this range (0.01 mm crashes N4; 50 mm runs for minutes)."""
MAX_EXTENT_MM = 500.0
"""Largest field of view accepted along any axis: a head is ~250 mm; a field of view of metres is not a head."""
MAX_SHEAR_DEGREES = 0.1
"""Largest deviation from 90 degrees between two voxel axes: MRI grids are orthogonal, and SimpleITK cannot place
a sheared grid (it refuses it, or silently falls back to the NIfTI qform)."""
DEFLATE_MAX_RATIO = 1032
"""Deflate (gzip, zlib) output is at most ~1032 times its input: a header claiming more data than that from the
bytes on disk cannot be describing real data."""
GEOMETRY_TOLERANCE = 2e-3
"""Largest error accepted in a direction cosine (a unit vector's length; NIfTI: the difference between the axes
SimpleITK reads and the file's own sform/qform, also relative for voxel sizes and x 10 mm for the origin)."""

_REAL_SCALAR = {sitk.sitkUInt8: np.uint8, sitk.sitkInt8: np.int8, sitk.sitkUInt16: np.uint16,
                sitk.sitkInt16: np.int16, sitk.sitkUInt32: np.uint32, sitk.sitkInt32: np.int32,
                sitk.sitkUInt64: np.uint64, sitk.sitkInt64: np.int64, sitk.sitkFloat32: np.float32,
                sitk.sitkFloat64: np.float64}
_COMPLEX = (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64)
_CHUNK = 1 << 22


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES)


def image_stem(path: Path) -> str:
    """File name without its image suffix (``.nii.gz`` counts as one suffix)."""
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _numbers(values: Sequence[float]) -> str:
    return " x ".join(f"{float(v):.4g}" for v in values)


def _check_pixels(source: str, pixel_id: int, components: int) -> None:
    """Real scalar voxels only: complex, vector (RGB, tensors) and label-map pixel types are refused."""
    name = sitk.GetPixelIDValueAsString(pixel_id)
    if pixel_id in _COMPLEX:
        raise InputError(source, f"has complex-valued voxels ({name}); expected a real grey-level image")
    if components != 1:
        raise InputError(source, f"has {components} components per voxel; expected a scalar (grey-level) image")
    if pixel_id not in _REAL_SCALAR:
        raise InputError(source, f"has voxels of type '{name}'; expected a scalar (grey-level) image")


def _point(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


def _size(size: Sequence[int]) -> str:
    return " x ".join(str(int(v)) for v in size)


def check_voxel_count(source: str | Path, size: Sequence[int]) -> int:
    voxels = math.prod(int(v) for v in size)
    if voxels > MAX_VOXELS:
        raise InputError(source, f"claims {_size(size)} = {voxels:.3g} voxels, more than the {MAX_VOXELS:.3g} "
                                 "accepted (a brain MRI has at most ~1e8): a broken or hostile header?")
    return voxels


def _check_shape(source: str, size: Sequence[int]) -> tuple[int, int, int]:
    """The 3D size (a trailing singleton 4th dimension dropped), at most MAX_VOXELS voxels."""
    size = tuple(int(v) for v in size)
    spatial = size[:3] if len(size) == 4 and size[3] == 1 else size
    if len(spatial) != 3:
        raise InputError(source, f"is a {len(spatial)}D image of size {spatial}; expected 3D")
    if min(spatial) < 2:
        raise InputError(source, f"is a single slice (size {spatial}); expected a 3D volume")
    check_voxel_count(source, spatial)
    return spatial  # type: ignore[return-value]


def _shear(matrix: np.ndarray) -> tuple[float, int, int]:
    """Largest deviation from 90 degrees between two columns of ``matrix``, and which columns."""
    columns = matrix / np.linalg.norm(matrix, axis=0)
    worst = (0.0, 0, 1)
    for i, j in ((0, 1), (0, 2), (1, 2)):
        angle = math.degrees(math.acos(float(np.clip(columns[:, i] @ columns[:, j], -1.0, 1.0))))
        worst = max(worst, (abs(90.0 - angle), i, j))
    return worst


def _check_direction(source: str, matrix: np.ndarray, where: str = "", unit: bool = True) -> None:
    """Finite, orthogonal voxel axes (``unit``: of length 1, as direction cosines are; an affine's are voxel sizes)."""
    if not np.isfinite(matrix).all():
        raise InputError(source, f"has non-finite direction cosines{where}: {np.round(matrix, 4).tolist()}")
    lengths = np.linalg.norm(matrix, axis=0)
    if lengths.min() == 0:
        raise InputError(source, f"has a zero-length voxel axis{where}: {np.round(matrix, 4).tolist()}")
    if unit and np.abs(lengths - 1).max() > GEOMETRY_TOLERANCE:
        raise InputError(source, f"direction cosines are not unit vectors (lengths {_numbers(lengths)})")
    deviation, i, j = _shear(matrix)
    if deviation > MAX_SHEAR_DEGREES:
        raise InputError(source, f"direction cosines are not orthogonal{where}: voxel axes {'ijk'[i]} and {'ijk'[j]} "
                                 f"meet at {90 - deviation:.2f} or {90 + deviation:.2f} degrees instead of 90 (off by "
                                 f"{deviation:.2f}; at most {MAX_SHEAR_DEGREES:g} is accepted). A sheared grid cannot "
                                 "be placed correctly; resample it onto an orthogonal grid first")


def _check_geometry(source: str, size: Sequence[int], spacing: Sequence[float], origin: Sequence[float],
                    direction: Sequence[float]) -> None:
    """Finite, plausible MRI geometry: voxel size, field of view, origin, orthonormal axes (3D, any 4th dropped)."""
    dimension = len(spacing)
    spacing_3 = np.asarray(spacing[:3], dtype=float)
    origin_3 = np.asarray(origin[:3], dtype=float)
    matrix = np.asarray(direction, dtype=float).reshape(dimension, dimension)[:3, :3]
    if not np.isfinite(spacing_3).all() or (spacing_3 <= 0).any():
        raise InputError(source, f"has an invalid voxel size {_numbers(spacing_3)} mm: every axis needs a finite, "
                                 "positive spacing")
    if spacing_3.min() < MIN_SPACING_MM or spacing_3.max() > MAX_SPACING_MM:
        raise InputError(source, f"has a voxel size of {_numbers(spacing_3)} mm, outside the plausible MRI range "
                                 f"{MIN_SPACING_MM:g} to {MAX_SPACING_MM:g} mm per axis")
    extent = spacing_3 * np.asarray(size[:3], dtype=float)
    if extent.max() > MAX_EXTENT_MM:
        raise InputError(source, f"has a field of view of {_numbers(extent)} mm, implausibly large for a head MRI "
                                 f"(at most {MAX_EXTENT_MM:g} mm per axis)")
    if not np.isfinite(origin_3).all():
        raise InputError(source, f"has a non-finite origin {_point(origin_3)}")
    _check_direction(source, matrix)


def check_image(image: sitk.Image, source: str) -> sitk.Image:
    """3D, real scalar voxels, plausible geometry, finite voxels; a trailing singleton 4th dimension is dropped."""
    _check_pixels(source, image.GetPixelID(), image.GetNumberOfComponentsPerPixel())
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    size = _check_shape(source, image.GetSize())
    _check_geometry(source, size, image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    values = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).sum())
        raise InputError(source, f"contains {bad} NaN or infinite voxels")
    return image


# --- NIfTI: nibabel reads the header and the data stream that ITK would trust or silently repair ---------------

def _nifti_header(path: Path):
    """The NIfTI header (nibabel), checked against the file size and for a usable sform/qform, before ITK."""
    import nibabel as nib
    from nibabel.openers import ImageOpener

    try:
        image = nib.load(str(path))
        header = image.header
        shape = tuple(int(v) for v in header.get_data_shape())
        dtype = np.dtype(image.dataobj.dtype)  # as stored (byte order included)
        offset = int(image.dataobj.offset)  # the loaded header's own offset is reset to 0
        with ImageOpener(str(path)) as handle:  # as stored: nib.load replaces a zero pixdim with 1, as ITK does
            pixdim = np.asarray(type(header).from_fileobj(handle, check=False)["pixdim"], dtype=float)
    except Exception as error:  # nibabel raises several types for broken headers
        raise InputError(path, f"unreadable NIfTI header ({error})") from None
    voxels = check_voxel_count(path, shape)
    claimed = voxels * dtype.itemsize
    on_disk = path.stat().st_size
    what = f"{_size(shape)} voxels of {dtype.name}"
    if path.name.lower().endswith(".gz"):
        if claimed > DEFLATE_MAX_RATIO * on_disk:
            raise InputError(path, f"truncated or broken image file: the header claims {what} ({claimed} bytes), more "
                                   f"than any gzip stream of {on_disk} bytes can hold (deflate expands at most "
                                   f"{DEFLATE_MAX_RATIO}:1)")
    elif on_disk < offset + claimed:
        raise InputError(path, f"truncated image file: {on_disk} bytes of {offset + claimed} expected (the header "
                               f"claims {what})")
    pixdim = pixdim[1:1 + min(3, len(shape))]
    if not np.isfinite(pixdim).all() or (pixdim <= 0).any():
        raise InputError(path, f"has an invalid voxel size in its NIfTI header (pixdim {_numbers(pixdim)}): every "
                               "axis needs a finite, positive size")
    sform, sform_code = header.get_sform(coded=True)
    if sform_code:
        if not np.isfinite(sform).all():
            raise InputError(path, f"has a non-finite NIfTI sform {np.round(sform[:3], 4).tolist()}")
        _check_direction(str(path), sform[:3, :3], " (NIfTI sform)", unit=False)
    qform, qform_code = header.get_qform(coded=True)
    if qform_code and not np.isfinite(qform).all():
        raise InputError(path, "has a non-finite NIfTI qform (quatern_b/c/d, qoffset or pixdim)")
    return image


def _check_nifti_geometry(path: Path, image, reader: sitk.ImageFileReader) -> None:
    """What SimpleITK reads must be what the file's sform/qform says: ITK takes the voxel size from pixdim, and
    prefers a qform over an sform of another code, where nibabel and most tools follow the sform."""
    sform_code = int(image.header.get_sform(coded=True)[1])
    qform_code = int(image.header.get_qform(coded=True)[1])
    if not (sform_code or qform_code):
        return  # no stated placement: ITK and nibabel both fall back to pixdim
    own = f"sform (code {sform_code})" if sform_code else f"qform (code {qform_code})"
    dimension = reader.GetDimension()
    matrix = np.asarray(reader.GetDirection()).reshape(dimension, dimension)[:3, :3]
    to_ras = np.diag([-1.0, -1.0, 1.0])
    itk_axes = to_ras @ matrix @ np.diag(reader.GetSpacing()[:3])
    itk_origin = to_ras @ np.asarray(reader.GetOrigin()[:3])
    affine = np.asarray(image.affine, dtype=float)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if (np.abs(np.linalg.norm(itk_axes, axis=0) - spacing) > GEOMETRY_TOLERANCE * spacing).any():
        raise InputError(path, f"has an ambiguous NIfTI header: its {own} gives voxels of {_numbers(spacing)} mm but "
                               f"pixdim / SimpleITK say {_numbers(reader.GetSpacing()[:3])} mm; make them agree")
    axes_off = float(np.abs(itk_axes / spacing - affine[:3, :3] / spacing).max())
    shift = float(np.linalg.norm(itk_origin - affine[:3, 3]))
    if axes_off > GEOMETRY_TOLERANCE or shift > 10 * GEOMETRY_TOLERANCE:
        raise InputError(path, f"has an ambiguous NIfTI header: SimpleITK would place the image differently from its "
                               f"{own} (origin {_point(itk_origin)} vs {_point(affine[:3, 3])} mm RAS, "
                               f"{shift:.3g} mm apart; direction cosines differ by up to {axes_off:.3g}); make the "
                               "sform and qform agree (e.g. fslorient -copysform2qform)")


def _scan_nifti_data(path: Path, image) -> None:
    """Stream the data once (no full-size allocation): complete, and finite when stored as floating point.

    ITK zero-fills a truncated NIfTI and turns NaN/Inf voxels into 0, so neither shows after ``sitk.ReadImage``.
    """
    header = image.header
    dtype = np.dtype(image.dataobj.dtype)
    offset = int(image.dataobj.offset)
    expected = math.prod(int(v) for v in header.get_data_shape()) * dtype.itemsize
    compressed = path.name.lower().endswith(".gz")
    floating = dtype.kind == "f"
    if not compressed and not floating:
        return  # the size was checked against the header already
    got, bad = 0, 0
    chunk_size = _CHUNK - _CHUNK % dtype.itemsize
    try:
        with (gzip.open(path, "rb") if compressed else path.open("rb")) as handle:
            skipped = len(handle.read(offset))
            while skipped == offset and got < expected:
                chunk = handle.read(min(chunk_size, expected - got))
                if not chunk:
                    break
                got += len(chunk)
                if floating:
                    values = np.frombuffer(chunk, dtype, count=len(chunk) // dtype.itemsize)
                    bad += values.size - int(np.count_nonzero(np.isfinite(values)))
    except (EOFError, OSError, zlib.error) as error:
        raise InputError(path, f"truncated or corrupt gzip data ({error})") from None
    if got < expected:
        raise InputError(path, f"truncated image file: {min(skipped, offset) + got} bytes of {offset + expected} "
                               "expected")
    if bad:
        raise InputError(path, f"contains {bad} NaN or infinite voxels")


# --- NRRD (pynrrd reads its header) and MetaImage: where the data are, how they are encoded, finite geometry --

def _metaimage_header(path: Path) -> tuple[dict[str, str], int]:
    """MetaImage header fields (keys lower-case) and the header's length in bytes (it ends at ElementDataFile)."""
    with path.open("rb") as handle:
        head = handle.read(1 << 16)
    fields: dict[str, str] = {}
    length = 0
    for raw in head.splitlines(keepends=True):
        length += len(raw)
        key, separator, value = raw.decode("latin-1").strip().partition("=")
        if separator:
            fields[key.strip().lower()] = value.strip()
        if key.strip().lower() == "elementdatafile":
            break
    return fields, length


def _nrrd_header(path: Path) -> tuple[dict, int]:
    import nrrd

    try:
        with path.open("rb") as handle:
            return nrrd.read_header(handle), handle.tell()
    except (nrrd.NRRDError, ValueError, UnicodeDecodeError) as error:
        raise InputError(path, f"unreadable NRRD header ({error})") from None


def _finite_numbers(text: str) -> bool:
    try:
        return all(math.isfinite(float(v)) for v in text.replace(",", " ").split())
    except ValueError:
        return False


def _check_text_header(path: Path, reader: sitk.ImageFileReader) -> None:
    """Geometry ITK would silently replace (NaN MetaImage origins, NaN NRRD spacings) and the claimed data size."""
    if path.name.lower().endswith((".nrrd", ".nhdr")):
        header, header_length = _nrrd_header(path)
        # ITK reads NaN or "none" here as voxel size 1 and origin 0 (NRRD's "unknown"): a guess, not the image
        for key in ("spacings", "space directions", "space origin", "axis mins"):
            if key in header:
                values = np.asarray(header[key], dtype=float)
                values = values[:3] if key == "space directions" else values
                if not np.isfinite(values).all():
                    raise InputError(path, f"NRRD header field '{key}' is not finite ({values.tolist()}): the voxel "
                                           "size or position is unknown")
        kind = {"raw": "raw", "gzip": "deflate", "gz": "deflate", "ascii": "text", "txt": "text",
                "text": "text", "hex": "hex"}.get(str(header.get("encoding", "raw")).lower(), "")
        data_file = header.get("data file", header.get("datafile", ""))
        data_file = data_file if isinstance(data_file, str) else "LIST"
    else:
        fields, header_length = _metaimage_header(path)
        for key in ("offset", "origin", "position", "elementspacing", "elementsize", "transformmatrix", "rotation",
                    "orientation", "dimsize"):
            if key in fields and not _finite_numbers(fields[key]):
                raise InputError(path, f"MetaImage header field {key} = {fields[key]} is not a list of finite numbers")
        kind = "deflate" if fields.get("compresseddata", "false").lower() == "true" else "raw"
        data_file = fields.get("elementdatafile", "")
        data_file = "" if data_file.upper() == "LOCAL" else data_file
    if not kind or data_file.upper().startswith("LIST") or "%" in data_file or " " in data_file.strip():
        return  # several data files or an unusual encoding: MAX_VOXELS is the only bound
    if data_file:
        if not (path.parent / data_file).is_file():
            raise InputError(path, f"its data file {data_file} is missing")
        available = (path.parent / data_file).stat().st_size
    else:
        available = path.stat().st_size - header_length
    voxels = math.prod(reader.GetSize())
    claimed = voxels * np.dtype(_REAL_SCALAR[reader.GetPixelID()]).itemsize
    what = f"{_size(reader.GetSize())} voxels ({claimed} bytes)"
    if kind == "deflate" and claimed > DEFLATE_MAX_RATIO * available:
        raise InputError(path, f"truncated or broken image file: the header claims {what}, more than any compressed "
                               f"stream of {available} bytes can hold (deflate expands at most {DEFLATE_MAX_RATIO}:1)")
    needed = {"raw": claimed, "hex": 2 * claimed, "text": 2 * voxels - 1}.get(kind, 0)
    if available < needed:
        raise InputError(path, f"unreadable or truncated image file (the header claims {what} but only {available} "
                               "bytes of data are there)")


def _reason(path: Path, error: RuntimeError) -> str:
    """The useful line of an ITK error; MetaImage only says "No such file", so check its data file."""
    if path.name.lower().endswith(".mhd"):
        header = path.read_text(encoding="latin-1")
        data = next((line.split("=", 1)[1].strip() for line in header.splitlines()
                     if line.strip().lower().startswith("elementdatafile")), "")
        if data and data.upper() not in ("LOCAL", "LIST") and "%" not in data and not (path.parent / data).is_file():
            return f"its data file {data} is missing"
    if path.name.lower().endswith((".mha", ".mhd")):
        return "MetaImage data could not be read completely"
    return itk_reason("\n".join(line for line in str(error).splitlines() if "trouble" not in line))


def read_image(path: str | Path) -> sitk.Image:
    """Read a NIfTI, NRRD or MetaImage volume; every problem is an InputError naming the file.

    The header is checked first (pixel type, size, geometry, claimed data against the bytes on disk; for NIfTI
    also nibabel's sform/qform and a streamed check of the data), so nothing is allocated for a broken header.
    """
    path = Path(path)
    if (problem := not_a_file(path)) is not None:
        raise InputError(path, problem)
    nifti = path.name.lower().endswith((".nii", ".nii.gz"))
    nibabel_image = _nifti_header(path) if nifti else None
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise InputError(path, f"unreadable or truncated image file ({_reason(path, error)})") from None
    source = str(path)
    _check_pixels(source, reader.GetPixelID(), reader.GetNumberOfComponents())
    size = _check_shape(source, reader.GetSize())
    _check_geometry(source, size, reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())
    if nibabel_image is not None:
        _check_nifti_geometry(path, nibabel_image, reader)
        _scan_nifti_data(path, nibabel_image)
    else:
        _check_text_header(path, reader)
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise InputError(path, f"unreadable or truncated image file ({_reason(path, error)})") from None
    return check_image(image, source)


def physical_box(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned physical bounding box (min, max corner) of the image's voxel extent."""
    size = np.asarray(image.GetSize()) - 0.5
    corners = [image.TransformContinuousIndexToPhysicalPoint([c[0], c[1], c[2]])
               for c in np.array(np.meshgrid(*[[-0.5, s] for s in size], indexing="ij")).reshape(3, -1).T]
    corners = np.asarray(corners)
    return corners.min(axis=0), corners.max(axis=0)


def overlap_fraction(a: sitk.Image, b: sitk.Image) -> float:
    """Volume of the intersection of the two boxes over the smaller box's volume."""
    (a_lo, a_hi), (b_lo, b_hi) = physical_box(a), physical_box(b)
    inter = np.clip(np.minimum(a_hi, b_hi) - np.maximum(a_lo, b_lo), 0, None).prod()
    smaller = min((a_hi - a_lo).prod(), (b_hi - b_lo).prod())
    return float(inter / smaller) if smaller > 0 else 0.0
