"""Encoder shapes and the Grad-CAM fast path against MONAI's gradient Grad-CAM."""

import numpy as np
import pytest
import torch

from neuroradfm.cam import (
    LinearHeadModel,
    cams_at,
    encode_for_cam,
    gradient_cam,
    layer_cams,
    linear_cams,
    normalise,
    upsample,
)
from neuroradfm.models.encoder import ARCHITECTURES, Encoder, EncoderConfig, resolve_device

TINY = EncoderConfig("resnet10", widen_factor=0.125, conv1_stride=2, no_max_pool=True)


@pytest.mark.parametrize("arch, dim", [("resnet10", 64), ("resnet50", 256)])
def test_encoder_returns_feature_map_and_pooled_embedding(arch, dim):
    encoder = Encoder(EncoderConfig(arch, widen_factor=0.125)).eval()
    with torch.no_grad():
        features, z = encoder(torch.randn(2, 4, 32, 32, 32))
    assert encoder.embedding_dim == dim
    assert features.shape[:2] == (2, dim) and z.shape == (2, dim)
    torch.testing.assert_close(z, features.mean(dim=(2, 3, 4)))


def test_first_conv_stride_and_max_pool_set_the_feature_resolution():
    x = torch.randn(1, 4, 64, 64, 64)
    sizes = {}
    for stride, no_pool in [(1, False), (2, False), (2, True)]:
        encoder = Encoder(EncoderConfig("resnet10", widen_factor=0.125, conv1_stride=stride, no_max_pool=no_pool))
        with torch.no_grad():
            sizes[(stride, no_pool)] = encoder(x)[0].shape[-1]
    assert sizes == {(1, False): 4, (2, False): 2, (2, True): 4}


def test_encoder_rejects_unknown_architecture_and_settings():
    with pytest.raises(ValueError, match="unknown encoder"):
        Encoder(EncoderConfig("resnet7"))
    with pytest.raises(ValueError, match="unknown encoder settings"):
        EncoderConfig.from_dict({"arch": "resnet10", "depth": 3})
    assert set(ARCHITECTURES) >= {"resnet10", "resnet18", "resnet34", "resnet50"}


@pytest.mark.parametrize("norm, layer", [("batch", torch.nn.BatchNorm3d), ("group", torch.nn.GroupNorm)])
def test_encoder_normalisation_and_whether_a_sample_depends_on_its_batch_mates(norm, layer):
    torch.manual_seed(0)
    encoder = Encoder(EncoderConfig("resnet10", widen_factor=0.25, no_max_pool=True, norm=norm)).train()
    layers = [m for m in encoder.modules() if isinstance(m, (torch.nn.BatchNorm3d, torch.nn.GroupNorm))]
    assert len(layers) == 12 and {type(m) for m in layers} == {layer}  # stem, 2 per block, 3 shortcuts
    x = torch.randn(2, 4, 32, 32, 32)
    together, alone = encoder(x)[1][:1], encoder(x[:1] * 1.0)[1]
    per_sample = torch.allclose(together, alone, atol=1e-5)
    assert per_sample == (norm != "batch")  # batch statistics mix the samples of a batch
    assert EncoderConfig.from_dict({"arch": "resnet10"}).norm == "batch"  # cards written before the option
    with pytest.raises(ValueError, match="normalisation"):
        Encoder(EncoderConfig("resnet10", norm="layer"))


def test_device_resolution_on_a_cpu_machine():
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda:0")


def test_cam_fast_path_equals_gradient_gradcam_at_the_last_block():
    torch.manual_seed(0)
    encoder = Encoder(TINY).eval()
    rng = np.random.default_rng(0)
    weights, biases = rng.normal(size=(3, encoder.embedding_dim)), rng.normal(size=3)
    model = LinearHeadModel(encoder, weights, biases).eval()
    x = torch.randn(1, 4, 48, 48, 48)
    with torch.no_grad():
        features, _ = encoder(x)
    fast = linear_cams(features, torch.as_tensor(weights, dtype=torch.float32))
    for head in range(3):
        slow = gradient_cam(model, x, "encoder.net.layer4", class_idx=head)
        assert slow.shape[2:] == fast.shape[2:] == (3, 3, 3)
        assert float(fast[0, head].max()) > 0
        torch.testing.assert_close(slow[0, 0], fast[0, head], rtol=1e-4, atol=1e-6)
    # Upsampled to the input, both use the same trilinear upsampler.
    slow_up = gradient_cam(model, x, "encoder.net.layer4", class_idx=1, upsample_to_input=True)
    torch.testing.assert_close(slow_up[0, 0], upsample(fast, x.shape[2:])[0, 1], rtol=1e-4, atol=1e-6)


def test_gradient_gradcam_at_an_earlier_layer_differs_from_the_fast_path():
    torch.manual_seed(1)
    encoder = Encoder(TINY).eval()
    model = LinearHeadModel(encoder, np.ones((1, encoder.embedding_dim)), np.zeros(1)).eval()
    x = torch.randn(1, 4, 48, 48, 48)
    early = gradient_cam(model, x, "encoder.net.layer3", class_idx=0)
    assert early.shape[2:] == (6, 6, 6)  # a finer map than the last block's 3^3


def test_normalise_scales_peak_inside_mask_to_one():
    volume = np.zeros((4, 4, 4), np.float32)
    volume[1, 1, 1], volume[3, 3, 3] = 2.0, 8.0
    mask = np.ones_like(volume, bool)
    mask[3, 3, 3] = False
    scaled, peak = normalise(volume, mask)
    assert peak == 2.0 and scaled[1, 1, 1] == 1.0 and scaled[3, 3, 3] == 0.0
    zeros, zero_peak = normalise(np.zeros((2, 2, 2)))
    assert zero_peak == 0.0 and not zeros.any()


