"""Model bundles the NeuroRADFM module offers: the shipped demo bundle, bundles registered by training, and bundles
imported from a folder or a ``.zip`` (a bundle delivered on a USB stick or by mail).

The registry is a small JSON list (``NeuroRADFM-bundles.json``) in a folder: the user's Slicer settings folder in
the application (the widget passes it), any folder in tests and scripts. Imported bundles are copied (a folder) or
extracted (a zip) into ONE bundles folder, ``<settings folder>/NeuroRADFM/bundles/<bundle name>``, after the core's
own loader has verified them (content hash, card, weights); bundles registered from a training output stay where
training wrote them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

REGISTRY_FILE = "NeuroRADFM-bundles.json"
CARD = "card.json"
WEIGHTS = "weights.safetensors"
BUNDLE_FILES = (CARD, WEIGHTS)
"""What an import copies: the two files the content hash covers (anything else in a bundle folder is left out)."""
ENCODER_ONLY = "an encoder-only bundle (no heads); complete it with neuroradfm fit-heads"

MAX_ZIP_RATIO = 100.0
"""A zip whose members together expand to more than this many times the zip's own size is refused as a possible zip
bomb. A real bundle barely compresses (its float32 weights are nearly incompressible; ratio about 1.1)."""
FREE_SPACE_MARGIN = 64 * 2**20
"""Disk space an import leaves free beyond the bundle itself."""
_IGNORED_ZIP_MEMBERS = ("__MACOSX", ".DS_Store")
"""What macOS's Finder adds to a zip it makes (resource forks, folder settings): skipped, never extracted."""
_CHUNK = 1 << 20
_MAX_COPIES = 1000


@dataclass(frozen=True)
class BundleEntry:
    name: str
    path: Path
    description: str = ""
    content_hash: str = ""
    """What the card claims (checked when the bundle is imported or loaded, not when it is listed)."""


@dataclass(frozen=True)
class ImportResult:
    entry: BundleEntry
    copied: bool
    """False when nothing was copied: an identical bundle was already in the bundles folder."""
    message: str
    """One line for the status bar: what was done and where the bundle lives."""


def bundle_entry(path: str | Path) -> BundleEntry:
    """Name and description from a bundle's card.json; an error names the folder when it is not a bundle
    that can predict (an encoder-only bundle is refused, so that NeuroRADFM never lists one)."""
    path = Path(path)
    card_path = path / CARD
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a NeuroRADFM model bundle (card.json: {error})") from error
    if not isinstance(card, dict) or card.get("format") != "neuroradfm-bundle":
        raise ValueError(f"{path}: card.json is not a NeuroRADFM bundle card")
    if "heads" in card and card["heads"] is None:  # what `neuroradfm pretrain` writes: it cannot predict
        raise ValueError(f"{path}: {ENCODER_ONLY}")
    return BundleEntry(str(card.get("name", path.name)), path.resolve(), str(card.get("intended_use", "")),
                       str(card.get("content_hash", "")))


def demo_bundle() -> BundleEntry | None:
    from neuroradfm.demo import demo_bundle_path
    from neuroradfm.errors import BundleError

    try:
        return bundle_entry(demo_bundle_path())
    except (BundleError, ValueError):
        return None


