"""``neuroradfm info`` checks a bundle without torch, by arithmetic on the card's architecture.

The arithmetic (models/architecture.py) is compared with the real MONAI network for every architecture, stride,
max-pool, width, normalisation and availability mask a card may hold, and with its activations on grids of every
size class, so the torch-free check and the encoder cannot drift apart. ``info`` runs in a fresh process and must
leave torch unimported; it prints what the loaded model holds; what it refuses, ``load_bundle`` refuses with the
same message (they share ``read_bundle_card``).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from neuroradfm import CAM_LAYERS
from neuroradfm.cli import main
from neuroradfm.demo import demo_bundle_path
from neuroradfm.errors import BundleError
from neuroradfm.models.architecture import (
    BLOCKS,
    NORM_TENSORS,
    EncoderConfig,
    activation_shape,
    build_problem,
    embedding_dim,
    tensor_shapes,
)
from neuroradfm.models.bundle import CARD, WEIGHTS, content_hash, load_bundle, read_bundle_card
from neuroradfm.models.encoder import ARCHITECTURES, NORMS, Encoder

WIDTHS = (0.01, 0.1, 0.125, 1.0, 1.7)
"""Widths whose channel counts are multiples of 8 (group norm builds: 0.125, 1) and ones that are not (it refuses);
0.01 gives stages of 0 to 5 channels."""
STRIDES = (1, 2, 3, 4, 5, 7, 1000)
GRIDS = [tuple(range(start, start + 3)) for start in range(8, 44, 3)] + [(63, 64, 65), (127, 128, 129),
                                                                         (191, 192, 193), (1022, 1023, 1024)]
"""Every grid size from 8 (the card's minimum) to 45 voxels per axis, then larger ones up to 1024 (its maximum)."""
SWEEPS = {arch: ((1, 2, 1000), GRIDS[::5] + [(127, 128, 129)]) for arch in BLOCKS} | {"resnet10": (STRIDES, GRIDS)}
"""Every stride and grid on resnet10; the others differ from it only in blocks per stage and block type (where
the stride sits), so a few strides and grids each (a meta forward of resnet101 costs 0.15 s)."""


def test_the_tables_are_the_encoders():
    assert list(BLOCKS) == list(ARCHITECTURES) and list(NORM_TENSORS) == list(NORMS)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # widen_factor 0.01: stages of 0 channels
@pytest.mark.parametrize("arch", list(BLOCKS))
def test_tensor_names_shapes_and_embedding_size_agree_with_the_real_encoder(arch):
    for norm, mask, width in itertools.product(NORM_TENSORS, (False, True), WIDTHS):  # max-pool: no tensors
        config = EncoderConfig(arch=arch, norm=norm, availability_mask=mask, widen_factor=width)
        problem = build_problem(config)
        if problem is not None:
            with pytest.raises(ValueError, match="must be divisible"), torch.device("meta"):
                Encoder(config)
            assert norm == "group" and "multiples of 8" in problem
            continue
        with torch.device("meta"):
            encoder = Encoder(config)
        assert tensor_shapes(config) == {k: tuple(v.shape) for k, v in encoder.state_dict().items()}, config
        assert embedding_dim(config) == encoder.embedding_dim, config
    assert torch.get_default_device().type == "cpu"


@pytest.mark.parametrize("arch", list(BLOCKS))
def test_activation_sizes_agree_with_the_real_encoder_for_every_stride_pool_and_grid(arch):
    strides, grids = SWEEPS[arch]
    seen: dict[str, tuple[int, ...]] = {}
    for stride, no_max_pool in itertools.product(strides, (False, True)):
        config = EncoderConfig(arch=arch, conv1_stride=stride, no_max_pool=no_max_pool, widen_factor=0.125)
        with torch.device("meta"):
            encoder = Encoder(config).eval()
        for layer in CAM_LAYERS:
            getattr(encoder.net, layer).register_forward_hook(
                lambda module, args, output, layer=layer: seen.__setitem__(layer, tuple(output.shape[1:])))
        for grid in grids:
            with torch.device("meta"), torch.no_grad():
                encoder(torch.empty(1, 4, *grid))
            assert {layer: activation_shape(config, grid, layer) for layer in CAM_LAYERS} == seen, (config, grid)
    assert torch.get_default_device().type == "cpu"


def _torch_free_info(bundle: Path) -> dict:
    """``neuroradfm info`` in a fresh process: its exit status, its JSON, and whether torch or MONAI got imported."""
    core = Path(__file__).resolve().parents[1] / "NeuroRADFM"
    code = ("import json, sys\nfrom neuroradfm.cli import main\nstatus = main(['info', sys.argv[1]])\n"
            "imported = sorted(m for m in ('torch', 'monai') if m in sys.modules)\n"
            "print(json.dumps({'status': status, 'imported': imported}), file=sys.stderr)\n")
    env = {**os.environ, "PYTHONPATH": str(core) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.run([sys.executable, "-c", code, str(bundle)], env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    return {**json.loads(run.stderr.strip().splitlines()[-1]), "out": run.stdout, "err": run.stderr}


def test_info_imports_neither_torch_nor_monai_and_prints_what_the_loaded_model_holds(tiny_bundle):
    for folder in (demo_bundle_path(), tiny_bundle):
        result = _torch_free_info(folder)
        assert result["status"] == 0 and result["imported"] == []
        summary = json.loads(result["out"])
        bundle = load_bundle(folder)
        assert summary["content_hash"] == bundle.card["content_hash"] == content_hash(bundle.card, folder / WEIGHTS)
        assert json.dumps(summary["markers"]) == json.dumps({m.key: m.metrics for m in bundle.heads.markers})
        assert json.dumps(summary["survival"]) == json.dumps(bundle.heads.cox.metrics)
        assert summary["architecture"] == bundle.encoder.config.to_dict()


def _copy(tiny_bundle: Path, tmp_path: Path, edit=None, tensors=None) -> Path:
    """A consistent copy of the tiny bundle (its content hash recomputed) with its card or tensors changed."""
    folder = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, folder)
    if tensors is not None:
        weights = load_file(str(folder / WEIGHTS))
        tensors(weights)
        save_file(weights, str(folder / WEIGHTS))
    card = json.loads((folder / CARD).read_text())
    if edit is not None:
        edit(card)
    card.pop("content_hash")
    card["content_hash"] = content_hash(card, folder / WEIGHTS)
    (folder / CARD).write_text(json.dumps(card))
    return folder


def _refused_alike(folder: Path, expected: str) -> None:
    """Both paths refuse the bundle with one message: info without torch, and the loader."""
    with pytest.raises(BundleError) as light:
        read_bundle_card(folder)
    with pytest.raises(BundleError) as loader:
        load_bundle(folder)
    assert str(light.value) == str(loader.value)
    assert str(light.value).startswith(f"{folder / CARD}: ") and expected in str(light.value)
    result = _torch_free_info(folder)
    assert result["status"] == 2 and result["imported"] == [] and expected in result["err"]


def test_an_encoder_tensor_of_the_wrong_shape_is_refused_without_torch(tiny_bundle, tmp_path):
    def narrower(weights):
        weights["encoder.net.layer2.0.conv1.weight"] = torch.zeros(16, 8, 3, 3, 2)

    _refused_alike(_copy(tiny_bundle, tmp_path, tensors=narrower),
                   "architecture: weights.safetensors does not hold the weights of this encoder "
                   "(encoder.net.layer2.0.conv1.weight has shape [16, 8, 3, 3, 2], the architecture needs "
                   "[16, 8, 3, 3, 3])")


def test_a_missing_encoder_tensor_is_refused_without_torch(tiny_bundle, tmp_path):
    _refused_alike(_copy(tiny_bundle, tmp_path, tensors=lambda weights: weights.pop("encoder.net.bn1.running_var")),
                   "1 tensors missing (e.g. encoder.net.bn1.running_var)")


def test_an_architecture_torch_cannot_build_is_named_without_torch(tiny_bundle, tmp_path):
    def group_norm(card):
        card["architecture"]["norm"] = "group"  # the tiny encoder's 8, 16, 32, 64 channels take 8 groups...
        card["architecture"]["widen_factor"] = 0.1  # ...but 6, 12, 25, 51 do not

    _refused_alike(_copy(tiny_bundle, tmp_path, edit=group_norm),
                   "architecture: this encoder cannot be built (group normalisation needs channel counts that are "
                   "multiples of 8; widen_factor 0.1 gives 6, 12, 25, 51)")


def test_a_grid_the_strides_shrink_to_one_voxel_names_the_cam_reference(tiny_bundle, tmp_path):
    def strided(card):
        card["architecture"]["conv1_stride"] = 1000

    _refused_alike(_copy(tiny_bundle, tmp_path, edit=strided),
                   "heads.cam_reference: the tensor 'heads.cam.reference' has shape [16, 12, 12, 12], expected "
                   "[16, 1, 1, 1] (the layer2 activation on the 48 x 48 x 48 model grid)")


def test_activation_shape_refuses_a_grid_with_no_voxel():
    with pytest.raises(ValueError, match="at least 1 voxel"):
        activation_shape(EncoderConfig(arch="resnet10"), (0, 8, 8), "layer1")
    with pytest.raises(ValueError, match="unknown Grad-CAM layer"):
        activation_shape(EncoderConfig(arch="resnet10"), (8, 8, 8), "layer9")


def test_info_of_an_encoder_only_bundle_has_no_heads(tiny_bundle, tmp_path):
    folder = _copy(tiny_bundle, tmp_path, edit=lambda card: card.update(heads=None))
    assert main(["info", str(folder)]) == 0
    assert read_bundle_card(folder)["heads"] is None and load_bundle(folder).heads is None