def test_referenced_cam_splits_the_logit_deviation_over_space():
    """Against a reference feature map R the cells of the unrectified map sum to logit(F) - logit(R), with the
    same gradient weights as Grad-CAM (so R = 0 is plain Grad-CAM)."""
    torch.manual_seed(2)
    encoder = Encoder(TINY).eval()
    with torch.no_grad():
        features, z = encoder(torch.randn(2, 4, 48, 48, 48))
        reference_features, reference_z = encoder(torch.randn(3, 4, 48, 48, 48))
    reference = reference_features.mean(dim=0)
    weights = torch.randn(4, encoder.embedding_dim)
    raw = linear_cams(features, weights, reference, rectify=False)
    torch.testing.assert_close(raw.sum(dim=(2, 3, 4)), z @ weights.T - reference_z.mean(0) @ weights.T,
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(linear_cams(features, weights, reference), torch.relu(raw))
    torch.testing.assert_close(linear_cams(features, weights, torch.zeros_like(reference)),
                               linear_cams(features, weights))
    # a case identical to the reference has nothing to show
    assert not linear_cams(reference[None], weights, reference).any()


def test_layer_outputs_continue_to_the_same_embedding():
    torch.manual_seed(3)
    encoder = Encoder(TINY).eval()
    x = torch.randn(1, 4, 48, 48, 48)
    with torch.no_grad():
        features, z = encoder(x)
        shapes = {}
        for layer in ("layer1", "layer2", "layer3", "layer4"):
            activation = encoder.layer_output(x, layer)
            shapes[layer] = tuple(activation.shape[2:])
            rest_features, rest_z = encoder.from_layer(activation, layer)
            torch.testing.assert_close(rest_features, features)
            torch.testing.assert_close(rest_z, z)
    assert shapes == {"layer1": (24,) * 3, "layer2": (12,) * 3, "layer3": (6,) * 3, "layer4": (3,) * 3}
    with pytest.raises(ValueError, match="unknown Grad-CAM layer 'layer7'"):
        encoder.layer_output(x, "layer7")


@pytest.mark.parametrize(("layer", "copies"), [("layer2", 1), ("layer3", 1), ("layer2", 3), ("layer4", 3)])
def test_layer_cams_equal_monai_gradcam_at_that_layer(layer, copies):
    """All heads from one backward pass (vmap'd over heads, or an ordinary one over a copy of the layer's
    activation per head) == MONAI's GradCAM, one head at a time; the embedding is the same either way."""
    torch.manual_seed(4)
    encoder = Encoder(TINY).eval()
    rng = np.random.default_rng(4)
    weights = rng.normal(size=(3, encoder.embedding_dim))
    model = LinearHeadModel(encoder, weights, rng.normal(size=3)).eval()
    x = torch.randn(2, 4, 48, 48, 48)
    activation, z = encode_for_cam(encoder, x, layer, copies=copies)
    assert z.shape == (2 * copies, encoder.embedding_dim)
    with torch.no_grad():
        torch.testing.assert_close(z[::copies], encoder(x)[1], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(z, z[::copies].repeat_interleave(copies, dim=0))
    maps = cams_at(layer, activation, z, torch.as_tensor(weights, dtype=torch.float32), copies=copies)
    assert maps.shape == (2, 3, *activation.shape[2:])
    if copies > 1 and layer != "layer4":
        with pytest.raises(ValueError, match="3 copies per case for 2 heads"):
            cams_at(layer, activation, z, torch.as_tensor(weights[:2], dtype=torch.float32), copies=copies)
    for head in range(3):
        slow = gradient_cam(model, x, f"encoder.net.{layer}", class_idx=head)
        assert float(maps[:, head].max()) > 0
        torch.testing.assert_close(slow[:, 0], maps[:, head], rtol=1e-4, atol=1e-6)


def test_layer_cams_at_the_last_block_equal_the_closed_form():
    torch.manual_seed(5)
    encoder = Encoder(TINY).eval()
    x = torch.randn(2, 4, 48, 48, 48)
    weights = torch.randn(4, encoder.embedding_dim)
    with torch.no_grad():
        features, _ = encoder(x)
    reference = features.mean(dim=0) + 0.1
    activation, z = encoder.layer_output(x, "layer4").requires_grad_(True), None
    _, z = encoder.from_layer(activation, "layer4")
    for ref in (None, reference):
        torch.testing.assert_close(layer_cams(activation, z, weights, ref, rectify=False),
                                   linear_cams(features, weights, ref, rectify=False), rtol=1e-4, atol=1e-6)
    fast_activation, fast_z = encode_for_cam(encoder, x, "layer4")
    assert not fast_z.requires_grad  # the closed form records no graph
    torch.testing.assert_close(cams_at("layer4", fast_activation, fast_z, weights, reference),
                               linear_cams(features, weights, reference))


def test_referenced_layer_cams_show_nothing_for_the_reference_itself():
    torch.manual_seed(6)
    encoder = Encoder(TINY).eval()
    x = torch.randn(1, 4, 48, 48, 48)
    weights = torch.randn(2, encoder.embedding_dim)

    def maps(reference=None, rectify=True):  # one backward pass per forward pass, as in prediction
        activation, z = encode_for_cam(encoder, x, "layer2")
        return activation, layer_cams(activation, z, weights, reference, rectify)

    activation, plain = maps()
    assert plain.any()
    assert not maps(activation[0].detach())[1].any()
    _, shifted = maps(torch.full_like(activation[0], 0.5), rectify=False)
    assert not torch.allclose(torch.relu(shifted), plain)
