"""Several cases per forward pass, autocast and channels-last (issue 18, GPU inference), exercised on the CPU.

``predict_prepared_batch`` must give each case what ``predict_prepared`` gives it alone, a case whose numbers are
not finite must fail alone, and reduced precision must stay close to float32 (bfloat16 autocast runs on the CPU
through the same code as float16 autocast on a GPU).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuroradfm.cam import cams_at, encode_for_cam, normalise, upsample
from neuroradfm.errors import BundleError, SettingsError
from neuroradfm.io import read_manifest
from neuroradfm.models.bundle import load_bundle
from neuroradfm.predict import (
    Inference,
    Prediction,
    inference_settings,
    map_weights,
    predict_prepared,
    predict_prepared_batch,
    prepare_case,
)

BFLOAT16_PROBABILITY_TOL = 0.02
"""bfloat16 autocast against float32, largest marker-probability difference: measured 0.0045 on these phantoms
(3 cases x every marker, layer2 and layer4); the tolerance leaves 4x margin. Embeddings differed by <= 0.4 % of their
largest component, maps correlated >= 0.998."""


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return load_bundle(tiny_bundle)


@pytest.fixture(scope="module")
def prepared(phantom_cohort, bundle):
    """Four phantom cases preprocessed onto the tiny bundle's 48^3 grid."""
    return [(entry.case_id, prepare_case(entry.load(), bundle)) for entry in read_manifest(phantom_cohort)[:4]]


def _assert_same(a: Prediction, b: Prediction, tol: float, map_tol: float) -> None:
    assert a.case_id == b.case_id
    np.testing.assert_allclose(a.embedding, b.embedding, rtol=0, atol=tol)
    np.testing.assert_allclose([m.probability for m in a.markers], [m.probability for m in b.markers], atol=tol)
    assert [m.positive for m in a.markers] == [m.positive for m in b.markers]
    assert a.survival is not None and b.survival is not None
    assert a.survival.risk_score == pytest.approx(b.survival.risk_score, abs=tol)
    assert a.ood_distance == pytest.approx(b.ood_distance, rel=1e-5, abs=1e-4)
    assert list(a.cams) == list(b.cams) and a.cam_method == b.cam_method
    for key in a.cams:
        assert a.cams[key].shape == b.cams[key].shape == a.preprocessed.mask.shape
        np.testing.assert_allclose(a.cams[key], b.cams[key], rtol=0, atol=map_tol, err_msg=key)
        assert a.cam_scales[key] == pytest.approx(b.cam_scales[key], rel=1e-4, abs=1e-9)


@pytest.mark.parametrize("layer", ["layer2", "layer4"])
def test_a_batch_gives_each_case_what_it_gets_alone(bundle, prepared, layer):
    items = prepared[:3]
    singles = [predict_prepared(case_id, case, bundle, "cpu", cam_layer=layer) for case_id, case in items]
    batch = predict_prepared_batch(items, bundle, "cpu", cam_layer=layer)
    assert len(batch) == 3 and all(isinstance(result, Prediction) for result in batch)
    # At the bundle's layer (layer2, what users get) maps agree to 1e-6 (measured 1.3e-6). At layer4 without the
    # cohort reference a map is a small difference of large terms, and a batch's other summation order moved one
    # map's normalised value by up to 2e-5 (measured): 1e-4 there.
    for single, batched in zip(singles, batch):
        _assert_same(single, batched, tol=1e-5, map_tol=1e-5 if layer == "layer2" else 1e-4)
    assert batch[0].cams[next(iter(batch[0].cams))].dtype == np.float32


def test_one_case_matches_the_plain_grad_cam_code(bundle, prepared):
    """The batched path (unsigned weights once, a sign per case) gives what encode_for_cam + cams_at with each
    call's signed weights give: the maps are unchanged by the batching."""
    case_id, case = prepared[0]
    prediction = predict_prepared(case_id, case, bundle, "cpu")
    heads = bundle.heads
    encoder = bundle.encoder.to("cpu").eval()
    activation, z = encode_for_cam(encoder, torch.from_numpy(case.channels[None]), heads.cam_layer)
    embedding = z[0].detach().double().numpy()
    weights, biases = heads.marker_weights()
    cox_w, cox_b = heads.cox_weights()
    keys, signed = map_weights(heads, weights @ embedding + biases, float(cox_w @ embedding + cox_b))
    cells = cams_at(heads.cam_layer, activation, z, torch.as_tensor(signed, dtype=torch.float32),
                    torch.as_tensor(heads.cam_reference))
    with torch.no_grad():
        maps = upsample(cells, case.mask.shape)[0].numpy()
    assert list(prediction.cams) == keys
    np.testing.assert_allclose(prediction.embedding, embedding, rtol=0, atol=1e-6)
    for key, volume in zip(keys, maps):
        expected, scale = normalise(volume, case.mask)
        np.testing.assert_allclose(prediction.cams[key], expected, rtol=0, atol=1e-6, err_msg=key)
        assert prediction.cam_scales[key] == pytest.approx(scale, rel=1e-5)


