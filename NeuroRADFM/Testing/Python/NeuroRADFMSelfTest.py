"""Self-tests inside Slicer: the demo case through the NeuroRADFM module logic (prediction, cancel, batch).

Run by ctest (slicer_add_python_unittest) or from the Python console:
``import NeuroRADFMSelfTest; NeuroRADFMSelfTest.NeuroRADFMSelfTest().runTest()``.
Skipped, with the reason, in a Slicer older than 5.10 or where the core's Python packages are not installed (a clean
build, as on the extension factory): the module's Apply installs them on first use.
"""

import os
import time
import unittest

import numpy as np
import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest


def skip_unless_ready():
    from NeuroRADFMLib.compatibility import self_test_skip_reason  # imports and runs on Slicer 5.8's Python 3.9

    reason = self_test_skip_reason()
    if reason:
        raise unittest.SkipTest(reason)


class NeuroRADFMSelfTest(ScriptedLoadableModuleTest):
    def setUp(self):
        skip_unless_ready()
        slicer.mrmlScene.Clear()

    def runTest(self):
        try:
            self.setUp()
        except unittest.SkipTest as skipped:
            self.delayDisplay(f"NeuroRADFMSelfTest skipped: {skipped}")
            return
        self.test_predict_demo_case()
        self.setUp()
        self.test_cancel_leaves_the_scene_unchanged()
        self.setUp()
        self.test_console_batch()

    def demoVolumes(self):
        from NeuroRADFM import NeuroRADFMLogic

        logic = NeuroRADFMLogic()
        logic.loadDemoCase()
        assignment = logic.assignSequences()
        self.assertEqual(assignment.missing(), [])
        return logic, assignment.assigned

    def test_predict_demo_case(self):
        from NeuroRADFMLib.bundles import demo_bundle
        from NeuroRADFMLib.scene_io import ijk_to_ras

        logic, volumes = self.demoVolumes()
        results = logic.predict(volumes, demo_bundle().path, "auto", timeout=900)
        reference = ijk_to_ras(volumes["t1ce"])
        self.assertEqual(results.table.GetNumberOfRows(), len(results.heads))
        for key in results.heads:
            np.testing.assert_array_equal(ijk_to_ras(results.heatmaps[key]), reference)
            np.testing.assert_array_equal(ijk_to_ras(results.labelmaps[key]), reference)
            self.assertIs(results.labelmaps[key].GetDisplayNode().GetColorNode(), results.level_colors)
        self.assertEqual(results.segmentation.GetSegmentation().GetNumberOfSegments(), len(results.heads))
        logic.showHead(results, "idh1")
        composite = slicer.app.layoutManager().sliceWidget("Red").sliceLogic().GetSliceCompositeNode()
        self.assertEqual(composite.GetForegroundVolumeID(), results.heatmaps["idh1"].GetID())

    def test_cancel_leaves_the_scene_unchanged(self):
        from NeuroRADFMLib.bundles import demo_bundle

        logic, volumes = self.demoVolumes()
        count = slicer.mrmlScene.GetNumberOfNodes()
        job = logic.startPrediction(volumes, demo_bundle().path, "cpu")
        deadline = time.time() + 120
        while not job.poll() and time.time() < deadline:
            slicer.app.processEvents()
            time.sleep(0.1)
        job.cancel()
        job.process.wait(timeout=60)  # cancel() returns at once; the tree stops behind it
        self.assertTrue(job.finished)
        self.assertFalse(os.path.exists(job.temp_dir))
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)

    def test_console_batch(self):
        from NeuroRADFMLib.batch import process_cohort
        from NeuroRADFMLib.demo_case import demo_case

        folder = os.path.join(slicer.app.temporaryPath, "NeuroRADFM-demo-case")
        demo_case(folder)
        out = os.path.join(slicer.app.temporaryPath, "NeuroRADFM-selftest-batch")
        cohort = process_cohort(folder, out_dir=out, device="cpu")
        self.assertEqual(cohort.failures, {})
        self.assertEqual(len(cohort.outputs), 1)
        self.assertGreater(cohort.table.GetNumberOfRows(), 1)
