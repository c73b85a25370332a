"""Teaching: exercise packs with known answers (``neuroradfm teach``), the offline case viewer, and the
shortcut-learning lesson (``neuroradfm lesson``)."""
