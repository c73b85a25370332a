"""Volume nodes <-> image files, through MRML storage nodes (they work in Slicer and with PyPI slicer-core).

Storage nodes are used on their own, never added to the scene, so writing inputs leaves the scene as it was.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import slicer
import vtk

GRID_TOLERANCE_MM = 1e-4
"""How far a file's grid may differ from the reference's (NRRD stores decimal text) before it is an error."""


class SceneIOError(RuntimeError):
    """A node or file that cannot be used; the message names it and the problem."""


def matrix_to_array(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(i, j) for j in range(4)] for i in range(4)])


def array_to_matrix(array) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for i in range(4):
        for j in range(4):
            matrix.SetElement(i, j, float(array[i][j]))
    return matrix


def ijk_to_ras(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return matrix_to_array(matrix)


def dimensions(node) -> tuple[int, int, int]:
    image = node.GetImageData()
    return (0, 0, 0) if image is None else tuple(image.GetDimensions())


def write_volume(node, path: str | Path) -> Path:
    """Write a scalar volume node to ``path`` (.nrrd, .nii.gz, ...) with its IJK-to-RAS geometry."""
    path = Path(path)
    name = node.GetName() if node is not None else "(none)"
    if node is None or not node.IsA("vtkMRMLScalarVolumeNode"):
        raise SceneIOError(f"volume {name!r}: not a scalar volume node")
    image = node.GetImageData()
    if image is None or min(image.GetDimensions()) < 2:
        raise SceneIOError(f"volume {name!r}: no 3D image data (dimensions {dimensions(node)})")
    if image.GetNumberOfScalarComponents() != 1:
        raise SceneIOError(f"volume {name!r}: {image.GetNumberOfScalarComponents()} components per voxel, "
                           "a single-component (scalar) image is needed")
    if node.GetParentTransformNode() is not None:
        raise SceneIOError(f"volume {name!r}: is under a transform; harden or remove the transform first")
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(False)
    if not storage.WriteData(node) or not path.is_file():
        raise SceneIOError(f"volume {name!r}: could not be written to {path}")
    return path


def read_volume(path: str | Path, node) -> None:
    """Read an image file into ``node`` (a scalar or label map volume node, in a scene or not)."""
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if not Path(path).is_file() or not storage.ReadData(node) or node.GetImageData() is None:
        raise SceneIOError(f"{path}: could not be read as a volume")


def check_same_grid(node, reference, source: str, tolerance: float = GRID_TOLERANCE_MM) -> None:
    """Raise unless ``node`` lies on ``reference``'s grid (same dimensions, IJK-to-RAS within ``tolerance``)."""
    if dimensions(node) != dimensions(reference):
        raise SceneIOError(f"{source}: dimensions {dimensions(node)} differ from the reference volume "
                           f"{reference.GetName()!r} {dimensions(reference)}")
    difference = np.abs(ijk_to_ras(node) - ijk_to_ras(reference)).max()
    if difference > tolerance:
        raise SceneIOError(f"{source}: grid differs from the reference volume {reference.GetName()!r} by "
                           f"{difference:.3g} mm (IJK-to-RAS)")


def adopt_geometry(node, reference, source: str) -> None:
    """Check ``node`` is on the reference grid, then give it the reference's exact geometry.

    Spacing, origin and axis directions are copied one by one (a volume node stores them apart, so
    setting a composed matrix could differ from the reference in the last bit). The direction setter
    ignores changes below its tolerance, so the directions are cleared first to make the copy exact.
    """
    check_same_grid(node, reference, source)
    directions = np.zeros((3, 3))
    node.SetIJKToRASDirections(directions)
    reference.GetIJKToRASDirections(directions)
    node.SetIJKToRASDirections(directions)
    node.SetSpacing(reference.GetSpacing())
    node.SetOrigin(reference.GetOrigin())
