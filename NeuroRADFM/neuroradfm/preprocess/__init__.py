"""Preprocessing: a Case onto the model grid in MNI152 space, with the inverse kept."""

from neuroradfm.preprocess.grid import model_grid
from neuroradfm.preprocess.pipeline import Preprocessed, prepare_case, preprocess_case, usable_sequences
from neuroradfm.preprocess.settings import PreprocessSettings

__all__ = ["PreprocessSettings", "Preprocessed", "model_grid", "prepare_case", "preprocess_case", "usable_sequences"]
