"""Qt-free scene glue of the NeuroRADFM extension (MRML nodes <-> files, results -> nodes, processes, batch).

Imports slicer (MRML) but never qt, so it runs in Slicer, in Slicer's Python console and in the
pytest suite against a real ``vtkMRMLScene`` from the PyPI package slicer-core. One concern per file:

- ``sequences``: which loaded volume is T1 / T1ce / T2 / FLAIR (the core's naming rules)
- ``scene_io``: volume nodes <-> NRRD files through storage nodes; geometry checks
- ``results``: a core output folder -> table, heatmap, label map, color table and segmentation nodes
- ``process``: the out-of-process core run (``PythonSlicer -m neuroradfm ...``) with JSON progress
- ``prediction``: the NeuroRADFM module's job (nodes -> temp files -> process -> result nodes)
- ``training``: the NeuroRADFMTrain module's job, loss curve table and plot
- ``cohorts``: the NeuroRADFMTrain module's cohort selector: import a dataset folder, check it, the check table
- ``bundles``: the demo bundle and a registry of trained bundles
- ``devices``: CPU and CUDA GPUs by name, listed on demand; GPUs this PyTorch build cannot run on
- ``compatibility``: the Slicer / Python the extension needs (5.10 / 3.10), self-test skip reasons; runs on 3.9
- ``dependencies``: the first-use package check
- ``batch``: the documented batch API for Slicer's Python console
"""
