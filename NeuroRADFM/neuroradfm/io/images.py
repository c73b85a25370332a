"""Reading one image file and checking it is a usable 3D MRI volume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from neuroradfm.errors import InputError

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES)


def image_stem(path: Path) -> str:
    """File name without its image suffix (``.nii.gz`` counts as one suffix)."""
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def check_image(image: sitk.Image, source: str) -> sitk.Image:
    """3D, single component, finite voxels; a trailing singleton 4th dimension is dropped."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(source, f"has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                                 "expected a scalar (grey-level) image")
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() != 3:
        raise InputError(source, f"is a {image.GetDimension()}D image of size {image.GetSize()}; expected 3D")
    if min(image.GetSize()) < 2:
        raise InputError(source, f"is a single slice (size {image.GetSize()}); expected a 3D volume")
    values = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).sum())
        raise InputError(source, f"contains {bad} NaN or infinite voxels")
    return image


def _check_nifti_complete(path: Path) -> None:
    """ITK zero-fills a truncated NIfTI instead of failing: compare the data length with the header's."""
    import gzip
    import zlib

    import nibabel as nib

    try:
        header = nib.load(str(path)).header
    except Exception as error:  # nibabel raises several types for broken headers
        raise InputError(path, f"unreadable NIfTI header ({error})") from None
    expected = int(header.get_data_offset()) + int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize
    if path.name.lower().endswith(".gz"):
        available = 0
        try:
            with gzip.open(path, "rb") as handle:
                while chunk := handle.read(1 << 22):
                    available += len(chunk)
        except (EOFError, OSError, zlib.error) as error:
            raise InputError(path, f"truncated or corrupt gzip data ({error})") from None
    else:
        available = path.stat().st_size
    if available < expected:
        raise InputError(path, f"truncated image file: {available} bytes of {expected} expected")


def _reason(path: Path, error: RuntimeError) -> str:
    """The useful line of an ITK error; MetaImage only says "No such file", so check its data file."""
    if path.name.lower().endswith(".mhd"):
        header = path.read_text(errors="replace")
        data = next((line.split("=", 1)[1].strip() for line in header.splitlines()
                     if line.strip().lower().startswith("elementdatafile")), "")
        if data and data.upper() not in ("LOCAL", "LIST") and "%" not in data and not (path.parent / data).is_file():
            return f"its data file {data} is missing"
    if path.name.lower().endswith((".mha", ".mhd")):
        return "MetaImage data could not be read completely"
    lines = [line.strip() for line in str(error).splitlines() if line.strip() and "trouble" not in line]
    return lines[-1] if lines else "unknown reason"


def read_image(path: str | Path) -> sitk.Image:
    """Read a NIfTI, NRRD or MetaImage volume; every problem is an InputError naming the file."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if not path.is_file():
        raise InputError(path, "is not a file")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputError(path, f"unreadable or truncated image file ({_reason(path, error)})") from None
    if path.name.lower().endswith((".nii", ".nii.gz")):
        _check_nifti_complete(path)
    return check_image(image, str(path))


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
