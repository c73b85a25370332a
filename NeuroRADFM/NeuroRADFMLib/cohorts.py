"""The NeuroRADFMTrain module's cohort selector: a manifest CSV, or a downloaded dataset folder + its layout, checked
before any training.

A dataset folder is imported (``neuroradfm cohort import``) into ``<output folder>/<layout>-manifest.csv`` (with its
``.import.json`` sidecar beside it; nothing is written anywhere else), then the manifest is checked (``neuroradfm
cohort check``): files, geometry per site, label prevalence per site, subjects, survival. The check's report becomes
rows of a table (plain dicts; ``check_table`` puts them in a table node) and a status: clean, warnings (training
allowed, the warnings shown) or errors (training refused: ``CohortCheck.require_trainable``, which
``NeuroRADFMLib.training`` calls before any process starts).

The widget runs import + check out of process (``CohortCheckJob``: ``PythonSlicer -m NeuroRADFMLib.cohorts``, JSON
progress lines, cancel), polled like training; the console and the tests may call ``import_and_check`` /
``check_cohort`` / ``run_check`` in process. Layouts come from the core (``neuroradfm.cohort.importer.LAYOUTS``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import signal
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from NeuroRADFMLib.process import CoreProcess, ProcessJob, remove_new
from NeuroRADFMLib.training import TrainingError, resolve_manifest

MANIFEST_SOURCE = "manifest"
"""The selector's choice for a manifest CSV (or a folder holding manifest.csv); every other choice is a layout."""
MANIFEST_LABEL = "manifest CSV (or a folder holding manifest.csv)"
MANIFEST_TIP = "A manifest CSV (case_id, site, t1, t1ce, t2, flair, clinical columns) or a folder holding manifest.csv"
DATASET_TIP = ("The {layout} dataset folder as downloaded; Import and check writes its manifest to "
               "<output folder>/{name}")
CLINICAL_TIP = "Optional: the table the {layout} import reads ({table}): markers, survival, where it has them"
NO_CLINICAL_TIP = "the {layout} layout reads no separate clinical table"
MANIFEST_CLINICAL_TIP = "a manifest carries its own clinical columns"
CHECK_TABLE_NAME = "NeuroRADFM cohort check"
CHECK_COLUMNS = ("section", "site", "item", "value")
STATUSES = ("clean", "warnings", "errors")
"""``CheckReport.exit_status()`` 0 / 1 / 2."""
MAX_MESSAGE_ROWS = 500
"""Errors (and warnings) listed in the table; the rest are counted in one more row."""
RESULT_KEY = "cohort_check"
"""The subprocess's result: one stdout line ``{"cohort_check": {...}}`` after its progress lines."""
CHECK_RUNNING = "the cohort is being checked: wait for it, or cancel it"


class CohortError(TrainingError):
    """A cohort that cannot be imported, checked or trained on; the message names the folder or file and why."""


def layouts() -> list[str]:
    """The dataset layouts the core can import, as it lists them now."""
    from neuroradfm.cohort.importer import LAYOUTS

    return list(LAYOUTS)


def clinical_tables() -> dict[str, str]:
    """layout -> the file name of the clinical table it maps."""
    from neuroradfm.cohort.importer import CLINICAL_TABLES

    return dict(CLINICAL_TABLES)


def source_choices() -> list[tuple[str, str]]:
    """(data, label) of the selector's items: a manifest, then one dataset folder per layout."""
    return [(MANIFEST_SOURCE, MANIFEST_LABEL), *((layout, f"dataset folder: {layout}") for layout in layouts())]


def takes_clinical(layout: str) -> bool:
    """Whether the selector's clinical table field applies: a layout with a clinical table mapping."""
    return layout in clinical_tables()


