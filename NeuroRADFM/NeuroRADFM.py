"""NeuroRADFM: a brain-tumour MRI foundation model in 3D Slicer (markers, survival risk, Grad-CAM maps).

Module / Widget / Logic / Test entry points only. The work is done by NeuroRADFMLib (Qt-free, tested on a
real MRML scene) and by the bundled core ``neuroradfm``, which runs out of process (PythonSlicer).
"""

import html
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
        from NeuroRADFMLib.compatibility import version_note  # Python 3.9-safe: says so in a Slicer < 5.10

        self.parent.helpText = version_note() + (
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

    def bundlesFolder(self):
        """Where imported bundles live: <Slicer settings folder>/NeuroRADFM/bundles."""
        from NeuroRADFMLib.bundles import bundles_folder

        return bundles_folder(self.settingsFolder())

    def importBundle(self, source):
        """Verify a bundle folder or .zip, copy it into bundlesFolder() and register it (NeuroRADFMLib ImportResult)."""
        from NeuroRADFMLib.bundles import BundleRegistry, import_bundle

        return import_bundle(source, self.bundlesFolder(), BundleRegistry(self.settingsFolder()))

    def assignSequences(self, scene=None):
        from NeuroRADFMLib.sequences import assign_sequences, input_volumes

        return assign_sequences(input_volumes(scene or slicer.mrmlScene), getattr(slicer, "dicomDatabase", None))

    def missingPackages(self):
        """What the core needs and this Slicer lacks (NeuroRADFMLib.dependencies.Missing; Python too if too old)."""
        from NeuroRADFMLib.dependencies import missing_packages

        return missing_packages()

    def installPackages(self, plan=None):
        """Carry out a NeuroRADFMLib.dependencies plan (default: ``check()``, from the internet): PyTorch through the
        PyTorch extension without its own confirmation (the caller asked once), the rest with pip_install."""
        from NeuroRADFMLib.dependencies import check, install

        def installTorch(specifier):
            import PyTorchUtils

            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                            torchVersionRequirement=specifier) is None:
                raise RuntimeError(f"PyTorch {specifier} was not installed")

        return install(plan or check(), slicer.util.pip_install, installTorch)

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
    """First use: one question, then the install (from PyPI, or offline from a wheel folder: $NEURORADFM_WHEELHOUSE
    or the dialog). Ends in a status message, never an exception out of a Qt slot. True when ready."""
    from NeuroRADFMWidgets.dependency_dialog import ensurePackages

    return ensurePackages(logic, statusLabel)


def versionGate(layout, uiWidget):
    """Slicer too old: its message above the panel, the panel (and Apply) disabled; returns the message or None."""
    from NeuroRADFMLib.compatibility import version_problem  # runs on Python 3.9, unlike the rest of the Lib

    problem = version_problem()
    if problem:
        label = qt.QLabel(problem)
        label.wordWrap = True
        label.setStyleSheet("QLabel { color: #c00000; font-weight: bold; }")
        layout.addWidget(label)
        uiWidget.enabled = False
    return problem


def skipUnlessReady():
    """unittest.SkipTest naming the reason when this Slicer is too old or the core's packages are not installed (a
    clean build, as on the extension factory): the self-tests skip instead of failing."""
    import unittest

    from NeuroRADFMLib.compatibility import self_test_skip_reason

    reason = self_test_skip_reason()
    if reason:
        raise unittest.SkipTest(reason)


class NeuroRADFMWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.job = None
        self.results = None
        self.deviceListing = None
        self.versionProblem = None
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.connect("timeout()", self.onPoll)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/NeuroRADFM.ui"))
        self.versionProblem = versionGate(self.layout, uiWidget)  # Slicer < 5.10: one message, panel disabled
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        if self.versionProblem:
            return
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
        from NeuroRADFMWidgets.device_selector import lazyDeviceSelector

        # no PyTorch import here: the devices are listed when the selector is first used, or on Apply
        self.deviceFilter = lazyDeviceSelector(self.ui.deviceSelector,
                                               lambda: self.deviceListing is None and self.refreshDevices())
        self.clearResults()
        from NeuroRADFMWidgets.teaching import TeachingSection  # a pack's case, its answers behind Reveal

        self.teaching = TeachingSection(self.layout, lambda label: ensureDependencies(self.logic, label))

    def enter(self):
        if self.versionProblem:
            return
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
        from NeuroRADFMLib.bundles import bundle_labels

        entries = self.logic.bundles()
        self.ui.bundleSelector.clear()
        for entry, label in zip(entries, bundle_labels(entries)):
            self.ui.bundleSelector.addItem(label, str(entry.path))
            self.ui.bundleSelector.setItemData(self.ui.bundleSelector.count - 1, f"{entry.path}\n{entry.description}",
                                               qt.Qt.ToolTipRole)
        if select is not None:
            self.ui.bundleSelector.setCurrentIndex(max(0, self.ui.bundleSelector.findData(str(select))))
        folder = self.logic.bundlesFolder()
        shown = html.escape(str(folder))  # a link opens the folder in the file manager once an import made it
        self.ui.bundleFolderLabel.text = "Imported bundles: " + (
            f'<a href="{qt.QUrl.fromLocalFile(str(folder)).toString()}">{shown}</a>' if folder.is_dir() else shown)

    def onAddBundle(self):
        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(), "Import a model bundle: its card.json, or a .zip of the bundle folder", "",
            "Model bundle (card.json *.zip);;All files (*)")
        if not path or not ensureDependencies(self.logic, self.ui.statusLabel):  # the core's loader verifies it
            return
        source = os.path.dirname(path) if os.path.basename(path) == "card.json" else path
        try:
            with slicer.util.tryWithErrorDisplay(f"Could not import the model bundle {source}.", waitCursor=True):
                result = self.logic.importBundle(source)
        except Exception:
            return  # shown (and logged) by tryWithErrorDisplay
        self.refreshBundles(select=result.entry.path)
        self.ui.statusLabel.text = result.message

    def refreshDevices(self):
        """List the devices (imports PyTorch) unless they were listed with PyTorch loaded already."""
        from NeuroRADFMWidgets.device_selector import listDevices

        if self.deviceListing is None or not self.deviceListing.torch_loaded:  # GPUs appear once PyTorch loads
            self.deviceListing = listDevices(self.ui.deviceSelector, self.ui.statusLabel)

    # running
    def onApply(self):
        from NeuroRADFMWidgets.device_selector import chosenDeviceUsable

        if self.job is not None:
            self.cancel()
            return
        if not ensureDependencies(self.logic, self.ui.statusLabel):
            return
        self.refreshDevices()
        if not chosenDeviceUsable(self.deviceListing, self.ui.deviceSelector):  # a GPU this PyTorch cannot use
            return
        volumes = {s: selector.currentNode() for s, selector in self.selectors.items()}
        bundle = self.ui.bundleSelector.currentData
        if not bundle:
            slicer.util.errorDisplay("No model bundle: import one with 'Import bundle...'.")
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
        warning = ("OUT OF DISTRIBUTION: this case is unlike the model's training data; do not trust the calls."
                   if ood.get("flag") else "")
        # which sequences the calls rest on, and the card's held-out AUC for them
        self.ui.oodLabel.text = "\n".join(text for text in (warning, results.reliability_note) if text)
        self.onShowMarker()

    def onShowMarker(self, index=None):
        key = self.ui.markerSelector.currentData
        if self.results is not None and key:
            self.logic.showHead(self.results, key, self.ui.showLabelsCheckBox.checked, self.ui.opacitySlider.value)


class NeuroRADFMTest(ScriptedLoadableModuleTest):
    """The demo case through the module logic (longer checks: Testing/Python/NeuroRADFMSelfTest.py)."""

    def setUp(self):
        skipUnlessReady()  # Slicer too old, or the core's packages not installed (a clean build)

    def runTest(self):
        import unittest

        try:
            self.setUp()
        except unittest.SkipTest as skipped:
            self.delayDisplay(f"NeuroRADFM self-test skipped: {skipped}")
            return
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
