"""Self-test inside Slicer: NeuroRADFMTrain's loss curve nodes follow a metrics file written by the core,
and the SSL controls stay disabled while the core has no ``pretrain`` command."""

import os

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest


class NeuroRADFMTrainSelfTest(ScriptedLoadableModuleTest):
    def runTest(self):
        slicer.mrmlScene.Clear()
        self.test_loss_curve_from_metrics()
        self.test_ssl_controls_follow_the_core()

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
        from NeuroRADFMLib.training import pretrain_available

        slicer.util.selectModule("NeuroRADFMTrain")
        widget = slicer.modules.neuroradfmtrain.widgetRepresentation().self()
        self.assertEqual(widget.ui.sslMethodComboBox.enabled, pretrain_available())
        self.assertFalse(widget.ui.resumeButton.enabled)
