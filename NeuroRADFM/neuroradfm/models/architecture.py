"""The encoder's architecture as data, without torch: its settings (``EncoderConfig``, stored in every card), the
tensors its weights must hold, and the size of each stage's activation on a model grid, by arithmetic on MONAI's
3D ResNet.

Why: checking a card (``neuroradfm info``, and ``load_bundle`` before it builds anything) needs these figures,
and importing torch and MONAI to get them from a network on the meta device costs about 4 s. ``Encoder`` (in
models/encoder.py) is built from the same tables, and Testing/test_bundle_info.py compares every figure here
with the real network for every architecture, stride, max-pool, width, normalisation and grid size a card may
hold, so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from neuroradfm import CAM_LAYERS

BLOCKS: dict[str, tuple[str, tuple[int, ...]]] = {
    "resnet10": ("basic", (1, 1, 1, 1)),
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
}
"""Depths of MONAI's resnet10 ... resnet101: block type and blocks per stage. A basic block is two 3x3x3
convolutions (MONAI's ResNetBlock); a bottleneck is 1-3-1 with an output four times wider (ResNetBottleneck)."""
EXPANSION = {"basic": 1, "bottleneck": 4}
"""Output channels of a block over its planes (MONAI's ``expansion``)."""
STAGE_PLANES = (64, 128, 256, 512)
"""Planes of the four stages at ``widen_factor`` 1 (MONAI's ``block_inplanes``)."""
GROUPS = 8
"""Groups of the ``group`` normalisation: every normalised channel count must be a multiple of it."""
NORM_TENSORS: dict[str, tuple[str, ...]] = {
    "batch": ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"),
    "group": ("weight", "bias"),
}
"""The encoder's normalisation choices, and the tensors each normalisation layer keeps."""
STEM_KERNEL = 7
"""MONAI's first convolution: 7x7x7, padded by 3, stride ``conv1_stride``; then a 3x3x3 max-pool of stride 2."""


@dataclass(frozen=True)
class EncoderConfig:
    """Everything needed to rebuild the network; stored in the bundle card."""

    arch: str = "resnet50"
    in_channels: int = 4
    conv1_stride: int = 2
    widen_factor: float = 1.0
    no_max_pool: bool = False
    availability_mask: bool = False
    """Give the network which sequences are present (4 more input channels); bundles trained before sequence
    dropout have none."""
    norm: str = "batch"
    """Normalisation layers: "batch" (MONAI's default) or "group" (8 groups). Batch statistics mix the sites
    of a batch, so a site whose images differ is normalised with the others' statistics, and each sample's
    output depends on its batch-mates; group norm is per sample."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EncoderConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown encoder settings: {sorted(unknown)}")
        return cls(**data)


def stage_planes(config: EncoderConfig) -> list[int]:
    """Planes of each stage after ``widen_factor`` (MONAI truncates, as here)."""
    return [int(planes * config.widen_factor) for planes in STAGE_PLANES]


def embedding_dim(config: EncoderConfig) -> int:
    """Channels of the last stage: the length of the embedding z."""
    kind, _ = BLOCKS[config.arch]
    return stage_planes(config)[-1] * EXPANSION[kind]


def build_problem(config: EncoderConfig) -> str | None:
    """Why torch would refuse to build this encoder, or None when it builds."""
    if config.arch not in BLOCKS:
        return f"unknown encoder {config.arch!r}; choose one of {', '.join(BLOCKS)}"
    if config.norm not in NORM_TENSORS:
        return f"unknown normalisation {config.norm!r}; choose one of {', '.join(NORM_TENSORS)}"
    if config.norm == "group":
        expansion = EXPANSION[BLOCKS[config.arch][0]]
        odd = sorted({channels for planes in stage_planes(config) for channels in (planes, planes * expansion)
                      if channels % GROUPS})
        if odd:
            return (f"group normalisation needs channel counts that are multiples of {GROUPS}; widen_factor "
                    f"{config.widen_factor:g} gives {', '.join(map(str, odd))}")
    return None


def _norm(name: str, channels: int, norm: str) -> dict[str, tuple[int, ...]]:
    return {f"{name}.{tensor}": (() if tensor == "num_batches_tracked" else (channels,))
            for tensor in NORM_TENSORS[norm]}


def tensor_shapes(config: EncoderConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of ``Encoder(config).state_dict()`` with its shape, as MONAI's ResNet names them."""
    kind, depths = BLOCKS[config.arch]
    planes = stage_planes(config)
    in_channels = config.in_channels * (2 if config.availability_mask else 1)
    shapes = {"net.conv1.weight": (planes[0], in_channels, *(STEM_KERNEL,) * 3), **_norm("net.bn1", planes[0],
                                                                                         config.norm)}
    inplanes = planes[0]
    for stage, (width, blocks) in enumerate(zip(planes, depths)):
        out = width * EXPANSION[kind]
        for index in range(blocks):
            prefix = f"net.{CAM_LAYERS[stage]}.{index}"
            if kind == "basic":
                convs = [(inplanes, width, 3), (width, width, 3)]
            else:
                convs = [(inplanes, width, 1), (width, width, 3), (width, out, 1)]
            for number, (source, target, kernel) in enumerate(convs, start=1):
                shapes[f"{prefix}.conv{number}.weight"] = (target, source, kernel, kernel, kernel)
                shapes.update(_norm(f"{prefix}.bn{number}", target, config.norm))
            stride = 2 if stage > 0 and index == 0 else 1  # stages 2-4 halve the grid in their first block
            if index == 0 and (stride != 1 or inplanes != out):  # MONAI's shortcut B: a strided 1x1x1 conv + norm
                shapes[f"{prefix}.downsample.0.weight"] = (out, inplanes, 1, 1, 1)
                shapes[f"{prefix}.downsample.0.bias"] = (out,)
                shapes.update(_norm(f"{prefix}.downsample.1", out, config.norm))
            inplanes = out
    return shapes


def _convolved(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def activation_shape(config: EncoderConfig, size: tuple[int, ...], layer: str) -> tuple[int, ...]:
    """(channels, d, h, w) of stage ``layer``'s activation for one case on a ``size`` model grid.

    A ValueError when the grid is too small for the encoder's strides (an axis would have no voxel)."""
    if layer not in CAM_LAYERS:
        raise ValueError(f"unknown Grad-CAM layer {layer!r}; choose one of {', '.join(CAM_LAYERS)}")
    spatial = [int(n) for n in size]
    if len(spatial) != 3 or min(spatial) < 1:
        raise ValueError(f"a model grid is 3 sizes of at least 1 voxel, got {list(size)}")
    spatial = [_convolved(n, STEM_KERNEL, config.conv1_stride, STEM_KERNEL // 2) for n in spatial]
    if not config.no_max_pool:
        spatial = [_convolved(n, 3, 2, 1) for n in spatial]
    for _ in range(CAM_LAYERS.index(layer)):  # layer1 keeps the size; each later stage halves it
        spatial = [_convolved(n, 3, 2, 1) for n in spatial]
    if min(spatial) < 1:
        raise ValueError(f"{layer} would have {' x '.join(map(str, spatial))} voxels")
    kind, _ = BLOCKS[config.arch]
    return (stage_planes(config)[CAM_LAYERS.index(layer)] * EXPANSION[kind], *spatial)
