"""Model bundles the NeuroRADFM module offers: the shipped demo bundle and bundles registered by training.

The registry is a small JSON list (``bundles.json``) in a folder: the user's Slicer settings folder in
the application (the widget passes it), any folder in tests and scripts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

REGISTRY_FILE = "NeuroRADFM-bundles.json"


@dataclass(frozen=True)
class BundleEntry:
    name: str
    path: Path
    description: str = ""


def bundle_entry(path: str | Path) -> BundleEntry:
    """Name and description from a bundle's card.json; an error names the folder when it is not a bundle
    that can predict (an encoder-only bundle is refused, so that NeuroRADFM never lists one)."""
    path = Path(path)
    card_path = path / "card.json"
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a NeuroRADFM model bundle (card.json: {error})") from error
    if card.get("format") != "neuroradfm-bundle":
        raise ValueError(f"{path}: card.json is not a NeuroRADFM bundle card")
    if "heads" in card and card["heads"] is None:  # what `neuroradfm pretrain` writes: it cannot predict
        raise ValueError(f"{path}: an encoder-only bundle (no heads); complete it with neuroradfm fit-heads")
    return BundleEntry(str(card.get("name", path.name)), path.resolve(), str(card.get("intended_use", "")))


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
    """The demo bundle first (the default), then the registered ones."""
    bundles = [b for b in [demo_bundle()] if b is not None]
    if registry is not None:
        bundles += [b for b in registry.entries() if b.path not in {d.path for d in bundles}]
    return bundles
