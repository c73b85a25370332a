"""The phantom cohort: determinism, files, planted biology and traits, site effects, native geometry."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from neuroradfm import SEQUENCES
from neuroradfm.cli import main
from neuroradfm.io import read_manifest
from neuroradfm.markers import MARKER_KEYS
from neuroradfm.phantom import PhantomOptions, generate_case, generate_cohort
from neuroradfm.phantom.biology import sample_patient, subtype_prevalence
from neuroradfm.phantom.cohort import INTENSITY_SCALE, is_native
from neuroradfm.phantom.render import COMPARTMENTS, anatomy, working_grid
from neuroradfm.phantom.sites import contrast_factors, make_site, site_name
from neuroradfm.template import load_brain_mask, load_template


def test_same_seed_same_case_other_seed_other_case():
    a_images, a_seg, a_row = generate_case(1, seed=5, n_sites=3, spacing=4.0)
    b_images, b_seg, b_row = generate_case(1, seed=5, n_sites=3, spacing=4.0)
    c_images, _, c_row = generate_case(1, seed=6, n_sites=3, spacing=4.0)
    assert a_row == b_row
    for s in SEQUENCES:
        assert np.array_equal(sitk.GetArrayViewFromImage(a_images[s]), sitk.GetArrayViewFromImage(b_images[s]))
    assert np.array_equal(sitk.GetArrayViewFromImage(a_seg), sitk.GetArrayViewFromImage(b_seg))
    other = sitk.GetArrayViewFromImage(c_images["t1ce"])
    assert not np.array_equal(sitk.GetArrayViewFromImage(a_images["t1ce"]), other)
    assert a_row != c_row


def test_cohort_files_tables_and_manifest(phantom_cohort):
    out = phantom_cohort.parent
    entries = read_manifest(phantom_cohort, check_files=True)
    assert [e.case_id for e in entries] == [f"BraTS-PHN-{i:05d}-000" for i in range(16)]
    assert {e.site for e in entries} == {"site-A", "site-B"}
    assert sorted(p.name for p in (out / entries[0].case_id).iterdir()) == sorted(
        f"{entries[0].case_id}-{s}.nii.gz" for s in ("t1n", "t1c", "t2w", "t2f", "seg"))
    with open(out / "clinical.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 16 and set(MARKER_KEYS) <= set(rows[0]) and {"os_days", "os_event", "age"} <= set(rows[0])
    settings = json.loads((out / "phantom.json").read_text())
    assert settings["seed"] == 3 and len(settings["site_profiles"]) == 2
    assert not [p for p in out.rglob(".*")]  # no temporary files left


def test_cohort_is_reproducible_file_for_file(tmp_path):
    first = generate_cohort(tmp_path / "a", n=2, sites=2, seed=9, spacing=4.0)
    second = generate_cohort(tmp_path / "b", n=2, sites=2, seed=9, spacing=4.0)
    for entry_a, entry_b in zip(read_manifest(first), read_manifest(second)):
        for key in SEQUENCES:
            a = sitk.GetArrayFromImage(sitk.ReadImage(str(entry_a.paths[key])))
            b = sitk.GetArrayFromImage(sitk.ReadImage(str(entry_b.paths[key])))
            assert a.dtype == np.int16 and np.array_equal(a, b)
    assert (tmp_path / "a" / "clinical.csv").read_text() == (tmp_path / "b" / "clinical.csv").read_text()


def test_biology_site_prevalence_and_marker_rules():
    rng = np.random.default_rng(0)
    by_site = {0: [], 2: []}
    for site in by_site:
        by_site[site] = [sample_patient(rng, site, 3)[0] for _ in range(600)]
    idh_rate = {s: np.mean([r["idh1"] for r in rows]) for s, rows in by_site.items()}
    assert idh_rate[2] - idh_rate[0] > 0.4  # the last site is IDH-mutant-rich
    rows = by_site[0] + by_site[2]
    assert all(r["codel_1p19q"] <= r["idh1"] for r in rows)  # codeletion only with IDH mutation
    gbm = [r for r in rows if r["subtype"] == "glioblastoma"]
    astro = [r for r in rows if r["subtype"] == "astrocytoma"]
    assert np.mean([r["atrx"] for r in astro]) > 0.6 > 0.2 > np.mean([r["atrx"] for r in gbm])
    assert np.mean([r["egfr"] for r in gbm]) > 0.3 > np.mean([r["egfr"] for r in astro])
    days = np.array([r["os_days"] for r in rows])
    events = np.array([r["os_event"] for r in rows])
    assert (days > 0).all() and 0.3 < events.mean() < 0.95
    idh_mut_median = np.median(days[[r["idh1"] == 1 for r in rows]])
    assert idh_mut_median > np.median(days[[r["idh1"] == 0 for r in rows]])  # better survival
    assert np.allclose(subtype_prevalence(1, 3).sum(), 1.0)


def _mean(image: sitk.Image, mask: np.ndarray) -> float:
    return float(sitk.GetArrayViewFromImage(image)[mask].mean())


def test_planted_traits_are_visible_in_the_images():
    images, seg, row = generate_case(0, seed=2, n_sites=1, spacing=2.0)
    labels = sitk.GetArrayFromImage(seg)
    assert set(np.unique(labels)) <= {0, 1, 2, 3} and (labels > 0).sum() > 100
    template = sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(load_brain_mask(), sitk.sitkFloat32), seg,
                                                    sitk.Transform(), sitk.sitkLinear)) > 0.5
    brain = sitk.GetArrayFromImage(images["t1"]) > 0  # skull-stripped: zero exactly outside the case's brain
    assert 0.7 < brain.sum() / template.sum() < 1.4 and (brain != template).mean() > 0.005  # its own brain
    assert brain[labels > 0].mean() > 0.99  # the tumour lies inside the brain
    edema, core = labels == 2, labels == 1
    normal = brain & (labels == 0)
    # edema is bright on FLAIR and T2 relative to normal tissue
    assert _mean(images["flair"], edema) > 1.2 * _mean(images["flair"], normal)
    assert _mean(images["t2"], core) > _mean(images["t2"], normal)
    # the enhancing rim is bright on T1ce and not on T1
    rim = labels == 3
    if rim.sum() > 20:
        ratio_t1ce = _mean(images["t1ce"], rim) / _mean(images["t1ce"], normal)
        ratio_t1 = _mean(images["t1"], rim) / _mean(images["t1"], normal)
        assert ratio_t1ce > ratio_t1
    # skull-stripped BraTS-style: every sequence zero outside the same brain
    for sequence in SEQUENCES:
        assert np.array_equal(sitk.GetArrayViewFromImage(images[sequence]) > 0, brain)


def test_atrx_lowers_flair_relative_to_t2_inside_the_tumour():
    ratios = {0: [], 1: []}
    for index in range(40):
        images, seg, row = generate_case(index, seed=4, n_sites=2, spacing=4.0)
        core = sitk.GetArrayFromImage(seg) == 1
        if core.sum() < 5:
            continue
        ratios[row["atrx"]].append(_mean(images["flair"], core) / _mean(images["t2"], core))
        if len(ratios[0]) >= 4 and len(ratios[1]) >= 4:
            break
    assert np.median(ratios[1]) < np.median(ratios[0])


def test_native_case_is_oblique_anisotropic_with_skull_and_seg_on_t1ce_grid(native_case_dir):
    from neuroradfm.io import load_case

    case = load_case(native_case_dir)
    t1ce = case.t1ce
    assert len(set(np.round(t1ce.GetSpacing(), 3))) > 1
    assert not np.allclose(np.abs(np.asarray(t1ce.GetDirection()).reshape(3, 3)), np.eye(3), atol=1e-3)
    assert case.flair.GetSpacing()[2] > t1ce.GetSpacing()[2]  # thicker FLAIR slices: its own grid
    assert case.seg.GetSize() == t1ce.GetSize() and case.seg.GetDirection() == t1ce.GetDirection()
    assert (sitk.GetArrayViewFromImage(t1ce) > 0).mean() > 0.5  # noisy background, not skull-stripped


def test_sites_and_arguments():
    assert [site_name(i) for i in (0, 1, 25, 26)] == ["site-A", "site-B", "site-Z", "site-AA"]
    assert make_site(3) == make_site(3) and make_site(0) != make_site(1)
    with pytest.raises(ValueError, match="n >= 1"):
        generate_cohort("unused", n=0)
    with pytest.raises(ValueError, match="spacing must be positive"):
        generate_case(0, 0, spacing=0)


def test_mixed_cohort_has_native_and_brats_style_cases(tmp_path):
    manifest = generate_cohort(tmp_path / "mixed", n=8, sites=2, seed=5, spacing=4.0, native_fraction=0.5)
    entries = read_manifest(manifest)
    kinds = [entry.clinical["acquisition"] for entry in entries]
    assert kinds == ["native" if is_native(i, 5, 0.5) else "brats-style" for i in range(8)]
    assert set(kinds) == {"native", "brats-style"}
    for entry, kind in zip(entries, kinds):
        t1ce = sitk.ReadImage(str(entry.paths["t1ce"]))
        on_template_axes = np.allclose(t1ce.GetDirection(), load_template("t1").GetDirection())
        assert on_template_axes == (kind == "brats-style"), entry.case_id
    assert json.loads((tmp_path / "mixed" / "phantom.json").read_text())["native_fraction"] == 0.5
    with pytest.raises(ValueError, match="0..1"):
        generate_cohort(tmp_path / "bad", n=2, native_fraction=1.5)


def test_cli_phantom_with_bad_numbers_exits_2_without_traceback(tmp_path, capsys):
    assert main(["phantom", "--n", "0", "--out", str(tmp_path / "p")]) == 2
    assert main(["phantom", "--n", "2", "--native-fraction", "2", "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "n >= 1" in err and "0..1" in err and "Traceback" not in err


def test_site_contrast_scales_each_tissue_by_its_site_factor_and_leaves_biology_alone(tmp_path):
    index, seed = 5, 3  # site-B of 4
    fixed = PhantomOptions(anatomy="fixed")  # the template's tissue maps are the case's
    plain, plain_seg, plain_row = generate_case(index, seed, n_sites=4, spacing=4.0, options=fixed)
    shifted, seg, row = generate_case(index, seed, n_sites=4, spacing=4.0, site_contrast=0.3, options=fixed)
    assert row == plain_row
    assert np.array_equal(sitk.GetArrayViewFromImage(seg), sitk.GetArrayViewFromImage(plain_seg))
    site = make_site(index % 4)
    factors = contrast_factors(site.index, 0.3, COMPARTMENTS)
    tissues = anatomy(working_grid(4.0), with_head=False)
    far_from_tumour = ndimage.distance_transform_edt(sitk.GetArrayViewFromImage(seg) == 0) > 4
    for tissue in ("wm", "gm"):  # voxels of one tissue only (blur mixes the others in at their edges)
        pure = (tissues[tissue] > 0.99) & far_from_tumour
        assert pure.sum() > 40
        for channel, sequence in enumerate(SEQUENCES):
            offset = site.offset[sequence] * INTENSITY_SCALE  # the site's additive offset is not scaled
            ratio = ((sitk.GetArrayViewFromImage(shifted[sequence])[pure] - offset)
                     / (sitk.GetArrayViewFromImage(plain[sequence])[pure] - offset))
            assert np.median(ratio) == pytest.approx(factors[tissue][channel], rel=0.03), (tissue, sequence)
    # the sites' factors differ (that is the point) and 0 means exactly the reference contrasts
    assert not np.allclose(factors["wm"], contrast_factors(0, 0.3, COMPARTMENTS)["wm"])
    assert all(np.array_equal(f, np.ones(4)) for f in contrast_factors(1, 0.0, COMPARTMENTS).values())
    manifest = generate_cohort(tmp_path / "c", n=2, sites=2, seed=1, spacing=4.0, site_contrast=0.2)
    settings = json.loads((manifest.parent / "phantom.json").read_text())
    assert settings["site_contrast"] == 0.2 and set(settings["site_contrast_factors"]) == {"site-A", "site-B"}
    with pytest.raises(ValueError, match="site contrast"):
        generate_case(0, 0, spacing=4.0, site_contrast=-1)


@pytest.mark.parametrize("option, value, message", [
    ("--spacing", "nan", "--spacing: the voxel size must lie in 0.5..8 mm, got nan"),
    ("--spacing", "1000", "--spacing: the voxel size must lie in 0.5..8 mm"),
    ("--spacing", "0.001", "--spacing: the voxel size must lie in 0.5..8 mm"),
    ("--site-contrast", "inf", "--site-contrast: must lie in 0..2, got inf"),
    ("--seed", "-1", "--seed: must be 0 or more, got -1"),
    ("--n", "100000000000", "--n: need n >= 1 cases (at most 100000)"),
])
def test_cli_phantom_numbers_found_by_a_hostile_tester(option, value, message, tmp_path, capsys):
    """Each was an internal error (exit 3), a blank cohort written with exit 0, or a run without an end."""
    assert main(["phantom", "--n", "2", "--out", str(tmp_path / "p"), "--progress", "none", option, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "p").exists()


def test_phantom_never_writes_into_a_users_folder(tmp_path, capsys):
    users = tmp_path / "mine"
    users.mkdir()
    (users / "manifest.csv").write_text("my own manifest")
    assert main(["phantom", "--n", "1", "--spacing", "4", "--out", str(users), "--progress", "none"]) == 2
    assert "holds files of its own" in capsys.readouterr().err
    assert (users / "manifest.csv").read_text() == "my own manifest" and len(list(users.iterdir())) == 1
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert main(["phantom", "--n", "1", "--spacing", "4", "--out", str(a_file), "--progress", "none"]) == 2
    assert "--out: " in capsys.readouterr().err and a_file.read_text() == "x"
