"""docs/tutorial.ipynb: stored clean, and executed end to end on a tiny case so that it cannot rot.

The run uses nbclient with the ipykernel of this very environment (the kernel spec "python3" from this
environment's share/jupyter, none of the user's Jupyter or IPython configuration). The parameters are injected as
papermill does, in a cell after the one tagged "parameters": a BraTS-style phantom at 3 mm (no registration, no
brain extraction) and OUT under pytest's temporary folder. One more cell, appended here only, prints what the
notebook computed as JSON, so the checks read the kernel's own results, not a copy of its code.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from neuroradfm.markers import MARKER_KEYS

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "tutorial.ipynb"
TINY = {"SEED": 5, "NATIVE": False, "SPACING_MM": 3.0, "DEVICE": "cpu", "DRO_STEPS": 60}
"""The cheap run's parameters (OUT is added per run); HEAD, DRO_ETA_Q keep the notebook's values."""
CELL_TIMEOUT_S = 240
KERNEL_START_TIMEOUT_S = 120

PROBE = """
import json
import sys

def grid(image):
    return [list(image.GetSize()), list(image.GetSpacing()), list(image.GetOrigin()), list(image.GetDirection())]

print(json.dumps({
    "prefix": sys.prefix,
    "out": str(out),
    "manifest": str(manifest),
    "folder": str(folder),
    "head": HEAD,
    "markers": [{"key": m.key, "probability": m.probability, "threshold": m.threshold} for m in prediction.markers],
    "table_rows": len(markers),
    "heat_grid": grid(heat),
    "t1ce_grid": grid(case.t1ce),
    "heat_range": [float(heat_array.min()), float(heat_array.max())],
    "peak_kji": [int(v) for v in peak_kji],
    "sites": sites,
    "per_batch": per_batch,
    "q": {mode: dro.q.tolist() for mode, dro in dros.items()},
    "share": {mode: rows.tolist() for mode, rows in share.items()},
    "last_group_losses": stats.group_losses.tolist(),
    "worst": worst,
}))
"""


def _code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def _parameters_index(nb: nbformat.NotebookNode) -> int:
    tagged = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"one cell tagged 'parameters' expected, found {len(tagged)}"
    return tagged[0]


def _isolated_environment(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """The kernel inherits this process's environment: no user-level Jupyter or IPython configuration, connection
    files under ``home``, matplotlib's inline backend."""
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
        folder = home / name.lower()
        folder.mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(name, str(folder))
    for name in ("JUPYTER_PATH", "JUPYTER_CONFIG_PATH", "JUPYTER_PREFER_ENV_PATH", "PYTHONSTARTUP", "MPLBACKEND"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # debugpy's warning about frozen modules


def _stream_text(cell: nbformat.NotebookNode) -> str:
    return "".join(output.get("text", "") for output in cell.outputs if output.output_type == "stream")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """The notebook executed once on the tiny case: {"nb": executed notebook, "probe": JSON, "seconds": float}."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    out = tmp_path_factory.mktemp("tutorial") / "out"
    parameters = {**TINY, "OUT": str(out)}
    injected = nbformat.v4.new_code_cell("\n".join(f"{name} = {value!r}" for name, value in parameters.items()),
                                         metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(_parameters_index(nb) + 1, injected)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE.strip()))
    specs = KernelSpecManager(kernel_dirs=[str(Path(sys.prefix) / "share" / "jupyter" / "kernels")])
    with pytest.MonkeyPatch.context() as monkeypatch:
        _isolated_environment(monkeypatch, tmp_path_factory.mktemp("jupyter-home"))
        client = NotebookClient(nb, km=KernelManager(kernel_name="python3", kernel_spec_manager=specs),
                                timeout=CELL_TIMEOUT_S, startup_timeout=KERNEL_START_TIMEOUT_S,
                                resources={"metadata": {"path": str(NOTEBOOK.parent)}})  # cwd: docs/, as in Jupyter
        start = time.perf_counter()
        try:
            client.execute()  # a cell that raises fails here (CellExecutionError names it)
        finally:
            seconds = time.perf_counter() - start
            if client.km.has_kernel:  # a kernel manager passed in is the caller's to shut down
                client.km.shutdown_kernel(now=True)
    print(f"\ntutorial notebook executed in {seconds:.1f} s")
    return {"nb": nb, "probe": json.loads(_stream_text(nb.cells[-1])), "seconds": seconds, "out": out}


def test_stored_notebook_is_clean_and_has_a_parameters_cell():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert (nb.nbformat, nb.metadata.kernelspec.name) == (4, "python3")
    for cell in _code_cells(nb):
        assert cell.outputs == [] and cell.execution_count is None, f"cell {cell.id} is stored with outputs"
        assert set(cell.metadata) <= {"tags"}, f"cell {cell.id} carries run metadata {sorted(cell.metadata)}"
    index = _parameters_index(nb)
    assert nb.cells[index] is _code_cells(nb)[0], "the parameters come first"
    assigned = set(re.findall(r"^([A-Z_]+) = ", nb.cells[index].source, flags=re.MULTILINE))
    assert {*TINY, "OUT", "HEAD"} <= assigned, "the test injects parameters the notebook does not have"
    assert NOTEBOOK.stat().st_size < 40_000


def test_notebook_runs_in_this_environments_kernel_without_errors(run):
    assert run["probe"]["prefix"] == sys.prefix
    errors = [output for cell in _code_cells(run["nb"]) for output in cell.outputs if output.output_type == "error"]
    assert errors == []
    figures = [output for cell in _code_cells(run["nb"]) for output in cell.outputs
               if "image/png" in output.get("data", {})]
    assert len(figures) == 4  # the sequences, the model's input, the heat map, Group-DRO's weights


def test_notebook_writes_its_outputs_under_out(run):
    out, probe = run["out"], run["probe"]
    assert Path(probe["out"]) == out
    folder = Path(probe["folder"])
    assert folder.parent.parent == out and Path(probe["manifest"]).parent.parent == out
    for name in ("predictions.json", "predictions.csv", "overview.png", f"heatmap_{probe['head']}.nrrd",
                 "contours.seg.nrrd"):
        assert (folder / name).is_file(), name
    written = json.loads((folder / "predictions.json").read_text(encoding="utf-8"))
    assert [m["probability"] for m in written["markers"]] == pytest.approx(
        [m["probability"] for m in probe["markers"]], abs=1e-6)


def test_marker_table_has_the_ten_markers_with_probabilities(run):
    probe = run["probe"]
    assert [m["key"] for m in probe["markers"]] == list(MARKER_KEYS) and len(MARKER_KEYS) == 10
    assert probe["table_rows"] == 10
    for m in probe["markers"]:
        assert 0.0 <= m["probability"] <= 1.0 and 0.0 <= m["threshold"] <= 1.0
    predict_cell = next(cell for cell in run["nb"].cells if cell.get("id") == "predict")
    assert re.search(r"\d+ of 10 calls agree with the planted truth", _stream_text(predict_cell))


def test_heat_map_lies_on_the_t1ce_grid(run):
    probe = run["probe"]
    heat, t1ce = probe["heat_grid"], probe["t1ce_grid"]
    assert heat[0] == t1ce[0]
    for got, expected in zip(heat[1:], t1ce[1:]):
        assert got == pytest.approx(expected, abs=1e-4)
    low, high = probe["heat_range"]
    assert 0.0 <= low <= high <= 1.0 and high > 0.0  # fractions of the map's peak, read back from the NRRD
    assert all(0 <= index < size for index, size in zip(probe["peak_kji"], reversed(t1ce[0])))


def test_group_dro_modes_weight_the_sites_as_documented(run):
    probe = run["probe"]
    share, q = {mode: np.array(rows) for mode, rows in probe["share"].items()}, probe["q"]
    batch = np.array(probe["per_batch"]) / sum(probe["per_batch"])
    assert np.allclose(share["erm"], batch)  # ERM: each site by its samples, every step
    worst_last = int(np.argmax(probe["last_group_losses"]))
    one_hot = np.eye(len(probe["sites"]))[worst_last]
    assert q["worst-group"] == one_hot.tolist() and np.allclose(share["worst-group"][-1], one_hot)
    minority = probe["sites"].index("site-C")
    assert probe["worst"].count(minority) > 0.9 * len(probe["worst"])
    exponentiated = share["exponentiated"][:, minority]
    assert exponentiated[0] < exponentiated[len(exponentiated) // 2] < exponentiated[-1]  # moves toward it
    assert q["exponentiated"][minority] == max(q["exponentiated"]) and q["exponentiated"][minority] > 0.5
    assert sum(q["exponentiated"]) == pytest.approx(1.0)