def imported_manifest_path(output_folder: str | Path, layout: str) -> Path:
    """Where Import and check writes a layout's manifest: directly inside the output folder."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", layout).strip("._") or "cohort"
    return Path(output_folder) / f"{name}-manifest.csv"


def check_button_text(layout: str) -> str:
    return "Check cohort" if layout == MANIFEST_SOURCE else "Import and check"


def source_tip(layout: str) -> str:
    """The cohort path field's tooltip for the selector's choice."""
    if layout == MANIFEST_SOURCE:
        return MANIFEST_TIP
    return DATASET_TIP.format(layout=layout, name=imported_manifest_path(".", layout).name)


def cohort_states(layout: str, job: str | None = None) -> dict[str, tuple[bool, str]]:
    """(enabled, tooltip) of the clinical table field and the check button. ``job``: what runs now (None, "check",
    "train" or "evaluate"); while the check runs its button is the Cancel button."""
    tables = clinical_tables()
    if layout == MANIFEST_SOURCE:
        clinical = (False, MANIFEST_CLINICAL_TIP)
    elif takes_clinical(layout):
        clinical = (job is None, CLINICAL_TIP.format(layout=layout, table=tables[layout]))
    else:
        clinical = (False, NO_CLINICAL_TIP.format(layout=layout))
    if job == "check":
        check = (True, "cancel the cohort check")
    elif job is not None:
        check = (False, f"wait for the {'training' if job == 'train' else 'evaluation'} to end")
    elif layout == MANIFEST_SOURCE:
        check = (True, "check the manifest: files, geometry and labels per site, subjects, survival (before training)")
    else:
        check = (True, f"import the {layout} folder into {imported_manifest_path('<output folder>', layout)}, "
                       "then check it: files, geometry and labels per site, subjects, survival")
    return {"clinical": clinical, "check": check}


@dataclass(frozen=True)
class CohortSource:
    """What the selector names: a manifest (``layout`` MANIFEST_SOURCE) or a dataset folder of a layout, imported
    with its optional clinical table into the output folder."""

    path: Path
    layout: str = MANIFEST_SOURCE
    clinical: Path | None = None
    output: Path | None = None

    @property
    def imports(self) -> bool:
        return self.layout != MANIFEST_SOURCE

    def manifest(self, imported: bool = False) -> Path:
        """The manifest training and evaluation read. For a dataset folder: the imported one (``imported``: it must
        be there already, else a CohortError says to import it)."""
        if not self.imports:
            return resolve_manifest(self.path)
        manifest = imported_manifest_path(self.output, self.layout)
        if imported and not manifest.is_file():
            raise CohortError(f"{manifest}: not imported yet; Import and check the {self.layout} folder {self.path} "
                              "first")
        return manifest


def cohort_source(path: str | Path | None, layout: str = MANIFEST_SOURCE, clinical: str | Path | None = None,
                  output: str | Path | None = None) -> CohortSource:
    """A CohortSource from the selector's fields (empty strings: not given); a CohortError says what is missing."""

    def given(value: str | Path | None) -> Path | None:
        return Path(str(value).strip()).expanduser() if value is not None and str(value).strip() else None

    path, clinical_path, output_path = given(path), given(clinical), given(output)
    layout = layout or MANIFEST_SOURCE
    if layout != MANIFEST_SOURCE and layout not in layouts():
        raise CohortError(f"unknown dataset layout {layout!r}; known: {', '.join(layouts())}")
    if path is None:
        raise CohortError("choose a cohort: " + (MANIFEST_LABEL if layout == MANIFEST_SOURCE
                                                 else f"the {layout} dataset folder"))
    if layout == MANIFEST_SOURCE:
        return CohortSource(path)
    if output_path is None:
        raise CohortError(f"choose an output folder: the {layout} manifest is written there")
    if clinical_path is not None and not takes_clinical(layout):
        raise CohortError(f"{clinical_path}: {NO_CLINICAL_TIP.format(layout=layout)}")
    return CohortSource(path, layout, clinical_path, output_path)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_mtime_ns, status.st_size


def check_status(report) -> str:
    """clean, warnings or errors (the check's exit status 0 / 1 / 2)."""
    return STATUSES[report.exit_status()]


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


