"""Importing model bundles into the NeuroRADFM module (NeuroRADFMLib.bundles): a bundle folder or a .zip of one is
verified by the core's loader, copied or extracted into the one bundles folder under a unique name, atomically, and
registered; unsafe zips (paths leaving the folder, links, several bundles, zip bombs), tampered weights and
encoder-only bundles are refused with nothing left behind. Real bundles: the tiny one trained by the test fixture
and the shipped demo bundle."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "NeuroRADFM"))  # NeuroRADFMLib, as Slicer finds it

from neuroradfm.atomic import HOST_TAG, STAGING_NAME  # noqa: E402
from neuroradfm.demo import demo_bundle_path  # noqa: E402
from neuroradfm.errors import BundleError  # noqa: E402
from neuroradfm.models import bundle as core_bundle  # noqa: E402
from NeuroRADFMLib import bundles as lib  # noqa: E402
from NeuroRADFMLib.bundles import (  # noqa: E402
    REGISTRY_FILE,
    BundleEntry,
    BundleRegistry,
    available_bundles,
    bundle_labels,
    bundles_folder,
    import_bundle,
)


@pytest.fixture
def tiny(tiny_bundle, tmp_path):
    """A copy of the tiny trained bundle, as delivered on a USB stick."""
    return Path(shutil.copytree(tiny_bundle, tmp_path / "stick" / "tiny"))


@pytest.fixture
def settings(tmp_path):
    """(registry, bundles folder) in a fake Slicer settings folder."""
    return BundleRegistry(tmp_path / "settings"), bundles_folder(tmp_path / "settings")


def make_zip(path: Path, members: dict[str, bytes | Path], compression=zipfile.ZIP_DEFLATED) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = compression
            archive.writestr(info, data.read_bytes() if isinstance(data, Path) else data)
    return path


def bundle_members(bundle: Path, prefix: str = "") -> dict[str, bytes | Path]:
    return {prefix + name: bundle / name for name in ("card.json", "weights.safetensors")}


def contents(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def registered(registry: BundleRegistry) -> list[str]:
    return json.loads(registry.file.read_text())["bundles"] if registry.file.exists() else []


def test_the_lib_names_the_bundle_files_as_the_core_does():
    assert (lib.CARD, lib.WEIGHTS) == (core_bundle.CARD, core_bundle.WEIGHTS)
    assert lib.BUNDLE_FILES == core_bundle.BUNDLE_FILES


def test_a_folder_is_verified_copied_and_registered(tiny, settings, tmp_path):
    registry, folder = settings
    (tiny / "notes.txt").write_text("delivered by mail")
    result = import_bundle(tiny, folder, registry)
    target = folder / "tiny-test-bundle"
    assert result.copied and result.entry.path == target.resolve() and result.entry.name == "tiny-test-bundle"
    assert contents(target) == ["card.json", "weights.safetensors"]  # only what the content hash covers
    assert "notes.txt" in result.message and str(target.resolve()) in result.message
    assert (target / "weights.safetensors").read_bytes() == (tiny / "weights.safetensors").read_bytes()
    assert registered(registry) == [str(target.resolve())]
    assert registry.file == tmp_path / "settings" / REGISTRY_FILE
    assert [e.path for e in available_bundles(registry)][-1] == target.resolve()
    assert core_bundle.load_bundle(target).name == "tiny-test-bundle"
    assert contents(folder) == ["tiny-test-bundle"]  # no staging folder left
    assert contents(tiny) == ["card.json", "notes.txt", "weights.safetensors"]  # the source is untouched


def test_re_importing_the_same_bundle_is_a_no_op_that_says_so(tiny, settings, tmp_path):
    registry, folder = settings
    first = import_bundle(tiny, folder, registry)
    again = import_bundle(tiny, folder, registry)
    as_zip = import_bundle(make_zip(tmp_path / "tiny.zip", bundle_members(tiny, "tiny/")), folder, registry)
    for result in (again, as_zip):
        assert not result.copied and result.entry.path == first.entry.path
        assert "nothing was copied" in result.message and str(first.entry.path) in result.message
    assert contents(folder) == ["tiny-test-bundle"] and registered(registry) == [str(first.entry.path)]


def test_a_zip_is_extracted_into_the_bundles_folder(settings, tmp_path):
    """The demo bundle zipped as its folder (the usual way to mail one); the copy is listed once, beside the shipped
    demo bundle it is identical to."""
    registry, folder = settings
    demo = demo_bundle_path()
    archive = make_zip(tmp_path / "mail" / "demo.zip", {"demo-bundle/": b"", **bundle_members(demo, "demo-bundle/")})
    result = import_bundle(archive, folder, registry)
    target = folder / "neuroradfm-demo"
    assert result.copied and result.entry.path == target.resolve()
    assert contents(target) == ["card.json", "weights.safetensors"] and contents(folder) == ["neuroradfm-demo"]
    assert core_bundle.load_bundle(target).card["content_hash"] == json.loads((demo / "card.json").read_text())[
        "content_hash"]
    assert registered(registry) == [str(target.resolve())]
    listed = available_bundles(registry)
    assert [e.name for e in listed] == ["neuroradfm-demo"]  # the same model once: the shipped one stays the default


def test_a_zip_of_the_bundle_files_themselves_and_macos_extras(tiny, settings, tmp_path):
    registry, folder = settings
    members = {**bundle_members(tiny), "__MACOSX/._card.json": b"\0" * 50, ".DS_Store": b"\0" * 30}
    result = import_bundle(make_zip(tmp_path / "flat.zip", members), folder, registry)
    assert result.copied and contents(folder / "tiny-test-bundle") == ["card.json", "weights.safetensors"]


def test_a_folder_holding_one_bundle_folder_is_accepted_and_one_holding_two_is_refused(tiny, settings, tmp_path):
    registry, folder = settings
    assert import_bundle(tiny.parent, folder, registry).entry.path == (folder / "tiny-test-bundle").resolve()
    shutil.copytree(tiny, tiny.parent / "other")
    with pytest.raises(BundleError, match="holds 2 bundles"):
        import_bundle(tiny.parent, folder, registry)


def rehashed_copy(bundle: Path, target: Path, **changes) -> Path:
    """A valid bundle with the same weights and a changed card (hash recomputed by the core's own function)."""
    shutil.copytree(bundle, target)
    card = json.loads((target / "card.json").read_text())
    card.update(changes)
    card["content_hash"] = core_bundle.content_hash(card, target / "weights.safetensors")
    (target / "card.json").write_text(json.dumps(card, indent=1))
    return target


def test_a_different_bundle_with_the_same_name_gets_a_second_folder(tiny, settings, tmp_path):
    """Choice: never overwrite, never refuse a valid bundle: <name>-2; the selector shows the folders apart."""
    registry, folder = settings
    first = import_bundle(tiny, folder, registry)
    other = rehashed_copy(tiny, tmp_path / "other", intended_use="a second site's version")
    second = import_bundle(other, folder, registry)
    assert second.copied and second.entry.path == (folder / "tiny-test-bundle-2").resolve()
    assert "a different bundle already has the folder tiny-test-bundle" in second.message
    assert (folder / "tiny-test-bundle" / "card.json").read_bytes() == (tiny / "card.json").read_bytes()
    assert registered(registry) == [str(second.entry.path), str(first.entry.path)]
    assert import_bundle(other, folder, registry).copied is False  # found again under its second name
    listed = available_bundles(registry)[1:]
    assert bundle_labels(listed) == ["tiny-test-bundle (tiny-test-bundle-2)", "tiny-test-bundle (tiny-test-bundle)"]


def test_bundle_labels_show_only_the_names_when_they_differ():
    entries = [BundleEntry("a", Path("/x/a")), BundleEntry("b", Path("/x/b")), BundleEntry("c", Path("/y/a")),
               BundleEntry("c", Path("/z/a"))]
    assert bundle_labels(entries) == ["a", "b", "c (/y/a)", "c (/z/a)"]


def tamper(bundle: Path) -> Path:
    weights = bundle / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    return bundle


def test_tampered_weights_are_refused_with_nothing_left_behind(tiny, settings, tmp_path):
    registry, folder = settings
    tamper(tiny)
    with pytest.raises(BundleError, match="content hash does not match") as refused:
        import_bundle(tiny, folder, registry)
    assert str(tiny) in str(refused.value) and "not imported" in str(refused.value)
    archive = make_zip(tmp_path / "tampered.zip", bundle_members(tiny, "tiny/"))
    with pytest.raises(BundleError, match="content hash does not match") as refused:
        import_bundle(archive, folder, registry)
    assert str(refused.value).startswith(str(archive))
    assert contents(folder) == [] and not registry.file.exists()


def test_an_identical_name_with_a_tampered_copy_in_the_folder_is_not_taken_for_the_bundle(tiny, settings):
    registry, folder = settings
    import_bundle(tiny, folder, registry)
    tamper(folder / "tiny-test-bundle")
    result = import_bundle(tiny, folder, registry)
    assert result.copied and result.entry.path == (folder / "tiny-test-bundle-2").resolve()


def test_an_encoder_only_bundle_is_refused_before_its_weights_are_copied(tiny_bundle, settings, tmp_path):
    registry, folder = settings
    full = core_bundle.load_bundle(tiny_bundle)
    encoder_only = core_bundle.save_bundle(tmp_path / "encoder", full.encoder, None, full.preprocessing,
                                           {"name": "encoder-only"})
    for source in (encoder_only, make_zip(tmp_path / "encoder.zip", bundle_members(encoder_only, "encoder/"))):
        with pytest.raises(BundleError, match="encoder-only bundle"):
            import_bundle(source, folder, registry)
    assert contents(folder) == [] and not registry.file.exists()


@pytest.mark.parametrize("member, problem", [
    ("../evil", "points outside the bundle folder"),
    ("tiny/../../evil", "points outside the bundle folder"),
    ("/tmp/evil-absolute", "has an absolute path"),
    ("C:/evil", "has an absolute path"),
])
def test_zip_members_that_would_leave_the_folder_are_refused(tiny, settings, tmp_path, member, problem):
    registry, folder = settings
    archive = make_zip(tmp_path / "zips" / "bad.zip", {**bundle_members(tiny, "tiny/"), member: b"evil"})
    with pytest.raises(BundleError, match=problem) as refused:
        import_bundle(archive, folder, registry)
    assert str(refused.value).startswith(f"{archive}: unsafe zip") and repr(member) in str(refused.value)
    assert contents(folder) == [] and not (tmp_path / "evil").exists() and not (folder.parent / "evil").exists()
    assert not Path("/tmp/evil-absolute").exists()


def test_a_zip_with_a_symbolic_link_is_refused(tiny, settings, tmp_path):
    registry, folder = settings
    archive = make_zip(tmp_path / "link.zip", bundle_members(tiny, "tiny/"))
    link = zipfile.ZipInfo("tiny/notes.txt")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(archive, "a") as handle:
        handle.writestr(link, "/etc/passwd")
    with pytest.raises(BundleError, match="'tiny/notes.txt' is a symbolic link"):
        import_bundle(archive, folder, registry)
    assert contents(folder) == []


def test_a_zip_with_two_bundles_or_files_beside_the_bundle_is_refused(tiny, settings, tmp_path):
    registry, folder = settings
    two = make_zip(tmp_path / "two.zip", {**bundle_members(tiny, "a/"), **bundle_members(tiny, "b/")})
    with pytest.raises(BundleError, match="holds 2 bundles"):
        import_bundle(two, folder, registry)
    beside = make_zip(tmp_path / "beside.zip", {**bundle_members(tiny, "a/"), "b/weights.safetensors": b"x"})
    with pytest.raises(BundleError, match="outside its bundle folder a/: b/weights.safetensors"):
        import_bundle(beside, folder, registry)
    twice = make_zip(tmp_path / "twice.zip", {**bundle_members(tiny, "a/")})
    with zipfile.ZipFile(twice, "a") as handle, pytest.warns(UserWarning, match="Duplicate name"):
        handle.writestr("a/card.json", b"{}")
    with pytest.raises(BundleError, match="'a/card.json' is in it 2 times"):
        import_bundle(twice, folder, registry)
    assert contents(folder) == []


def test_a_zip_bomb_is_refused_before_anything_is_extracted(tiny, settings, tmp_path):
    """A highly compressible member (32 MiB of zeros in a few KiB) against a small limit for the test (the default,
    MAX_ZIP_RATIO, is 100 times the zip's size); a real bundle barely compresses and passes either limit."""
    registry, folder = settings
    padded = make_zip(tmp_path / "bomb.zip", {**bundle_members(tiny, "tiny/"), "tiny/padding.bin": bytes(32 * 2**20)})
    assert padded.stat().st_size < 2 * 2**20
    with pytest.raises(BundleError, match="refused as a possible zip bomb") as refused:
        import_bundle(padded, folder, registry, max_ratio=10)
    assert str(refused.value).startswith(str(padded))
    plain = make_zip(tmp_path / "plain.zip", bundle_members(tiny, "tiny/"))
    with pytest.raises(BundleError, match="more than 0.5 times its size"):
        import_bundle(plain, folder, registry, max_ratio=0.5)
    assert contents(folder) == []
    assert import_bundle(plain, folder, registry, max_ratio=10).copied


def test_not_a_zip_a_corrupt_zip_and_a_zip_without_a_card_are_refused(tiny, settings, tmp_path):
    registry, folder = settings
    text = tmp_path / "bundle.zip"
    text.write_text("not a zip at all")
    with pytest.raises(BundleError, match="not a zip file, or a corrupt one") as refused:
        import_bundle(text, folder, registry)
    assert str(refused.value).startswith(str(text))
    good = make_zip(tmp_path / "good.zip", bundle_members(tiny, "tiny/"), zipfile.ZIP_STORED)
    cut = tmp_path / "cut.zip"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(BundleError, match="not a zip file, or a corrupt one"):
        import_bundle(cut, folder, registry)
    flipped = bytearray(good.read_bytes())
    offset = flipped.index(b"card.json") + 9 + 40  # inside the card's stored data: the CRC does not match
    flipped[offset] ^= 0x20
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(bytes(flipped))
    with pytest.raises(BundleError, match=r"corrupt\.zip: .tiny/card.json. cannot be extracted \(Bad CRC-32"):
        import_bundle(corrupt, folder, registry)
    no_card = make_zip(tmp_path / "no-card.zip", {"tiny/weights.safetensors": tiny / "weights.safetensors"})
    with pytest.raises(BundleError, match="no card.json in the zip"):
        import_bundle(no_card, folder, registry)
    no_weights = make_zip(tmp_path / "no-weights.zip", {"tiny/card.json": tiny / "card.json"})
    with pytest.raises(BundleError, match="tiny/weights.safetensors is missing"):
        import_bundle(no_weights, folder, registry)
    with pytest.raises(BundleError, match="does not exist"):
        import_bundle(tmp_path / "nowhere.zip", folder, registry)
    assert contents(folder) == [] and not registry.file.exists()


def test_a_folder_that_is_no_bundle_is_refused(tmp_path, settings):
    registry, folder = settings
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="no card.json in it"):
        import_bundle(tmp_path / "empty", folder, registry)
    (tmp_path / "card-only").mkdir()
    shutil.copyfile(demo_bundle_path() / "card.json", tmp_path / "card-only" / "card.json")
    with pytest.raises(BundleError, match="weights.safetensors is missing"):
        import_bundle(tmp_path / "card-only", folder, registry)
    assert contents(folder) == []


