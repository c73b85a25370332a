"""The encoder: a MONAI 3D ResNet whose four input channels are T1, T1ce, T2 and FLAIR.

With ``availability_mask`` the network also gets, for each sequence, a channel that is 1 where the sequence is
there and 0 where it is missing, read off the input itself: a missing sequence is a channel of zeros everywhere
(preprocessing writes it so; a present one is z-scored inside the brain, never zero everywhere). Four constant
channels through the first convolution amount to a learned per-sequence embedding added to the stem's output,
with no change to MONAI's ResNet, to Grad-CAM or to any caller; without them a zero channel would look the same
as a sequence whose brain is at its mean intensity.

``forward`` returns both the last feature map F (for Grad-CAM) and its global average
pool z (the embedding), so every head and every CAM comes from one forward pass.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from monai.networks.layers.utils import get_norm_layer
from monai.networks.nets import ResNet
from monai.networks.nets.resnet import ResNetBlock, ResNetBottleneck
from torch import nn

from neuroradfm import CAM_LAYERS
from neuroradfm.errors import SettingsError
from neuroradfm.models.architecture import BLOCKS, GROUPS, STAGE_PLANES, EncoderConfig

ARCHITECTURES: dict[str, tuple[type[nn.Module], list[int]]] = {
    name: (ResNetBlock if kind == "basic" else ResNetBottleneck, list(depths))
    for name, (kind, depths) in BLOCKS.items()}
"""MONAI's block class and blocks per stage of each encoder (the table is models/architecture.py's, which checks
cards without torch)."""


NORMS: dict[str, str | tuple] = {"batch": "batch", "group": ("group", {"num_groups": GROUPS})}
"""Encoder normalisation choices, as MONAI's ``norm`` argument."""


def _replace_batch_norm(module: nn.Module, norm: str | tuple) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm3d):
            setattr(module, name, get_norm_layer(name=norm, spatial_dims=3, channels=child.num_features))
        else:
            _replace_batch_norm(child, norm)


class Encoder(nn.Module):
    """MONAI ResNet without its classifier: x (B, 4, D, H, W) -> (F (B, C, d, h, w), z (B, C))."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        if config.arch not in ARCHITECTURES:
            raise ValueError(f"unknown encoder {config.arch!r}; choose one of {', '.join(ARCHITECTURES)}")
        block, layers = ARCHITECTURES[config.arch]
        if config.norm not in NORMS:
            raise ValueError(f"unknown normalisation {config.norm!r}; choose one of {', '.join(NORMS)}")
        self.config = config
        self.net = ResNet(
            block=block,
            layers=layers,
            block_inplanes=list(STAGE_PLANES),
            spatial_dims=3,
            n_input_channels=config.in_channels * (2 if config.availability_mask else 1),
            conv1_t_stride=config.conv1_stride,
            no_max_pool=config.no_max_pool,
            widen_factor=config.widen_factor,
            feed_forward=False,
            norm=NORMS[config.norm],
        )
        if config.norm != "batch":  # MONAI 1.6's ResNet applies ``norm`` to its stem only: the blocks get it here
            _replace_batch_norm(self.net, NORMS[config.norm])

    @property
    def embedding_dim(self) -> int:
        return _out_channels(self.net.layer4)

    def network_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with the availability channels appended (unchanged without ``availability_mask``)."""
        if not self.config.availability_mask:
            return x
        present = x.detach().flatten(2).ne(0).any(dim=2).to(x.dtype)  # (B, 4): a channel with any non-zero voxel
        return torch.cat([x, present[:, :, None, None, None].expand_as(x)], dim=1)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_output(x, "layer4")

    def layer_output(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        """The activation of stage ``layer`` (one of CAM_LAYERS)."""
        stop = _cam_layer_index(layer)
        n = self.net
        x = n.act(n.bn1(n.conv1(self.network_input(x))))
        if not n.no_max_pool:
            x = n.maxpool(x)
        for name in CAM_LAYERS[:stop + 1]:
            x = getattr(n, name)(x)
        return x

    def from_layer(self, activation: torch.Tensor, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(F, z) computed from stage ``layer``'s activation: the rest of the network, for gradients at a layer."""
        features = activation
        for name in CAM_LAYERS[_cam_layer_index(layer) + 1:]:
            features = getattr(self.net, name)(features)
        return features, features.mean(dim=(2, 3, 4))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.feature_map(x)
        return features, features.mean(dim=(2, 3, 4))


def _cam_layer_index(layer: str) -> int:
    if layer not in CAM_LAYERS:
        raise ValueError(f"unknown Grad-CAM layer {layer!r}; choose one of {', '.join(CAM_LAYERS)}")
    return CAM_LAYERS.index(layer)


def _out_channels(stage: nn.Sequential) -> int:
    last = stage[-1]
    conv = last.conv3 if hasattr(last, "conv3") else last.conv2
    return conv.out_channels


DEVICE_CHOICES = "auto (first CUDA GPU, else CPU), cpu, cuda or cuda:N"


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks the first CUDA GPU when there is one, else the CPU; ``cpu``, ``cuda`` and ``cuda:N`` as given.

    Anything else (``meta``, a GPU that is not there, a typo) is a SettingsError naming what exists: checked once,
    before a run reads any case."""
    text = str(device).strip().lower()
    if text == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(text)
    except (RuntimeError, ValueError):
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda") or (resolved.type == "cpu" and resolved.index):
        raise SettingsError("--device", f"unknown device {device!r}; use {DEVICE_CHOICES}")
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise SettingsError("--device", f"{device!r} requested but no CUDA GPU is available (use cpu or auto)")
        index = 0 if resolved.index is None else resolved.index
        if index >= count:
            raise SettingsError("--device", f"{device!r} requested but this machine has {count} CUDA GPU(s): "
                                            f"cuda:0 ... cuda:{count - 1}")
        resolved = torch.device("cuda", index)
    return resolved


def with_availability_mask(encoder: Encoder) -> Encoder:
    """A copy of ``encoder`` that also takes the availability channels, behaving exactly as ``encoder`` on cases
    with every sequence at first: its first convolution's weights for the new channels start at zero. How an
    encoder pretrained without sequence dropout is fine-tuned with it."""
    if encoder.config.availability_mask:
        return encoder
    wider = Encoder(replace(encoder.config, availability_mask=True))
    state = dict(encoder.state_dict())
    old = state["net.conv1.weight"]
    state["net.conv1.weight"] = torch.cat([old, torch.zeros_like(old)], dim=1)
    wider.load_state_dict(state)
    return wider.to(old.device)
