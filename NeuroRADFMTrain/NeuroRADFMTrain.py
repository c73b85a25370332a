"""NeuroRADFMTrain: train a NeuroRAD-FM model bundle on a cohort, with a live loss curve, and register it.

Module / Widget / Logic / Test entry points only; the work is in NeuroRADFMLib.training (Qt-free) and the
bundled core, run out of process. Two paths: self-supervised pretraining (BYOL / DINO / MAE / MoCo, optional
Group-DRO) followed by probes + Cox + OOD on the frozen encoder, resumable from its checkpoint; and the
supervised stand-in encoder (``neuroradfm train-baseline``). The HTML report stays visibly disabled until
the core writes one.
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

POLL_MS = 500


class NeuroRADFMTrain(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "NeuroRADFM Train"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["NeuroRADFM"]
        self.parent.contributors = ["NeuroRAD-FM developers"]
        self.parent.helpText = (
            "Trains a NeuroRAD-FM model bundle on a cohort (manifest CSV: case_id, site, t1, t1ce, t2, flair, "
            "clinical columns) and registers it for the NeuroRADFM module: self-supervised pretraining of the encoder "
            "(BYOL / DINO / MAE / MoCo, optional Group-DRO across sites), then probes, Cox and OOD on its frozen "
            "embeddings; or a supervised stand-in encoder.")
        self.parent.acknowledgementText = "Method after NeuroRAD-FM (arXiv 2509.15416)."


class NeuroRADFMTrainLogic(ScriptedLoadableModuleLogic):
    def startTraining(self, settings):
        """A started NeuroRADFMLib.training.TrainingJob (poll it; ``job.bundle()`` when finished)."""
        from NeuroRADFMLib.training import TrainingJob

        return TrainingJob(settings, python=shutil.which("PythonSlicer")).start()

    def lossNodes(self):
        """The loss table and its chart (created once, reused)."""
        from NeuroRADFMLib.training import LOSS_CHART_NAME, loss_chart

        table = slicer.mrmlScene.GetFirstNodeByName(f"{LOSS_CHART_NAME} table")
        if table is None:
            table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", f"{LOSS_CHART_NAME} table")
        return table, loss_chart(slicer.mrmlScene, table)[1]

    def registerBundle(self, path):
        from NeuroRADFMLib.bundles import BundleRegistry

        return BundleRegistry(os.path.dirname(slicer.app.slicerUserSettingsFilePath)).register(path)


class NeuroRADFMTrainWidget(ScriptedLoadableModuleWidget):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.job = None
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.connect("timeout()", self.onPoll)

    def setup(self):
        from NeuroRADFMLib.devices import list_devices
        from NeuroRADFMLib.training import DRO_MODES, SSL_METHODS, pretrain_available

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/NeuroRADFMTrain.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = NeuroRADFMTrainLogic()
        for method in SSL_METHODS:
            self.ui.sslMethodComboBox.addItem(method.upper(), method)
        for mode, label in DRO_MODES.items():
            self.ui.droModeComboBox.addItem(label, mode)
        for device, label in list_devices():
            self.ui.deviceSelector.addItem(label, device)
        self.pretrain = pretrain_available()
        self.controls = {"ssl": self.ui.sslCheckBox, "method": self.ui.sslMethodComboBox, "dro": self.ui.droCheckBox,
                         "dro_mode": self.ui.droModeComboBox, "group_column": self.ui.groupColumnLineEdit,
                         "resume": self.ui.resumeCheckBox, "tumour_weight": self.ui.tumourWeightSpinBox,
                         "fine_tune": self.ui.fineTuneEpochsSpinBox, "report": self.ui.openReportButton}
        self.defaultTips = {key: widget.toolTip for key, widget in self.controls.items()}
        self.ui.sslCheckBox.connect("toggled(bool)", self.updateControls)
        self.ui.droCheckBox.connect("toggled(bool)", self.updateControls)
        self.ui.fineTuneEpochsSpinBox.connect("valueChanged(int)", self.updateControls)
        self.ui.startButton.connect("clicked(bool)", self.onStart)
        self.ui.progressBar.hide()
        self.updateControls()

    def updateControls(self, *_):
        """Apply the Lib's enabled states and tooltips (what the core offers, what the choices allow)."""
        from NeuroRADFMLib.training import control_states, method_description

        ssl = self.pretrain and self.ui.sslCheckBox.checked
        fine_tune = self.ui.fineTuneEpochsSpinBox.value > 0
        states = control_states(self.pretrain, self.ui.sslCheckBox.checked, self.ui.droCheckBox.checked, fine_tune)
        for key, (enabled, tip) in states.items():
            self.controls[key].enabled = enabled
            self.controls[key].toolTip = tip or self.defaultTips[key]
        self.ui.encoderMethodLabel.text = method_description(ssl, fine_tune)

    def cleanup(self):
        self.timer.stop()
        if self.job is not None:
            self.job.cancel()

    def settings(self):
        from pathlib import Path

        from NeuroRADFMLib.training import TrainingSettings

        if not self.ui.cohortPathLineEdit.currentPath or not self.ui.outputPathLineEdit.currentPath:
            raise ValueError("choose a cohort (manifest CSV or folder) and an output folder for the bundle")
        ssl = self.ui.sslCheckBox.enabled and self.ui.sslCheckBox.checked
        dro = ssl and self.ui.droCheckBox.checked
        fine_tune = self.ui.fineTuneEpochsSpinBox.value if ssl else 0
        out = Path(self.ui.outputPathLineEdit.currentPath) / (self.ui.bundleNameLineEdit.text or "neuroradfm-bundle")
        return TrainingSettings(
            cohort=Path(self.ui.cohortPathLineEdit.currentPath), out=out, epochs=self.ui.epochsSpinBox.value,
            device=self.ui.deviceSelector.currentData,
            tumour_weight=self.ui.tumourWeightSpinBox.value if not ssl or fine_tune else 0.0,
            cache=out.parent / "preprocessed-cache" if self.ui.cacheCheckBox.checked else None,
            name=self.ui.bundleNameLineEdit.text or None,
            ssl_method=self.ui.sslMethodComboBox.currentData if ssl else None,
            dro=dro, dro_mode=self.ui.droModeComboBox.currentData if dro else "exponentiated",
            group_column=self.ui.groupColumnLineEdit.text or "site", resume=ssl and self.ui.resumeCheckBox.checked,
            fine_tune_epochs=fine_tune)

    def onStart(self):
        if self.job is not None:
            job, self.job = self.job, None
            self.stopRunning()
            job.cancel()
            self.ui.statusLabel.text = job.cancel_summary()
            return
        from NeuroRADFM import NeuroRADFMLogic, ensureDependencies

        if not ensureDependencies(NeuroRADFMLogic(), self.ui.statusLabel):
            return
        with slicer.util.tryWithErrorDisplay("Could not start training.", waitCursor=True):
            self.job = self.logic.startTraining(self.settings())
            self.table, chart = self.logic.lossNodes()
            slicer.modules.plots.logic().ShowChartInLayout(chart)
            self.ui.startButton.text = "Cancel"
            self.ui.progressBar.value = 0
            self.ui.progressBar.show()
            self.timer.start()

    def onPoll(self):
        from NeuroRADFMLib.training import update_loss_table

        for event in self.job.poll():
            self.ui.progressBar.value = round(event.progress * 100)
            self.ui.statusLabel.text = f"{event.stage}: {event.message}" if event.message else event.stage
        update_loss_table(self.table, self.job.metrics_path)
        if not self.job.finished:
            return
        job, self.job = self.job, None
        self.stopRunning()
        with slicer.util.tryWithErrorDisplay("Training failed."):
            entry = self.logic.registerBundle(job.bundle())
            self.ui.resumeCheckBox.checked = False
            self.ui.statusLabel.text = f"Bundle {entry.name} written to {entry.path} and registered for NeuroRADFM."

    def stopRunning(self):
        self.timer.stop()
        self.ui.startButton.text = "Start training"
        self.ui.progressBar.hide()


class NeuroRADFMTrainTest(ScriptedLoadableModuleTest):
    """Short checks inside Slicer (the training run itself is tested by the pytest suite and
    Testing/Python/NeuroRADFMTrainSelfTest.py)."""

    def runTest(self):
        slicer.mrmlScene.Clear()
        self.test_loss_nodes()

    def test_loss_nodes(self):
        logic = NeuroRADFMTrainLogic()
        table, chart = logic.lossNodes()
        self.assertEqual(logic.lossNodes(), (table, chart))
        self.assertTrue(chart.IsA("vtkMRMLPlotChartNode"))
