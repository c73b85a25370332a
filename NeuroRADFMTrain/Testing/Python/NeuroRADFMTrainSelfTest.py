"""Self-test inside Slicer: NeuroRADFMTrain's loss curve nodes follow a metrics file written by the core,
and the controls follow the core and the choices (SSL method, Group-DRO and Resume with Self-supervised;
the tumour weight with the supervised stand-in; no evaluation report yet); the cohort selector offers every layout
of the core, and a check of a tiny BraTS 2021 folder imported into an output folder fills the check table.
Skipped, with the reason, in a Slicer older than 5.10 or where the core's Python packages are not installed (a clean
build, as on the extension factory)."""

import os
import unittest

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest


class NeuroRADFMTrainSelfTest(ScriptedLoadableModuleTest):
    def setUp(self):
        from NeuroRADFMLib.compatibility import self_test_skip_reason  # imports and runs on Slicer 5.8's Python 3.9

        reason = self_test_skip_reason()
        if reason:
            raise unittest.SkipTest(reason)

    def runTest(self):
        try:
            self.setUp()
        except unittest.SkipTest as skipped:
            self.delayDisplay(f"NeuroRADFMTrainSelfTest skipped: {skipped}")
            return
        slicer.mrmlScene.Clear()
        self.test_loss_curve_from_metrics()
        self.test_ssl_controls_follow_the_core()
        self.test_cohort_selector_and_check_table()

    def test_loss_curve_from_metrics(self):
        from NeuroRADFMTrain import NeuroRADFMTrainLogic

        from neuroradfm.metrics import MetricsLog
        from NeuroRADFMLib.training import update_loss_table

        path = os.path.join(slicer.app.temporaryPath, "NeuroRADFMTrainSelfTest.metrics.jsonl")
        if os.path.exists(path):
            os.remove(path)
        log = MetricsLog(path)
        for step, loss in enumerate([1.0, 0.8, 0.6], 1):
            log(step, stage="train", epoch=1, loss=loss)
        table, chart = NeuroRADFMTrainLogic().lossNodes()
        self.assertEqual(update_loss_table(table, path), 3)
        self.assertEqual(chart.GetNumberOfPlotSeriesNodes(), 1)

    def test_ssl_controls_follow_the_core(self):
        from NeuroRADFMLib.training import REPORT_MISSING, pretrain_available

        slicer.util.selectModule("NeuroRADFMTrain")
        widget = slicer.modules.neuroradfmtrain.widgetRepresentation().self()
        available = pretrain_available()
        self.assertEqual(widget.ui.sslCheckBox.enabled, available)
        widget.ui.droCheckBox.checked = True
        for ssl in (True, False):
            widget.ui.sslCheckBox.checked = ssl
            on = available and ssl
            self.assertEqual(widget.ui.sslMethodComboBox.enabled, on)
            self.assertEqual(widget.ui.droModeComboBox.enabled, on)
            self.assertEqual(widget.ui.resumeCheckBox.enabled, on)
            self.assertEqual(widget.ui.tumourWeightSpinBox.enabled, not on)
            self.assertEqual(widget.ui.fineTuneEpochsSpinBox.enabled, on)
        if available:  # fine-tuning after pretraining is supervised: the tumour weight applies to it
            widget.ui.sslCheckBox.checked = True
            widget.ui.fineTuneEpochsSpinBox.value = 2
            self.assertTrue(widget.ui.tumourWeightSpinBox.enabled)
            self.assertIn("fine-tuning", widget.ui.encoderMethodLabel.text)
            widget.ui.fineTuneEpochsSpinBox.value = 0
        self.assertFalse(widget.ui.openReportButton.enabled)
        self.assertEqual(widget.ui.openReportButton.toolTip, REPORT_MISSING)

    def test_cohort_selector_and_check_table(self):
        import shutil

        import numpy as np
        import SimpleITK as sitk
        from NeuroRADFMTrain import NeuroRADFMTrainLogic

        from NeuroRADFMLib.cohorts import (
            MANIFEST_SOURCE,
            check_button_text,
            clinical_tables,
            cohort_source,
            layouts,
            run_check,
        )

        slicer.util.selectModule("NeuroRADFMTrain")
        widget = slicer.modules.neuroradfmtrain.widgetRepresentation().self()
        combo = widget.ui.layoutComboBox
        self.assertEqual([combo.itemData(i) for i in range(combo.count)], [MANIFEST_SOURCE, *layouts()])
        for index in range(combo.count):
            combo.currentIndex = index
            self.assertEqual(widget.ui.clinicalPathLineEdit.enabled, combo.currentData in clinical_tables())
            self.assertEqual(widget.ui.checkCohortButton.text, check_button_text(combo.currentData))
        combo.currentIndex = 0

        folder = os.path.join(slicer.app.temporaryPath, "NeuroRADFMTrainSelfTest-cohort")
        shutil.rmtree(folder, ignore_errors=True)
        case = os.path.join(folder, "download", "BraTS2021_00001")
        os.makedirs(case)
        for index, suffix in enumerate(("t1", "t1ce", "t2", "flair", "seg")):
            image = sitk.GetImageFromArray(np.full((8, 8, 8), index, np.int16))
            sitk.WriteImage(image, os.path.join(case, f"BraTS2021_00001_{suffix}.nii.gz"))
        check = run_check(cohort_source(os.path.dirname(case), "brats2021", None, os.path.join(folder, "out")))
        self.assertEqual(check.status, "clean")
        self.assertEqual(os.path.dirname(str(check.manifest)), os.path.realpath(os.path.join(folder, "out")))
        table = NeuroRADFMTrainLogic().cohortCheckTable(check.report)
        self.assertEqual(table.GetNumberOfRows(), 2)  # the status, one geometry
        widget.ui.cohortCheckTableView.setMRMLTableNode(table)
