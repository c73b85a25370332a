"""The synthetic multi-site phantom cohort: real MNI152 anatomy, planted tumour biology, known truth.

See docs/PHANTOM.md for every rule.
"""

from neuroradfm.phantom.anatomy import PhantomOptions
from neuroradfm.phantom.cohort import case_id, draw_case, generate_case, generate_cohort

__all__ = ["PhantomOptions", "case_id", "draw_case", "generate_case", "generate_cohort"]
