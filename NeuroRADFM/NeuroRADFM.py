"""NeuroRADFM: a brain-tumour MRI foundation model in 3D Slicer (markers, survival risk, Grad-CAM maps).

Module / Widget / Logic / Test entry points only. The work is done by NeuroRADFMLib (Qt-free, tested on a
real MRML scene) and by the bundled core ``neuroradfm``, which runs out of process (PythonSlicer).
"""

import os
import shutil

import qt
import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

SEQUENCE_LABELS = {"t1": "T1", "t1ce": "T1ce", "t2": "T2", "flair": "FLAIR"}
POLL_MS = 200


class NeuroRADFM(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "NeuroRADFM"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["NeuroRAD-FM developers"]
        self.parent.helpText = (
            "Runs a NeuroRAD-FM model bundle on a loaded T1 / T1ce / T2 / FLAIR case: molecular-marker "
            "probabilities, overall-survival risk, an out-of-distribution flag, and a Grad-CAM map per output, "
            "on the T1ce's grid. The shipped demo model is trained on synthetic phantoms: NOT FOR CLINICAL USE.")
        self.parent.acknowledgementText = "Method after NeuroRAD-FM (arXiv 2509.15416)."


class NeuroRADFMLogic(ScriptedLoadableModuleLogic):
    """Thin facade over NeuroRADFMLib for the widget, the self-tests and the Python console."""

    def settingsFolder(self):
        return os.path.dirname(slicer.app.slicerUserSettingsFilePath)

    def bundles(self):
        from NeuroRADFMLib.bundles import BundleRegistry, available_bundles

        return available_bundles(BundleRegistry(self.settingsFolder()))

    def registerBundle(self, path):
        from NeuroRADFMLib.bundles import BundleRegistry

        return BundleRegistry(self.settingsFolder()).register(path)

    def assignSequences(self, scene=None):
        from NeuroRADFMLib.sequences import assign_sequences, input_volumes

        return assign_sequences(input_volumes(scene or slicer.mrmlScene), getattr(slicer, "dicomDatabase", None))

    def missingPackages(self):
        from NeuroRADFMLib.dependencies import missing_packages

        return missing_packages()

    def installPackages(self, missing):
        from NeuroRADFMLib.dependencies import install

        def installTorch(specifier):
            import PyTorchUtils

            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True, torchVersionRequirement=specifier) \
                    is None:
                raise RuntimeError(f"PyTorch {specifier} was not installed (declined or failed)")

        try:
            import PyTorchUtils  # noqa: F401
            torchInstaller = installTorch
        except ImportError:
            torchInstaller = None
        return install(missing, slicer.util.pip_install, torchInstaller)

    def startPrediction(self, volumes, bundle, device="auto"):
        """A started NeuroRADFMLib.prediction.PredictionJob; poll it, then ``job.load_results(scene)``."""
        from NeuroRADFMLib.prediction import PredictionJob

        return PredictionJob(volumes, bundle, device, python=shutil.which("PythonSlicer"),
                             work_dir=slicer.app.temporaryPath).start()

    def predict(self, volumes, bundle, device="auto", timeout=None):
        """Blocking variant for the console and tests: the results as nodes (NeuroRADFMLib.results.CaseResults)."""
        job = self.startPrediction(volumes, bundle, device)
        job.process.wait(timeout=timeout, on_events=lambda events: slicer.app.processEvents())
        return job.load_results(slicer.mrmlScene)

    def showHead(self, results, key, labels=False, opacity=0.5):
        from NeuroRADFMLib.results import show_head

        return show_head(results, key, slicer.mrmlScene, "labels" if labels else "heatmap", opacity)

    def loadDemoCase(self):
        from NeuroRADFMLib.demo_case import demo_case

        files = demo_case(os.path.join(slicer.app.temporaryPath, "NeuroRADFM-demo-case"))
        return {s: slicer.util.loadVolume(str(path), {"name": f"demo {SEQUENCE_LABELS[s]}"})
                for s, path in files.items()}


