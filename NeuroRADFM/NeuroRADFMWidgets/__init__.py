"""Qt parts of the NeuroRADFM modules that outgrew the entry files (NeuroRADFM.py, NeuroRADFMTrain.py).

Thin: each takes its data from NeuroRADFMLib (Qt-free, tested without Slicer) and only fills widgets.

- ``device_selector``: the device combo box, listed on first use (PyTorch is never imported in a widget's setup)
"""
