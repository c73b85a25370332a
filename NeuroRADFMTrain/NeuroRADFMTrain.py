"""NeuroRADFMTrain: train a NeuroRAD-FM model bundle on a cohort, with a live loss curve, and register it.

Module / Widget / Logic / Test entry points only; the work is in NeuroRADFMLib.training (Qt-free) and the
bundled core, run out of process. Two paths: self-supervised pretraining (BYOL / DINO / MAE / MoCo, optional
Group-DRO) followed by probes + Cox + OOD on the frozen encoder, resumable from its checkpoint; and the
supervised stand-in encoder (``neuroradfm train-baseline``). Evaluate runs ``neuroradfm evaluate`` on the bundle
just trained (optionally compared with a second one) out of process (NeuroRADFMLib.evaluation), puts its results
table in the scene and opens its HTML report. The cohort (a manifest, or a dataset folder imported into the output
folder) is checked before training, its check shown as a table; errors refuse training (NeuroRADFMLib.cohorts).
"""

import os
import shutil

import ctk
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
        from NeuroRADFMLib.compatibility import version_note  # Python 3.9-safe: says so in a Slicer < 5.10

        self.parent.helpText = version_note() + (
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

    def startCohortCheck(self, source):
        """A started NeuroRADFMLib.cohorts.CohortCheckJob: import (a dataset folder) and check; ``job.result()``."""
        from NeuroRADFMLib.cohorts import CohortCheckJob

        return CohortCheckJob(source, python=shutil.which("PythonSlicer")).start()

    def cohortCheckTable(self, report):
        from NeuroRADFMLib.cohorts import check_table

        return check_table(slicer.mrmlScene, report)

    def lossNodes(self):
        """The loss table and its chart (created once, reused)."""
        from NeuroRADFMLib.training import LOSS_CHART_NAME, loss_chart

        table = slicer.mrmlScene.GetFirstNodeByName(f"{LOSS_CHART_NAME} table")
        if table is None:
            table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", f"{LOSS_CHART_NAME} table")
        return table, loss_chart(slicer.mrmlScene, table)[1]

    def startEvaluation(self, settings):
        """A started NeuroRADFMLib.evaluation.EvaluationJob (poll it; ``job.report()`` when finished)."""
        from NeuroRADFMLib.evaluation import EvaluationJob

        return EvaluationJob(settings, python=shutil.which("PythonSlicer")).start()

    def showEvaluationTable(self, metrics_path):
        """The evaluation's table node (one per scene, its rows replaced by a rerun), shown in a table view."""
        from NeuroRADFMLib.evaluation import evaluation_table

        table = evaluation_table(slicer.mrmlScene, metrics_path)
        layoutManager = slicer.app.layoutManager()
        layoutManager.setLayout(slicer.modules.tables.logic().GetLayoutWithTable(layoutManager.layout))
        slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(table.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()
        return table

    def registerBundle(self, path):
        from NeuroRADFMLib.bundles import BundleRegistry

        return BundleRegistry(os.path.dirname(slicer.app.slicerUserSettingsFilePath)).register(path)


class NeuroRADFMTrainWidget(ScriptedLoadableModuleWidget):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.job = None
        self.onDone = None
        self.table = None
        self.reportDialog = None
        self.cohortCheck = None
        self.trainAfterCheck = False
        self.deviceListing = None
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.connect("timeout()", self.onPoll)

    def setup(self):
        from NeuroRADFM import versionGate

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/NeuroRADFMTrain.ui"))
        versionProblem = versionGate(self.layout, uiWidget)  # Slicer < 5.10: one message, panel (Start) disabled
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        if versionProblem:
            return
        from NeuroRADFMLib.cohorts import source_choices
        from NeuroRADFMLib.evaluation import SPLITS
        from NeuroRADFMLib.training import DRO_MODES, SSL_METHODS, pretrain_available
        from NeuroRADFMWidgets.device_selector import lazyDeviceSelector

        self.logic = NeuroRADFMTrainLogic()
        for method in SSL_METHODS:
            self.ui.sslMethodComboBox.addItem(method.upper(), method)
        for mode, label in DRO_MODES.items():
            self.ui.droModeComboBox.addItem(label, mode)
        # no PyTorch import here: the devices are listed when the selector is first used, or on Start / Evaluate
        self.deviceFilter = lazyDeviceSelector(self.ui.deviceSelector,
                                               lambda: self.deviceListing is None and self.refreshDevices())
        for split, label in SPLITS.items():
            self.ui.splitComboBox.addItem(label, split)
        for layout, label in source_choices():  # a manifest, or a dataset folder of each layout the core imports
            self.ui.layoutComboBox.addItem(label, layout)
        self.manifestFilters = self.ui.cohortPathLineEdit.filters
        self.pretrain = pretrain_available()
        self.controls = {"ssl": self.ui.sslCheckBox, "method": self.ui.sslMethodComboBox, "dro": self.ui.droCheckBox,
                         "dro_mode": self.ui.droModeComboBox, "group_column": self.ui.groupColumnLineEdit,
                         "resume": self.ui.resumeCheckBox, "tumour_weight": self.ui.tumourWeightSpinBox,
                         "fine_tune": self.ui.fineTuneEpochsSpinBox, "report": self.ui.openReportButton,
                         "evaluate": self.ui.evaluateButton, "folds": self.ui.foldsSpinBox,
                         "split_column": self.ui.splitColumnLineEdit, "clinical": self.ui.clinicalPathLineEdit,
                         "check": self.ui.checkCohortButton}
        self.defaultTips = {key: widget.toolTip for key, widget in self.controls.items()}
        self.ui.sslCheckBox.connect("toggled(bool)", self.updateControls)
        self.ui.droCheckBox.connect("toggled(bool)", self.updateControls)
        self.ui.fineTuneEpochsSpinBox.connect("valueChanged(int)", self.updateControls)
        self.ui.splitComboBox.connect("currentIndexChanged(int)", self.updateControls)
        self.ui.layoutComboBox.connect("currentIndexChanged(int)", self.updateControls)
        for path in (self.ui.cohortPathLineEdit, self.ui.outputPathLineEdit, self.ui.evaluateBundlePathLineEdit,
                     self.ui.compareBundlePathLineEdit, self.ui.clinicalPathLineEdit):
            path.connect("currentPathChanged(QString)", self.updateControls)
        self.ui.startButton.connect("clicked(bool)", self.onStart)
        self.ui.checkCohortButton.connect("clicked(bool)", self.onCheckCohort)
        self.ui.cohortCheckTableView.hide()
        self.ui.evaluateButton.connect("clicked(bool)", self.onEvaluate)
        self.ui.openReportButton.connect("clicked(bool)", self.onOpenReport)
        self.ui.progressBar.hide()
        self.updateControls()

    def refreshDevices(self):
        """List the devices (imports PyTorch) unless they were listed with PyTorch loaded already."""
        from NeuroRADFMWidgets.device_selector import listDevices

        if self.deviceListing is None or not self.deviceListing.torch_loaded:
            self.deviceListing = listDevices(self.ui.deviceSelector, self.ui.statusLabel)

    def deviceUsable(self):
        from NeuroRADFMWidgets.device_selector import chosenDeviceUsable

        self.refreshDevices()
        return chosenDeviceUsable(self.deviceListing, self.ui.deviceSelector)

    def updateControls(self, *_):
        """Apply the Lib's enabled states and tooltips (what the core offers, what the choices allow)."""
        from NeuroRADFMLib.cohorts import CHECK_RUNNING, MANIFEST_SOURCE, check_button_text, cohort_states, source_tip
        from NeuroRADFMLib.evaluation import evaluation_states
        from NeuroRADFMLib.training import control_states, method_description

        ssl = self.pretrain and self.ui.sslCheckBox.checked
        fine_tune = self.ui.fineTuneEpochsSpinBox.value > 0
        states = control_states(self.pretrain, self.ui.sslCheckBox.checked, self.ui.droCheckBox.checked, fine_tune,
                                report=self.reportPath())
        kind = (None if self.job is None else "evaluate" if self.onDone == self.onEvaluated
                else "check" if self.onDone == self.onChecked and not self.trainAfterCheck else "train")
        states.update(evaluation_states(self.ui.cohortPathLineEdit.currentPath, self.ui.outputPathLineEdit.currentPath,
                                        self.bundlePaths(), self.ui.splitComboBox.currentData,
                                        training=kind == "train", evaluating=kind == "evaluate"))
        layout = self.ui.layoutComboBox.currentData
        states.update(cohort_states(layout, kind))
        if kind == "check":
            states["evaluate"] = (False, CHECK_RUNNING)
        else:
            self.ui.checkCohortButton.text = check_button_text(layout)
        self.ui.startButton.enabled = kind in (None, "train")
        self.ui.cohortPathLineEdit.toolTip = source_tip(layout)
        filters = self.manifestFilters if layout == MANIFEST_SOURCE else ctk.ctkPathLineEdit.Dirs
        if self.ui.cohortPathLineEdit.filters != filters:  # browsing picks a folder for a dataset
            self.ui.cohortPathLineEdit.filters = filters
        for key, (enabled, tip) in states.items():
            self.controls[key].enabled = enabled
            self.controls[key].toolTip = tip or self.defaultTips[key]
        self.ui.encoderMethodLabel.text = method_description(ssl, fine_tune)

    def cleanup(self):
        self.timer.stop()
        if self.job is not None:
            self.job.cancel()

    def cohortSource(self):
        from NeuroRADFMLib.cohorts import cohort_source, takes_clinical

        layout = self.ui.layoutComboBox.currentData  # a clinical table left from another layout's choice: not used
        return cohort_source(self.ui.cohortPathLineEdit.currentPath, layout, self.ui.clinicalPathLineEdit.currentPath
                             if takes_clinical(layout) else "", self.ui.outputPathLineEdit.currentPath)

    def settings(self, check=None):
        from pathlib import Path

        from NeuroRADFMLib.training import TrainingSettings

        if not self.ui.cohortPathLineEdit.currentPath or not self.ui.outputPathLineEdit.currentPath:
            raise ValueError("choose a cohort (manifest CSV or folder) and an output folder for the bundle")
        ssl = self.ui.sslCheckBox.enabled and self.ui.sslCheckBox.checked
        dro = ssl and self.ui.droCheckBox.checked
        fine_tune = self.ui.fineTuneEpochsSpinBox.value if ssl else 0
        out = Path(self.ui.outputPathLineEdit.currentPath) / (self.ui.bundleNameLineEdit.text or "neuroradfm-bundle")
        return TrainingSettings(
            cohort=check.manifest if check else self.cohortSource().manifest(imported=True), out=out,
            epochs=self.ui.epochsSpinBox.value, cohort_check=check,
            device=self.ui.deviceSelector.currentData,
            tumour_weight=self.ui.tumourWeightSpinBox.value if not ssl or fine_tune else 0.0,
            cache=out.parent / "preprocessed-cache" if self.ui.cacheCheckBox.checked else None,
            name=self.ui.bundleNameLineEdit.text or None,
            ssl_method=self.ui.sslMethodComboBox.currentData if ssl else None,
            dro=dro, dro_mode=self.ui.droModeComboBox.currentData if dro else "exponentiated",
            group_column=self.ui.groupColumnLineEdit.text or "site", resume=ssl and self.ui.resumeCheckBox.checked,
            fine_tune_epochs=fine_tune)

    def bundlePaths(self):
        return [self.ui.evaluateBundlePathLineEdit.currentPath, self.ui.compareBundlePathLineEdit.currentPath]

    def evaluationOut(self):
        from NeuroRADFMLib.evaluation import evaluation_folder

        return evaluation_folder(self.ui.outputPathLineEdit.currentPath, self.bundlePaths())

    def reportPath(self):
        from NeuroRADFMLib.evaluation import report_path

        return report_path(self.evaluationOut()) if self.ui.outputPathLineEdit.currentPath else None

    def evaluationSettings(self):
        from pathlib import Path

        from NeuroRADFMLib.evaluation import EvaluationSettings

        if not self.ui.cohortPathLineEdit.currentPath or not self.ui.outputPathLineEdit.currentPath:
            raise ValueError("choose a cohort (manifest CSV or folder) and an output folder for the report")
        return EvaluationSettings(
            cohort=self.cohortSource().manifest(imported=True), bundles=[Path(b) for b in self.bundlePaths() if b],
            out=self.evaluationOut(), split=self.ui.splitComboBox.currentData, folds=self.ui.foldsSpinBox.value,
            split_column=self.ui.splitColumnLineEdit.text, device=self.ui.deviceSelector.currentData)

    def onStart(self):
        if self.job is not None:
            return self.cancelJob()
        from NeuroRADFM import NeuroRADFMLogic, ensureDependencies

        if not ensureDependencies(NeuroRADFMLogic(), self.ui.statusLabel) or not self.deviceUsable():
            return
        with slicer.util.tryWithErrorDisplay("Could not start training.", waitCursor=True):
            check = self.cohortCheck  # the last check, while it is of this cohort and its manifest is unchanged
            if check is None or not check.current(self.cohortSource()):  # check (import) first; trains if clean
                return self.runCohortCheck(train=True)
            job = self.logic.startTraining(self.settings(check))  # refused while the check has errors
            self.table, chart = self.logic.lossNodes()
            slicer.modules.plots.logic().ShowChartInLayout(chart)
            self.startRunning(job, self.ui.startButton, self.onTrained)

    def onCheckCohort(self):
        if self.job is not None:
            return self.cancelJob()
        with slicer.util.tryWithErrorDisplay("Could not check the cohort.", waitCursor=True):
            self.runCohortCheck(train=False)

    def runCohortCheck(self, train):
        """Import (a dataset folder) and check out of process; ``train``: Start training asked, train if clean."""
        source = self.cohortSource()
        self.trainAfterCheck = train
        self.startRunning(self.logic.startCohortCheck(source), self.ui.startButton if train
                          else self.ui.checkCohortButton, self.onChecked)
        self.ui.cohortCheckLabel.text = self.ui.statusLabel.text = (
            f"Importing {source.path} ({source.layout}), then checking it..." if source.imports
            else f"Checking {source.path}...")

    def onChecked(self, job):
        with slicer.util.tryWithErrorDisplay("The cohort check failed."):
            self.cohortCheck = check = job.result()
            self.ui.cohortCheckTableView.setMRMLTableNode(self.logic.cohortCheckTable(check.report))
            self.ui.cohortCheckTableView.show()
            self.ui.cohortCheckLabel.text = self.ui.statusLabel.text = check.summary()
        if self.trainAfterCheck and check.status == "warnings":
            self.ui.statusLabel.text = "The cohort has warnings (in the table): press Start training again to train."
        elif self.trainAfterCheck and check.current(self.cohortSource()):  # clean: train; errors: refused (dialog)
            self.onStart()

    def onEvaluate(self):
        if self.job is not None:
            return self.cancelJob()
        from NeuroRADFM import NeuroRADFMLogic, ensureDependencies

        if not ensureDependencies(NeuroRADFMLogic(), self.ui.statusLabel) or not self.deviceUsable():
            return
        with slicer.util.tryWithErrorDisplay("Could not start the evaluation.", waitCursor=True):
            self.startRunning(self.logic.startEvaluation(self.evaluationSettings()), self.ui.evaluateButton,
                              self.onEvaluated)

    def onPoll(self):
        from NeuroRADFMLib.training import update_loss_table

        for event in self.job.poll():
            self.ui.progressBar.value = round(event.progress * 100)
            self.ui.statusLabel.text = f"{event.stage}: {event.message}" if event.message else event.stage
        if self.table is not None:
            update_loss_table(self.table, self.job.metrics_path)
        if not self.job.finished:
            return
        job, done = self.job, self.onDone
        self.stopRunning()
        try:
            done(job)
        finally:  # also after a failure (the dialog re-raises): the buttons say what they do again
            self.updateControls()

    def onTrained(self, job):
        with slicer.util.tryWithErrorDisplay("Training failed."):
            entry = self.logic.registerBundle(job.bundle())
            self.ui.resumeCheckBox.checked = False
            self.ui.evaluateBundlePathLineEdit.currentPath = str(entry.path)
            self.ui.statusLabel.text = f"Bundle {entry.name} written to {entry.path} and registered for NeuroRADFM."

    def onEvaluated(self, job):
        from NeuroRADFMLib.evaluation import METRICS_FILE

        with slicer.util.tryWithErrorDisplay("Evaluation failed."):
            report = job.report()
            table = self.logic.showEvaluationTable(report.parent / METRICS_FILE)
            self.ui.statusLabel.text = (f"Evaluation report written to {report}; its numbers are in the table "
                                        f"{table.GetName()}.")

    def onOpenReport(self):
        """The report in Slicer's web view (a dialog); the system browser where Slicer has no web engine."""
        from NeuroRADFMLib.evaluation import report_url

        path = self.reportPath()
        if path is None:
            return
        url = report_url(path)
        try:
            web = slicer.qSlicerWebWidget()
        except AttributeError:
            qt.QDesktopServices.openUrl(qt.QUrl(url))
            return
        self.reportDialog = qt.QDialog(slicer.util.mainWindow())
        self.reportDialog.setWindowTitle(f"NeuroRAD-FM evaluation report: {path}")
        qt.QVBoxLayout(self.reportDialog).addWidget(web)
        web.setUrl(url)
        self.reportDialog.resize(1100, 800)
        self.reportDialog.show()

    def startRunning(self, job, button, onDone):
        self.job, self.onDone = job, onDone
        button.text = "Cancel"
        self.ui.progressBar.value = 0
        self.ui.progressBar.show()
        self.timer.start()
        self.updateControls()

    def cancelJob(self):
        job = self.job
        self.stopRunning()
        job.cancel()
        self.ui.statusLabel.text = job.cancel_summary()
        self.updateControls()

    def stopRunning(self):
        self.timer.stop()
        self.job, self.onDone, self.table = None, None, None
        self.ui.startButton.text = "Start training"
        self.ui.evaluateButton.text = "Evaluate"
        self.ui.progressBar.hide()


class NeuroRADFMTrainTest(ScriptedLoadableModuleTest):
    """Short checks inside Slicer (the training run itself is tested by the pytest suite and
    Testing/Python/NeuroRADFMTrainSelfTest.py)."""

    def runTest(self):
        slicer.mrmlScene.Clear()
        self.test_loss_nodes()
        self.test_evaluation_table()

    def test_loss_nodes(self):
        logic = NeuroRADFMTrainLogic()
        table, chart = logic.lossNodes()
        self.assertEqual(logic.lossNodes(), (table, chart))
        self.assertTrue(chart.IsA("vtkMRMLPlotChartNode"))

    def test_evaluation_table(self):
        import json

        path = os.path.join(slicer.app.temporaryPath, "NeuroRADFMTrainTest.metrics.json")
        with open(path, "w") as handle:
            json.dump({"results": {"erm": {"markers": {"mgmt": {"status": "not evaluable", "reason": "no column"}},
                                           "survival": {"status": "not evaluable", "reason": "no os_days"}}}},
                      handle)
        logic = NeuroRADFMTrainLogic()
        table = logic.showEvaluationTable(path)
        self.assertEqual(table.GetNumberOfRows(), 2)
        self.assertIs(logic.showEvaluationTable(path), table)
