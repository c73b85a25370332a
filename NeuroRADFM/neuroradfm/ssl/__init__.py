"""Self-supervised pretraining methods on the 3D encoder: BYOL, DINO, MoCo v3 and MAE (masked 3D patches).

Every method is an ``nn.Module`` whose ``forward(batch)`` returns ONE LOSS PER SAMPLE (shape (B,)), so that
Group-DRO (neuroradfm.dro) is a thin layer on top. ``after_step(fraction)`` runs after each optimizer step
(EMA teachers, DINO's centre).
"""

from neuroradfm.ssl.base import METHODS, MethodSettings, SSLMethod, build_method

__all__ = ["METHODS", "MethodSettings", "SSLMethod", "build_method"]