@dataclass
class CohortCheck:
    """A checked manifest: its report, and what it was when checked (a changed manifest must be checked again)."""

    source: CohortSource
    manifest: Path
    report: Any
    """neuroradfm.cohort.check.CheckReport"""
    stamp: tuple[int, int] | None

    @property
    def status(self) -> str:
        return check_status(self.report)

    def current(self, source: CohortSource | None = None) -> bool:
        """True while the manifest is unchanged since the check (and ``source`` is the one checked)."""
        return (source is None or source == self.source) and _stamp(self.manifest) == self.stamp

    def summary(self) -> str:
        """The status line: the status, what it means for training, the first problem."""
        report = self.report
        counts = f"{_plural(report.cases, 'case')} in {self.manifest}"
        if self.status == "clean":
            return f"Cohort check: clean. {counts}; geometry and labels per site in the table."
        if self.status == "warnings":
            return (f"Cohort check: {_plural(len(report.warnings), 'warning')} (training allowed; all in the "
                    f"table). {counts}. First: {report.warnings[0]}")
        return (f"Cohort check: {_plural(len(report.errors), 'error')}; training is refused until fixed "
                f"(all in the table). {counts}. First: {report.errors[0]}")

    def require_trainable(self, manifest: str | Path | None = None) -> None:
        """A CohortError when training may not start on ``manifest`` (default: the checked one): another manifest
        than the one checked, a manifest changed since, or a check with errors. Warnings pass."""
        if manifest is not None and Path(manifest).resolve() != Path(self.manifest).resolve():
            raise CohortError(f"the cohort check is of {self.manifest}, not of {manifest}: check this cohort first")
        if not self.current():
            raise CohortError(f"{self.manifest} changed since it was checked: check it again before training")
        errors = self.report.errors
        if errors:
            shown = "; ".join(errors[:5]) + (f"; and {len(errors) - 5} more" if len(errors) > 5 else "")
            raise CohortError(f"training refused: the cohort check of {self.manifest} found "
                              f"{_plural(len(errors), 'error')}: {shown}. Fix the cohort and check it again.")


def check_rows(report, max_messages: int = MAX_MESSAGE_ROWS) -> list[dict[str, Any]]:
    """The check as table rows (CHECK_COLUMNS): the status, geometry per site, label prevalence per site
    (positive / negative / missing; the numbers are also in the row as ints), then the errors and the warnings."""
    from neuroradfm.markers import MARKER_KEYS, marker

    rows: list[dict[str, Any]] = [{
        "section": "status", "site": "all", "item": check_status(report), "cases": report.cases,
        "value": f"{_plural(report.cases, 'case')}, {_plural(len(report.errors), 'error')}, "
                 f"{_plural(len(report.warnings), 'warning')}"}]
    for site, shapes in sorted(report.geometry.items()):
        for shape, count in Counter(shapes).most_common():
            rows.append({"section": "geometry", "site": site, "item": shape, "cases": count,
                         "value": _plural(count, "case")})
    for key, per_site in report.labels.items():
        known = marker(key) if key in MARKER_KEYS else None
        for site, (positive, negative, missing) in sorted(per_site.items()):
            value = (f"{positive} positive ({known.positive}), {negative} negative ({known.negative}), "
                     f"{missing} missing" if known else f"{positive} positive, {negative} negative, {missing} missing")
            rows.append({"section": "labels", "site": site, "item": known.label if known else key, "marker": key,
                         "positive": positive, "negative": negative, "missing": missing, "value": value})
    for section, messages in (("error", report.errors), ("warning", report.warnings)):
        rows += [{"section": section, "site": "", "item": "", "value": m} for m in messages[:max_messages]]
        if len(messages) > max_messages:
            rows.append({"section": section, "site": "", "item": "",
                         "value": f"... and {len(messages) - max_messages} more (neuroradfm cohort check lists all)"})
    return rows


def check_table(scene, report, name: str = CHECK_TABLE_NAME):
    """A table node ``name`` with the check's rows (one per scene, replaced by the next check), locked."""
    from NeuroRADFMLib.results import fill_table

    table = scene.GetFirstNodeByName(name)
    if table is None or not table.IsA("vtkMRMLTableNode"):
        table = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table.SetLocked(False)
    fill_table(table, check_rows(report), CHECK_COLUMNS, set())
    table.SetLocked(True)  # the check's result, not a form
    return table


