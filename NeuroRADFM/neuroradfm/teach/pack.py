"""The teaching pack on disk: ``pack.json`` and the checks every reader runs (the index page, Slicer, the CLI).

A pack is copied by hand (USB sticks, shared drives), so a reader meets packs that were copied in part, edited, or
written by another version. ``read_pack`` refuses those with one message that says what is wrong and what to do,
before anything is loaded. Torch-free: the Slicer module reads packs in its own process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from neuroradfm import SEQUENCES
from neuroradfm.errors import InputError

PACK_FILE = "pack.json"
PACK_FORMAT = "neuroradfm-teaching-pack"
PACK_VERSION = 1
"""Raised whenever a reader could misread an older pack; readers refuse any other version."""
CASE_CHECK_FILE = "case.js"
"""In every case folder: ``neuroradfmPackCase(number, version)``, which the index page loads as a script to tell a
missing or foreign case folder from a complete one (a page opened from file:// can load scripts but not read
files)."""


@dataclass(frozen=True)
class PackCase:
    """One exercise: where its files are (relative to the pack) and its known answers."""

    number: int
    case_id: str
    site: str
    grade: int
    traits: str
    """"clear" or "subtle": how plainly the planted imaging traits show."""
    acquisition: str
    """"clean" or "artifacts": the quality of the site's images."""
    sequences: dict[str, str]
    tumour: str
    results: str
    student_sheet: str
    viewer: str
    answers: str
    truth: dict[str, Any]
    model: dict[str, Any]

    @property
    def folder(self) -> str:
        return str(PurePosixPath(self.viewer).parent)

    @property
    def difficulty(self) -> str:
        return grade_text(self.grade, self.traits, self.acquisition)


@dataclass(frozen=True)
class Pack:
    folder: Path
    card: dict[str, Any]
    cases: list[PackCase]

    def path(self, relative: str) -> Path:
        return self.folder / relative

    def case(self, number: int) -> PackCase:
        for case in self.cases:
            if case.number == number:
                return case
        raise InputError(self.folder, f"the pack has no case {number} (it has {', '.join(self.numbers())})")

    def numbers(self) -> list[str]:
        return [str(case.number) for case in self.cases]


def grade_text(grade: int, traits: str, acquisition: str) -> str:
    images = "clean images" if acquisition == "clean" else "images with the site's artifacts"
    return f"grade {grade}: {traits} traits, {images}"


def case_files(case: PackCase) -> list[str]:
    """Every file a complete case has in the pack (relative paths)."""
    return [*case.sequences.values(), case.tumour, f"{case.results}/predictions.json", case.student_sheet,
            case.viewer, case.answers, f"{case.folder}/{CASE_CHECK_FILE}"]


def case_check_script(number: int) -> str:
    return f"neuroradfmPackCase({int(number)}, {PACK_VERSION});\n"


def _relative(folder: Path, value: Any, what: str) -> str:
    """A path from pack.json: relative, inside the pack (a hostile or edited pack.json cannot point elsewhere)."""
    if not isinstance(value, str) or not value:
        raise InputError(folder / PACK_FILE, f"{what} is not a file name ({value!r})")
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts or "\\" in value or ":" in value:
        raise InputError(folder / PACK_FILE, f"{what} ({value}) lies outside the pack: packs name their files "
                                             "relative to their own folder")
    return value


def _case(folder: Path, entry: Any, position: int) -> PackCase:
    where = f"case {position + 1} in {PACK_FILE}"
    if not isinstance(entry, dict):
        raise InputError(folder / PACK_FILE, f"{where} is not an object")
    try:
        sequences = entry["sequences"]
        if not isinstance(sequences, dict) or not sequences or set(sequences) - set(SEQUENCES):
            raise InputError(folder / PACK_FILE, f"{where}: sequences must name some of {', '.join(SEQUENCES)}")
        return PackCase(
            number=int(entry["number"]), case_id=str(entry["case_id"]), site=str(entry["site"]),
            grade=int(entry["grade"]), traits=str(entry["traits"]), acquisition=str(entry["acquisition"]),
            sequences={k: _relative(folder, v, f"{where}: {k}") for k, v in sequences.items()},
            tumour=_relative(folder, entry["tumour"], f"{where}: tumour"),
            results=_relative(folder, entry["results"], f"{where}: results"),
            student_sheet=_relative(folder, entry["student_sheet"], f"{where}: student_sheet"),
            viewer=_relative(folder, entry["viewer"], f"{where}: viewer"),
            answers=_relative(folder, entry["answers"], f"{where}: answers"),
            truth=dict(entry["truth"]), model=dict(entry["model"]))
    except KeyError as missing:
        raise InputError(folder / PACK_FILE, f"{where} lacks {missing}") from None
    except (TypeError, ValueError) as error:
        if isinstance(error, InputError):
            raise
        raise InputError(folder / PACK_FILE, f"{where} holds a value of the wrong kind ({error})") from None


def read_pack(folder: str | Path) -> Pack:
    """The pack in ``folder``, checked: its format and version, and that every file it lists is there."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "no such folder: choose the folder that `neuroradfm teach --out` wrote")
    card_file = folder / PACK_FILE
    if not card_file.is_file():
        raise InputError(folder, f"not a teaching pack: it has no {PACK_FILE} (a pack copied in part, or another "
                                 "folder); make one with `neuroradfm teach --out FOLDER`")
    try:
        card = json.loads(card_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(card_file, f"cannot be read ({error})") from None
    except ValueError as error:
        raise InputError(card_file, f"is not valid JSON ({error}): the pack was damaged or edited; rebuild it "
                                    "with `neuroradfm teach`") from None
    if not isinstance(card, dict) or card.get("format") != PACK_FORMAT:
        raise InputError(card_file, f"is not a NeuroRAD-FM teaching pack (format {card.get('format')!r} where "
                                    f"{PACK_FORMAT!r} was expected)" if isinstance(card, dict) else
                         "is not a NeuroRAD-FM teaching pack")
    version = card.get("pack_version")
    if version != PACK_VERSION:
        written = card.get("neuroradfm_version", "an unknown version")
        raise InputError(card_file, f"the pack has format version {version!r} (written by neuroradfm {written}); "
                                    f"this neuroradfm reads version {PACK_VERSION}: rebuild the pack with this "
                                    "version's `neuroradfm teach`")
    entries = card.get("cases")
    if not isinstance(entries, list) or not entries:
        raise InputError(card_file, "lists no cases")
    cases = [_case(folder, entry, position) for position, entry in enumerate(entries)]
    numbers = [case.number for case in cases]
    if len(set(numbers)) != len(numbers):
        raise InputError(card_file, "lists a case number twice")
    missing = [name for case in cases for name in case_files(case) if not (folder / name).is_file()]
    if missing:
        raise InputError(folder, f"the pack is incomplete: {len(missing)} of its files are missing "
                                 f"({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}); copy the whole "
                                 "folder again or rebuild it with `neuroradfm teach`")
    return Pack(folder, card, cases)
