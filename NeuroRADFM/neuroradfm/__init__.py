"""NeuroRAD-FM core: brain-tumour MRI foundation model, Qt- and Slicer-free.

Imported by the Slicer modules (out of process, through the CLI) and by batch scripts.
"""

__version__ = "0.1.0"

SEQUENCES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
"""Channel order of every model input: native T1, contrast-enhanced T1, T2, FLAIR."""

SEQUENCE_LABELS: dict[str, str] = {"t1": "T1", "t1ce": "T1ce", "t2": "T2", "flair": "FLAIR"}
"""How each sequence is named to people (tables, pages, node names), in channel order."""

CAM_LAYERS: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4")
"""Encoder stages a Grad-CAM map can be taken at; layer4 is the last block, whose pool is the embedding."""