def test_a_bundle_already_in_the_bundles_folder_is_registered_where_it_is(tiny, settings, tmp_path):
    registry, folder = settings
    import_bundle(tiny, folder, registry)
    fresh = BundleRegistry(tmp_path / "fresh-settings")
    result = import_bundle(folder / "tiny-test-bundle", folder, fresh)
    assert not result.copied and "already in the bundles folder" in result.message
    assert contents(folder) == ["tiny-test-bundle"] and registered(fresh) == [str(result.entry.path)]


def test_leftovers_of_a_killed_import_are_removed_and_a_training_output_stays_where_it_is(tiny, settings):
    registry, folder = settings
    dead = folder / f".import.partial-{HOST_TAG}999999999-abcd1234"  # staging of an import whose process is gone
    dead.mkdir(parents=True)
    (dead / "weights.safetensors").write_bytes(b"half")
    assert STAGING_NAME.match(dead.name)
    import_bundle(tiny, folder, registry)
    assert contents(folder) == ["tiny-test-bundle"]
    in_place = registry.register(tiny)  # what NeuroRADFMTrain does with its output: referenced, not copied
    assert in_place.path == tiny.resolve() and registered(registry)[0] == str(tiny.resolve())
    assert [e.path for e in available_bundles(registry)][-1] == tiny.resolve()  # one listing for the same model


def test_a_bundles_folder_that_cannot_be_written_is_named(tiny, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("a file where the settings folder would be")
    with pytest.raises(BundleError, match="cannot write here") as refused:
        import_bundle(tiny, bundles_folder(blocked), None)
    assert str(bundles_folder(blocked)) in str(refused.value)


def test_the_bundles_folder_is_inside_the_settings_folder(tmp_path):
    assert bundles_folder(tmp_path) == tmp_path / "NeuroRADFM" / "bundles"
    assert os.path.commonpath([bundles_folder(tmp_path), tmp_path]) == str(tmp_path)
