"""The synthetic multi-site phantom cohort: real MNI152 anatomy, planted tumour biology, known truth.

See docs/PHANTOM.md for every rule.
"""

from neuroradfm.phantom.cohort import case_id, generate_case, generate_cohort

__all__ = ["case_id", "generate_case", "generate_cohort"]