class BundleRegistry:
    def __init__(self, folder: str | Path) -> None:
        self.file = Path(folder) / REGISTRY_FILE

    def _read(self) -> list[str]:
        try:
            data = json.loads(self.file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        return [str(p) for p in data.get("bundles", [])] if isinstance(data, dict) else []

    def _write(self, paths: list[str]) -> None:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.file.with_suffix(".tmp")
        temporary.write_text(json.dumps({"bundles": paths}, indent=1) + "\n", encoding="utf-8")
        temporary.replace(self.file)

    def register(self, path: str | Path) -> BundleEntry:
        entry = bundle_entry(path)
        paths = [p for p in self._read() if Path(p).resolve() != entry.path]
        self._write([str(entry.path), *paths])
        return entry

    def unregister(self, path: str | Path) -> None:
        resolved = Path(path).resolve()
        self._write([p for p in self._read() if Path(p).resolve() != resolved])

    def entries(self) -> list[BundleEntry]:
        """Registered bundles that still exist, newest first (a moved or deleted bundle is skipped)."""
        found = []
        for path in self._read():
            try:
                found.append(bundle_entry(path))
            except ValueError:
                continue
        return found


def available_bundles(registry: BundleRegistry | None = None) -> list[BundleEntry]:
    """The demo bundle first (the default), then the registered ones; a bundle with the same content as one listed
    before it (an imported copy of the demo bundle, say) is listed once."""
    bundles = [b for b in [demo_bundle()] if b is not None]
    if registry is not None:
        for entry in registry.entries():
            if all(entry.path != b.path and (not entry.content_hash or entry.content_hash != b.content_hash)
                   for b in bundles):
                bundles.append(entry)
    return bundles


def bundle_labels(entries: list[BundleEntry]) -> list[str]:
    """What the bundle selector shows: the card's name; two different bundles with the same name also show their
    folder (``tiny (tiny-2)``)."""
    counts = Counter(entry.name for entry in entries)
    folders = Counter(entry.path.name for entry in entries)
    return [entry.name if counts[entry.name] == 1
            else f"{entry.name} ({entry.path.name if folders[entry.path.name] == 1 else entry.path})"
            for entry in entries]


def bundles_folder(settings_folder: str | Path) -> Path:
    """The one folder imported bundles are copied into: ``<settings folder>/NeuroRADFM/bundles``."""
    return Path(settings_folder) / "NeuroRADFM" / "bundles"


def import_bundle(source: str | Path, folder: str | Path, registry: BundleRegistry | None = None,
                  max_ratio: float = MAX_ZIP_RATIO) -> ImportResult:
    """Copy (a folder) or extract (a ``.zip``) one model bundle into ``folder``, verify it with the core's loader
    (content hash, card, weights; an encoder-only bundle is refused) and register it.

    ``source``: a bundle folder, a folder holding exactly one bundle folder, or a zip of either. The bundle goes to
    ``folder/<its name>``; when a different bundle already has that name it goes to ``<name>-2`` (``-3``, ...), and
    when an identical bundle (same verified content hash) is already there nothing is copied. The files are written
    under a staging name inside ``folder`` and renamed only once verified: a refused or failed import leaves nothing
    behind. Every error is a ``neuroradfm.errors.BundleError`` naming the file and the problem. A bundle folder
    already inside ``folder`` is verified and registered where it is. ``max_ratio``: see ``MAX_ZIP_RATIO``.
    """
    from neuroradfm.atomic import HOST_TAG, clean_stale
    from neuroradfm.errors import BundleError

    source = Path(source)
    folder = Path(folder)
    if not source.exists():
        raise BundleError(source, "does not exist (give a model bundle folder or a .zip of one)")
    if source.is_dir():
        root = _bundle_folder(source)
        if root.resolve().parent == folder.resolve():  # already in the bundles folder: nothing to copy
            _verify(root, lambda path: path)
            entry = registry.register(root) if registry is not None else bundle_entry(root)
            return ImportResult(entry, False, f"{entry.name} is already in the bundles folder ({entry.path}); "
                                              "registered, nothing copied.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        clean_stale(folder)  # staging folders of imports that were killed
        staging = Path(tempfile.mkdtemp(prefix=f".import.partial-{HOST_TAG}{os.getpid()}-", dir=folder))
    except OSError as error:
        raise BundleError(folder, f"cannot write here ({error.strerror or error}); nothing was imported") from None
    try:
        if source.is_dir():
            left_out = _copy_folder(root, staging)
            origin = _origin_in_folder(root, staging)
        else:
            left_out, origin = _extract_zip(source, staging, max_ratio)
        card = _verify(staging, origin)
        target, identical = _place(folder, card)
        if identical:
            shutil.rmtree(staging, ignore_errors=True)
        else:
            try:
                os.rename(staging, target)
            except OSError as error:
                raise BundleError(target, f"the verified bundle could not be put in place ({error.strerror or error}); "
                                          "nothing was imported") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    entry = registry.register(target) if registry is not None else bundle_entry(target)
    if identical:
        return ImportResult(entry, False, f"{entry.name} was imported before: the identical bundle is in "
                                          f"{entry.path}; nothing was copied.")
    notes = []
    if target.name != _folder_name(card):
        notes.append(f"a different bundle already has the folder {_folder_name(card)}")
    if left_out:
        notes.append(f"left out (not part of a bundle): {_listing(left_out)}")
    return ImportResult(entry, True, f"Imported {entry.name} into {entry.path}" +
                        (f" ({'; '.join(notes)})." if notes else "."))


def _listing(names: list[str], most: int = 5) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def _bundle_folder(source: Path) -> Path:
    """The bundle folder: ``source`` itself when it holds a card.json, else its one subfolder that does."""
    from neuroradfm.errors import BundleError

    if os.path.lexists(source / CARD):
        return source
    try:
        found = sorted(child for child in source.iterdir() if child.is_dir() and (child / CARD).is_file())
    except OSError as error:
        raise BundleError(source, f"cannot be read ({error.strerror or error})") from None
    if not found:
        raise BundleError(source, f"not a model bundle: no {CARD} in it (nor in a folder inside it)")
    if len(found) > 1:
        raise BundleError(source, f"holds {len(found)} bundles ({_listing([f.name for f in found])}); import one "
                                  "bundle folder at a time")
    return found[0]


def _origin_in_folder(root: Path, staging: Path):
    """Maps a path in the staging folder to the file it was copied from (for messages)."""
    def origin(path: str | Path) -> Path:
        try:
            return root / Path(path).relative_to(staging)
        except ValueError:
            return Path(path)
    return origin


def _copy_folder(root: Path, staging: Path) -> list[str]:
    """Copy the bundle files (the card first, so that a bundle that cannot be used is refused before its weights
    are copied); returns the names left out."""
    from neuroradfm.errors import BundleError, not_a_file

    for name in BUNDLE_FILES:
        problem = not_a_file(root / name)
        if problem:
            raise BundleError(root, f"not a model bundle: {name} " + ("is missing" if problem == "file not found"
                                                                       else problem))
        try:
            shutil.copyfile(root / name, staging / name)
        except OSError as error:
            written = error.filename is not None and Path(error.filename).parent == staging
            raise BundleError(root / name, f"could not be {'copied' if written else 'read'} "
                                           f"({error.strerror or error}); nothing was imported") from None
        if name == CARD:
            _check_card(staging, root)
    try:
        return sorted(child.name for child in root.iterdir() if child.name not in BUNDLE_FILES)
    except OSError:
        return []


def _check_card(staging: Path, shown: Path | str) -> None:
    """The card alone (format, version; an encoder-only bundle is refused), before any weights are written."""
    from neuroradfm.errors import BundleError
    from neuroradfm.models.bundle import read_card

    try:
        card = read_card(staging)
    except BundleError as error:
        raise BundleError(shown, f"{error.problem}; not imported") from None
    if card.get("heads", {}) is None:
        raise BundleError(shown, f"{ENCODER_ONLY}; not imported")


def _zip_member_problem(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    parts = re.split(r"[\\/]", name)
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return f"{name!r} has an absolute path"
    if ".." in parts:
        return f"{name!r} points outside the bundle folder (..)"
    if stat.S_ISLNK(info.external_attr >> 16):
        return f"{name!r} is a symbolic link"
    if info.flag_bits & 0x1:
        return f"{name!r} is encrypted"
    return None


def _extract_zip(source: Path, staging: Path, max_ratio: float):
    """Check every member of the zip, then extract the one bundle's files into ``staging`` (the card first);
    returns (names left out, a mapping of staging paths to what to name in messages)."""
    from neuroradfm.errors import BundleError

    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as error:
        raise BundleError(source, f"not a zip file, or a corrupt one ({error}); give a bundle folder or a .zip of "
                                  "one") from None
    with archive:
        members = archive.infolist()
        problems = [p for p in map(_zip_member_problem, members) if p]
        names = Counter(re.sub(r"[\\/]+", "/", m.filename).rstrip("/") for m in members)
        problems += [f"{name!r} is in it {count} times" for name, count in names.items() if count > 1]
        if problems:
            raise BundleError(source, f"unsafe zip, not imported: {_listing(problems)}")
        total = sum(m.file_size for m in members)
        size = source.stat().st_size
        if total > max_ratio * max(size, 1):
            raise BundleError(source, f"expands to {total:,} bytes from {size:,} (more than {max_ratio:g} times its "
                                      "size): refused as a possible zip bomb; not imported")
        files = {}
        for member in members:
            parts = tuple(p for p in re.split(r"[\\/]", member.filename) if p not in ("", "."))
            if member.is_dir() or not parts or parts[0] == _IGNORED_ZIP_MEMBERS[0] \
                    or parts[-1] == _IGNORED_ZIP_MEMBERS[1]:
                continue
            files[parts] = member
        cards = sorted(parts[:-1] for parts in files if parts[-1] == CARD)
        if not cards:
            raise BundleError(source, f"no {CARD} in the zip: not a model bundle; not imported")
        if len(cards) > 1:
            raise BundleError(source, f"holds {len(cards)} bundles ({_listing(['/'.join(c) or '.' for c in cards])}); "
                                      "a zip must hold one bundle; not imported")
        root = cards[0]
        outside = sorted("/".join(parts) for parts in files if parts[:len(root)] != root)
        if outside:
            raise BundleError(source, f"holds files outside its bundle folder {'/'.join(root)}/: {_listing(outside)}; "
                                      "a zip must hold one bundle; not imported")
        inside = {parts[len(root):]: member for parts, member in files.items()}
        left_out = sorted("/".join(parts) for parts in inside if parts not in {(n,) for n in BUNDLE_FILES})
        if (WEIGHTS,) not in inside:
            raise BundleError(source, f"{'/'.join((*root, WEIGHTS))} is missing from the zip; not imported")
        _check_space(staging, sum(inside[(name,)].file_size for name in BUNDLE_FILES), source)
        for name in BUNDLE_FILES:
            _extract_member(archive, inside[(name,)], staging / name, source)
            if name == CARD:
                _check_card(staging, f"{source} ({inside[(name,)].filename})")

    def origin(path: str | Path) -> str:
        try:
            relative = Path(path).relative_to(staging)
        except ValueError:
            return str(path)
        return str(source) if relative == Path(".") else f"{source} ({'/'.join((*root, *relative.parts))})"
    return left_out, origin


def _check_space(staging: Path, needed: int, source: Path) -> None:
    from neuroradfm.errors import BundleError

    try:
        free = shutil.disk_usage(staging).free
    except OSError:
        return
    if free < needed + FREE_SPACE_MARGIN:
        raise BundleError(source, f"needs {needed / 2**20:.0f} MiB in {staging.parent}, which has "
                                  f"{free / 2**20:.0f} MiB free; not imported")


def _extract_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, target: Path, source: Path) -> None:
    """One member, never more bytes than it declares (the zip bomb check relies on the declared sizes)."""
    from neuroradfm.errors import BundleError

    written = 0
    try:
        with archive.open(member) as data, open(target, "wb") as out:
            for chunk in iter(lambda: data.read(_CHUNK), b""):
                written += len(chunk)
                if written > member.file_size:
                    raise BundleError(source, f"{member.filename!r} expands beyond the size it declares; not imported")
                out.write(chunk)
    except (zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError, ValueError) as error:
        if isinstance(error, BundleError):
            raise
        raise BundleError(source, f"{member.filename!r} cannot be extracted ({error}); not imported") from None
    except OSError as error:
        raise BundleError(target.parent.parent, f"cannot write the bundle here ({error.strerror or error}); "
                                                "nothing was imported") from None


def _verify(path: Path, origin) -> dict:
    """The core's loader on the bundle (format, version, content hash, card schema, tensor shapes, finite weights,
    heads that can predict); its card. Errors name ``origin(path)`` (what the user gave), not the staging folder."""
    from neuroradfm.errors import BundleError
    from neuroradfm.models.bundle import load_bundle

    try:
        bundle = load_bundle(path)
        bundle.require_heads()
    except BundleError as error:
        raise BundleError(origin(error.path), f"{error.problem}; not imported") from None
    card = bundle.card
    del bundle  # the encoder's weights: not needed any more
    return card


def _folder_name(card: dict) -> str:
    from neuroradfm.errors import InputError
    from neuroradfm.output_paths import safe_folder_name

    try:
        return safe_folder_name(str(card.get("name") or "bundle"))
    except InputError:
        return "bundle"


def _place(folder: Path, card: dict) -> tuple[Path, bool]:
    """Where the bundle goes: ``<name>``, or ``<name>-2``, ... past different bundles; (path, True) when an identical
    bundle is already there."""
    from neuroradfm.errors import BundleError

    base = _folder_name(card)
    for number in range(1, _MAX_COPIES + 1):
        candidate = folder / (base if number == 1 else f"{base}-{number}")
        if not os.path.lexists(candidate):
            return candidate, False
        if _holds_bundle(candidate, str(card["content_hash"])):
            return candidate, True
    raise BundleError(folder, f"already holds {_MAX_COPIES} different bundles named {base}; nothing was imported")


def _holds_bundle(path: Path, expected: str) -> bool:
    """Whether ``path`` is an intact bundle with this content hash (its files checked, not just its card)."""
    from neuroradfm.errors import BundleError
    from neuroradfm.models.bundle import content_hash, read_card

    if path.is_symlink() or not path.is_dir():
        return False
    try:
        card = read_card(path)
        return card.get("content_hash") == expected and content_hash(card, path / WEIGHTS) == expected
    except (BundleError, OSError):
        return False