def _null_progress(stage: str, fraction: float, message: str = "") -> None:
    """Progress nobody watches."""


def check_cohort(manifest: str | Path, progress=_null_progress, start: float = 0.0):
    """``neuroradfm cohort check`` on a manifest (or a folder holding manifest.csv), in process: its CheckReport.
    ``start``: where the check begins on the progress scale (after an import: half way)."""
    from neuroradfm.cohort.check import check_manifest
    from neuroradfm.errors import NeuroRADFMError

    manifest = resolve_manifest(manifest)
    progress("check", start, f"checking {manifest.name}: files, geometry, labels, subjects, survival")
    options = {}
    if "progress" in inspect.signature(check_manifest).parameters:  # a core whose check reports its progress
        from neuroradfm.progress import sub_progress

        options["progress"] = sub_progress(progress, start, 1.0)
    try:
        report = check_manifest(manifest, **options)
    except NeuroRADFMError as error:
        raise CohortError(f"the manifest cannot be checked: {error}") from None
    progress("done", 1.0, f"{_plural(report.cases, 'case')}: {check_status(report)}")
    return report


def import_and_check(root: str | Path, layout: str, clinical: str | Path | None, output_folder: str | Path,
                     progress=_null_progress) -> tuple[Path, Any]:
    """Import the ``layout`` dataset folder ``root`` (with its optional clinical table) into
    ``<output_folder>/<layout>-manifest.csv`` and check it: (manifest path, CheckReport). Nothing is written outside
    the output folder; when the import fails (no case of the layout under ``root``, a table value it cannot map)
    nothing is written at all and a CohortError says why."""
    from neuroradfm.cohort.importer import import_cohort
    from neuroradfm.errors import NeuroRADFMError

    source = cohort_source(root, layout, clinical, output_folder)
    if not source.imports:
        raise CohortError(f"choose the dataset layout of {root} (one of {', '.join(layouts())})")
    out = Path(source.output).resolve()
    manifest = imported_manifest_path(out, layout)
    if manifest.parent != out:  # the name comes from the core's layout list: keep it a plain file name
        raise CohortError(f"{manifest}: the manifest must be written directly inside the output folder {out}")
    progress("import", 0.0, f"finding {layout} cases under {source.path}")
    try:
        written = Path(import_cohort(layout, source.path, manifest, source.clinical))
    except NeuroRADFMError as error:
        raise CohortError(f"{layout} import: {error}") from None
    return written, check_cohort(written, progress, start=0.5)


def run_check(source: CohortSource, progress=_null_progress) -> CohortCheck:
    """What Import and check / Check cohort does, in process (the console, the tests)."""
    if source.imports:
        manifest, report = import_and_check(source.path, source.layout, source.clinical, source.output, progress)
        return CohortCheck(source, manifest, report, _stamp(manifest))
    manifest = source.manifest()
    stamp = _stamp(manifest)
    return CohortCheck(source, manifest, check_cohort(manifest, progress), stamp)


def report_to_json(report) -> dict[str, Any]:
    """A CheckReport as JSON-able dicts and lists (every field, so that new fields travel too)."""
    data = {f.name: getattr(report, f.name) for f in fields(report)}
    data["geometry"] = {site: dict(shapes) for site, shapes in report.geometry.items()}
    data["labels"] = {key: {site: list(counts) for site, counts in per_site.items()}
                      for key, per_site in report.labels.items()}
    return data


def report_from_json(data: dict[str, Any]):
    from neuroradfm.cohort.check import CheckReport

    names = {f.name for f in fields(CheckReport)}
    values = {k: v for k, v in data.items() if k in names}
    values["geometry"] = {site: Counter(shapes) for site, shapes in data.get("geometry", {}).items()}
    values["labels"] = {key: {site: tuple(counts) for site, counts in per_site.items()}
                        for key, per_site in data.get("labels", {}).items()}
    return CheckReport(**values)