def ensureDependencies(logic, statusLabel):
    """First use: offer to install what the core needs (PyTorch through the PyTorch extension). True when ready."""
    from NeuroRADFMLib.dependencies import describe_missing

    missing = logic.missingPackages()
    if not missing:
        return True
    message = describe_missing(missing)
    if not slicer.util.confirmOkCancelDisplay(message + "\n\nInstall them now? This takes several minutes."):
        statusLabel.text = message
        return False
    with slicer.util.tryWithErrorDisplay("Installing NeuroRADFM's packages failed.", waitCursor=True):
        logic.installPackages(missing)
        statusLabel.text = "Packages installed."
    return not logic.missingPackages()


class NeuroRADFMWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.job = None
        self.results = None
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.connect("timeout()", self.onPoll)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/NeuroRADFM.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = NeuroRADFMLogic()
        self.selectors = {"t1": self.ui.t1Selector, "t1ce": self.ui.t1ceSelector, "t2": self.ui.t2Selector,
                          "flair": self.ui.flairSelector}
        self.ui.autoFillButton.connect("clicked(bool)", lambda checked: self.autoFill(force=True))
        self.ui.loadDemoButton.connect("clicked(bool)", self.onLoadDemo)
        self.ui.bundleBrowseButton.connect("clicked(bool)", self.onAddBundle)
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.markerSelector.connect("currentIndexChanged(int)", self.onShowMarker)
        self.ui.showLabelsCheckBox.connect("toggled(bool)", lambda checked: self.onShowMarker())
        self.ui.opacitySlider.connect("valueChanged(double)", lambda value: self.onShowMarker())
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, lambda caller, event: self.clearResults())
        self.refreshBundles()
        self.refreshDevices()
        self.clearResults()

    def enter(self):
        from NeuroRADFMLib.dependencies import describe_missing

        self.refreshBundles(select=self.ui.bundleSelector.currentData)  # bundles NeuroRADFMTrain registered

        missing = self.logic.missingPackages()
        if missing:  # the core's packages come first (Apply offers to install them)
            self.ui.statusLabel.text = describe_missing(missing) + " Apply offers to install them."
            return
        self.autoFill(force=False)

    def cleanup(self):
        self.timer.stop()
        if self.job is not None:
            self.job.cancel()
        self.removeObservers()

    # inputs
    def autoFill(self, force):
        assignment = self.logic.assignSequences()
        for sequence, selector in self.selectors.items():
            if sequence in assignment.assigned and (force or selector.currentNode() is None):
                selector.setCurrentNode(assignment.assigned[sequence])
        notes = [f"{SEQUENCE_LABELS[s]}: several candidates ({', '.join(n.GetName() for n in nodes)})"
                 for s, nodes in assignment.ambiguous.items()]
        notes += [f"{SEQUENCE_LABELS[s]}: no volume recognised" for s in assignment.missing()
                  if s not in assignment.ambiguous]
        if force:
            self.ui.statusLabel.text = "; ".join(notes) if notes else "All four sequences assigned."

    def onLoadDemo(self):
        if not ensureDependencies(self.logic, self.ui.statusLabel):  # the phantom generator is part of the core
            return
        with slicer.util.tryWithErrorDisplay("Could not load the demo case.", waitCursor=True):
            for sequence, node in self.logic.loadDemoCase().items():
                self.selectors[sequence].setCurrentNode(node)

    def refreshBundles(self, select=None):
        self.ui.bundleSelector.clear()
        for entry in self.logic.bundles():
            self.ui.bundleSelector.addItem(entry.name, str(entry.path))
            self.ui.bundleSelector.setItemData(self.ui.bundleSelector.count - 1, f"{entry.path}\n{entry.description}",
                                               qt.Qt.ToolTipRole)
        if select is not None:
            self.ui.bundleSelector.setCurrentIndex(max(0, self.ui.bundleSelector.findData(str(select))))

    def onAddBundle(self):
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "Model bundle folder")
        if folder:
            with slicer.util.tryWithErrorDisplay(f"Could not add the model bundle {folder}."):
                self.refreshBundles(select=self.logic.registerBundle(folder).path)

    def refreshDevices(self):
        from NeuroRADFMLib.devices import list_devices

        current = self.ui.deviceSelector.currentData
        self.ui.deviceSelector.clear()
        for device, label in list_devices():  # GPUs appear once PyTorch is installed
            self.ui.deviceSelector.addItem(label, device)
        if current:
            self.ui.deviceSelector.setCurrentIndex(max(0, self.ui.deviceSelector.findData(current)))

    # running
    def onApply(self):
        if self.job is not None:
            self.cancel()
            return
        if not ensureDependencies(self.logic, self.ui.statusLabel):
            return
        self.refreshDevices()
        volumes = {s: selector.currentNode() for s, selector in self.selectors.items()}
        bundle = self.ui.bundleSelector.currentData
        if not bundle:
            slicer.util.errorDisplay("No model bundle: add one with 'Add bundle...'.")
            return
        with slicer.util.tryWithErrorDisplay("Could not start the prediction.", waitCursor=True):
            self.job = self.logic.startPrediction(volumes, bundle, self.ui.deviceSelector.currentData)
            self.ui.applyButton.text = "Cancel"
            self.ui.progressBar.value = 0
            self.ui.progressBar.show()
            self.ui.statusLabel.text = "Starting..."
            self.timer.start()

    def onPoll(self):
        for event in self.job.poll():
            self.ui.progressBar.value = round(event.progress * 100)
            self.ui.statusLabel.text = f"{event.stage}: {event.message}" if event.message else event.stage
        if not self.job.finished:
            return
        job, self.job = self.job, None
        self.stopRunning()
        with slicer.util.tryWithErrorDisplay("The prediction failed.", waitCursor=True):
            self.showResults(job.load_results(slicer.mrmlScene))
            self.ui.statusLabel.text = "Done."

    def cancel(self):
        job, self.job = self.job, None
        self.stopRunning()
        job.cancel()
        self.ui.statusLabel.text = "Cancelled; the scene is unchanged."

    def stopRunning(self):
        self.timer.stop()
        self.ui.applyButton.text = "Apply"
        self.ui.progressBar.hide()

    # results
    def clearResults(self):
        self.results = None
        self.ui.markerSelector.clear()
        self.ui.resultsTableView.setMRMLTableNode(None)
        self.ui.outputsCollapsibleButton.enabled = False

    def showResults(self, results):
        self.results = results
        self.ui.outputsCollapsibleButton.enabled = True
        self.ui.resultsTableView.setMRMLTableNode(results.table)
        self.ui.markerSelector.blockSignals(True)
        self.ui.markerSelector.clear()
        for key in results.heads:
            self.ui.markerSelector.addItem(results.head_label(key), key)
        self.ui.markerSelector.blockSignals(False)
        ood = results.summary.get("ood") or {}
        self.ui.oodLabel.text = ("OUT OF DISTRIBUTION: this case is unlike the model's training data; do not trust "
                                 "the calls." if ood.get("flag") else "")
        self.onShowMarker()

    def onShowMarker(self, index=None):
        key = self.ui.markerSelector.currentData
        if self.results is not None and key:
            self.logic.showHead(self.results, key, self.ui.showLabelsCheckBox.checked, self.ui.opacitySlider.value)


class NeuroRADFMTest(ScriptedLoadableModuleTest):
    """The demo case through the module logic (longer checks: Testing/Python/NeuroRADFMSelfTest.py)."""

    def runTest(self):
        slicer.mrmlScene.Clear()
        self.test_demo_case()

    def test_demo_case(self):
        import numpy as np

        from NeuroRADFMLib.bundles import demo_bundle
        from NeuroRADFMLib.scene_io import ijk_to_ras

        logic = NeuroRADFMLogic()
        logic.loadDemoCase()
        assignment = logic.assignSequences()
        self.assertEqual(assignment.missing(), [])
        results = logic.predict(assignment.assigned, demo_bundle().path, "cpu", timeout=600)
        self.assertEqual(results.table.GetNumberOfRows(), len(results.heads))
        for node in [*results.heatmaps.values(), *results.labelmaps.values()]:
            np.testing.assert_array_equal(ijk_to_ras(node), ijk_to_ras(assignment.assigned["t1ce"]))
        self.assertEqual(results.segmentation.GetSegmentation().GetNumberOfSegments(), len(results.heads))
        self.assertGreaterEqual(logic.showHead(results, results.heads[0]), 1)