@pytest.mark.parametrize("layer", ["layer2", "layer4"])
def test_bfloat16_autocast_stays_close_to_float32(bundle, prepared, layer):
    items = prepared[:3]
    exact = predict_prepared_batch(items, bundle, "cpu", cam_layer=layer, precision="float32")
    low = predict_prepared_batch(items, bundle, "cpu", cam_layer=layer, precision="bfloat16")
    for a, b in zip(exact, low):
        assert isinstance(a, Prediction) and isinstance(b, Prediction)
        assert a.embedding.dtype == b.embedding.dtype == np.float64
        assert not np.array_equal(a.embedding, b.embedding)  # the encoder did run in bfloat16
        np.testing.assert_allclose(b.embedding, a.embedding, rtol=0, atol=0.02 * np.abs(a.embedding).max())
        np.testing.assert_allclose([m.probability for m in b.markers], [m.probability for m in a.markers],
                                   atol=BFLOAT16_PROBABILITY_TOL)
        for key in a.cams:
            assert b.cams[key].dtype == np.float32 and np.isfinite(b.cams[key]).all()
            if a.cam_scales[key] > 0 and b.cam_scales[key] > 0:
                assert np.corrcoef(a.cams[key].ravel(), b.cams[key].ravel())[0, 1] > 0.95, key


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_channels_last_gives_what_contiguous_gives(bundle, prepared, precision):
    items = prepared[:2]
    plain = predict_prepared_batch(items, bundle, "cpu", precision=precision, channels_last=False)
    last = predict_prepared_batch(items, bundle, "cpu", precision=precision, channels_last=True)
    assert bundle.encoder.net.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
    for a, b in zip(plain, last):
        assert isinstance(a, Prediction) and isinstance(b, Prediction)
        _assert_same(a, b, tol=1e-4, map_tol=1e-4)
    predict_prepared_batch(items[:1], bundle, "cpu")  # the next plain call puts the weights back
    assert bundle.encoder.net.conv1.weight.is_contiguous()


def test_a_case_with_non_finite_numbers_fails_alone_in_its_batch(tiny_bundle, prepared):
    bundle = load_bundle(tiny_bundle)  # its OOD head is changed below: not the module's bundle
    # the OOD precision scaled so that ordinary cases stay finite (d.P.d ~ 1e292) but a case whose embedding is
    # 1e10 times larger overflows (~1e310): an overflow in the heads of one case only
    bundle.heads.ood.precision = bundle.heads.ood.precision * 1e290
    (good_id, good), (other_id, other) = prepared[0], prepared[1]
    broken = prepared[2][1]
    nan_case = type(broken)(**{**vars(broken), "channels": np.full_like(broken.channels, np.nan)})
    huge_case = type(broken)(**{**vars(broken), "channels": broken.channels * np.float32(1e10)})
    items = [(good_id, good), ("nan-case", nan_case), (other_id, other), ("huge-case", huge_case)]

    results = predict_prepared_batch(items, bundle, "cpu")
    assert [type(result) for result in results] == [Prediction, BundleError, Prediction, BundleError]
    assert "the encoder gives non-finite features for nan-case" in str(results[1])
    assert "its heads give non-finite values for huge-case" in str(results[3])
    assert str(bundle.path) in str(results[3])
    for batched, (case_id, case) in zip([results[0], results[2]], [(good_id, good), (other_id, other)]):
        _assert_same(predict_prepared(case_id, case, bundle, "cpu"), batched, tol=1e-5, map_tol=1e-5)
        assert all(np.isfinite(volume).all() for volume in batched.cams.values())

    with pytest.raises(BundleError, match="non-finite features for nan-case"):  # alone: raised, as before
        predict_prepared("nan-case", nan_case, bundle, "cpu")
    assert [type(r) for r in predict_prepared_batch(items[1::2], bundle, "cpu")] == [BundleError, BundleError]


def test_precision_settings(bundle, prepared):
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert Inference.choose(cpu, "auto") == Inference(cpu, None, False)  # float32 on the CPU
    assert Inference.choose(cuda, "auto") == Inference(cuda, torch.float16, True)
    assert Inference.choose(cuda, "float32") == Inference(cuda, None, False)
    assert Inference.choose(cuda, "bfloat16").autocast == torch.bfloat16
    assert Inference.choose(cpu, "float16", channels_last=True) == Inference(cpu, torch.float16, True)
    assert inference_settings("cpu", "bfloat16").memory_format == torch.contiguous_format
    with pytest.raises(SettingsError, match="--precision.*unknown precision 'half'"):
        inference_settings("cpu", "half")
    with pytest.raises(SettingsError, match="unknown precision"):
        predict_prepared_batch(prepared[:1], bundle, "cpu", precision="fp8")
    assert predict_prepared_batch([], bundle, "cpu") == []
    small = type(prepared[1][1])(**{**vars(prepared[1][1]), "channels": prepared[1][1].channels[:, :-8]})
    with pytest.raises(ValueError, match="one model grid"):
        predict_prepared_batch([prepared[0], ("small", small)], bundle, "cpu")