def job_arguments(source: CohortSource) -> list[str]:
    """The command line of ``python -m NeuroRADFMLib.cohorts`` for ``source``."""
    if not source.imports:
        return ["--manifest", str(source.manifest())]
    arguments = ["--root", str(source.path), "--layout", source.layout, "--out-folder", str(source.output)]
    return arguments + (["--clinical", str(source.clinical)] if source.clinical is not None else [])


class CohortCheckJob(ProcessJob):
    """Import (for a dataset folder) and check out of process, polled like a TrainingJob (start / poll / finished /
    cancel / wait); ``result()`` is the CohortCheck."""

    what = "cohort check"

    def __init__(self, source: CohortSource, python: str | None = None) -> None:
        self.source = source
        self.arguments = job_arguments(source)  # a manifest that is not there fails here, before any process
        self.python = python
        self.process: CoreProcess | None = None
        self.cancelled = False
        self._staging_before: set[Path] = set()

    def start(self) -> CohortCheckJob:
        self._staging_before = set(self._staging())
        self.process = CoreProcess(self.arguments, python=self.python, module=__name__).start()
        return self

    def _staging(self) -> list[Path]:
        """Half-written manifest and sidecar of the import (neuroradfm.atomic staging names)."""
        if not self.source.imports:
            return []
        from neuroradfm.cohort.importer import sidecar_path

        manifest = imported_manifest_path(self.source.output, self.source.layout)
        if not manifest.parent.is_dir():
            return []
        return [p for name in (manifest.name, sidecar_path(manifest).name)
                for p in manifest.parent.glob(f".{name}.partial-*")]

    def cancel(self, then: Callable[[], None] | None = None) -> None:
        def clean() -> None:
            remove_new(self._staging(), self._staging_before)
            if then is not None:
                then()

        remove_new(self._staging(), self._staging_before)  # now, and again once the process tree is gone
        super().cancel(then=clean)

    def cancel_summary(self) -> str:
        what = "import and check" if self.source.imports else "check"
        return f"Cohort {what} cancelled; no new manifest was written."

    def result(self) -> CohortCheck:
        if self.cancelled:
            raise CohortError("the cohort check was cancelled")
        if not self.finished:
            raise CohortError("the cohort check is still running")
        if self.returncode != 0:
            message = self.process.error_message().removeprefix("error: ")
            raise CohortError(message or f"the cohort check failed (exit status {self.returncode})")
        for line in reversed(self.process.output_lines):
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, dict) and isinstance(data.get(RESULT_KEY), dict):
                found = data[RESULT_KEY]
                stamp = found.get("stamp")
                return CohortCheck(self.source, Path(found["manifest"]), report_from_json(found["report"]),
                                   None if stamp is None else tuple(stamp))
        raise CohortError("the cohort check ended without a result")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m NeuroRADFMLib.cohorts``: JSON progress lines, then one result line; exit 2 with ``error: ...``
    on stderr when the cohort cannot be imported or checked."""
    from neuroradfm.errors import NeuroRADFMError
    from neuroradfm.progress import JsonLinesProgress

    parser = argparse.ArgumentParser(prog="python -m NeuroRADFMLib.cohorts", description=__doc__.split("\n")[0])
    parser.add_argument("--manifest", help="check this manifest (no import)")
    parser.add_argument("--root", help="the dataset folder as downloaded")
    parser.add_argument("--layout")
    parser.add_argument("--clinical")
    parser.add_argument("--out-folder", help="the imported manifest goes directly in here")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # cancel: half-written files go
    try:
        source = (cohort_source(args.manifest) if args.manifest
                  else cohort_source(args.root, args.layout or "", args.clinical, args.out_folder))
        check = run_check(source, JsonLinesProgress())
    except (TrainingError, NeuroRADFMError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({RESULT_KEY: {"manifest": str(check.manifest), "stamp": check.stamp,
                                   "report": report_to_json(check.report)}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
