"""The Teaching section of NeuroRADFM: a teaching pack's case in a 2x2 layout, its answers behind Reveal buttons.

Built in code (a self-contained section below the module's .ui panel). The work is NeuroRADFMLib.teaching's; this
class only builds the widgets, calls it and shows its answers and messages: a bad pack's message (what is wrong,
what to do) appears in the section, never as a traceback.
"""

import logging

import ctk
import qt
import slicer

SETTINGS_KEY = "NeuroRADFM/teachingPack"


class TeachingSection:
    def __init__(self, parentLayout, ensureReady):
        """``ensureReady(statusLabel) -> bool``: the core's packages are installed (asks once, as Apply does)."""
        self.ensureReady = ensureReady
        self.pack = None
        self.exercise = None
        self.answers = {}

        section = ctk.ctkCollapsibleButton()
        section.text = "Teaching"
        section.collapsed = True
        parentLayout.addWidget(section)
        form = qt.QFormLayout(section)
        self.folderButton = ctk.ctkDirectoryButton()
        self.folderButton.caption = "Choose a teaching pack (the folder `neuroradfm teach --out` wrote)"
        self.folderButton.toolTip = "A teaching pack folder: it holds pack.json"
        form.addRow("Pack folder:", self.folderButton)
        self.caseSelector = qt.QComboBox()
        form.addRow("Case:", self.caseSelector)
        self.loadButton = qt.QPushButton("Load case")
        self.loadButton.toolTip = "The four sequences in a 2x2 layout; the model's answer and the truth stay hidden"
        form.addRow(self.loadButton)
        buttons = qt.QHBoxLayout()
        self.revealModelButton = qt.QPushButton("Reveal model answer")
        self.revealTruthButton = qt.QPushButton("Reveal truth")
        self.hideButton = qt.QPushButton("Hide")
        for button in (self.revealModelButton, self.revealTruthButton, self.hideButton):
            buttons.addWidget(button)
        form.addRow(buttons)
        self.headSelector = qt.QComboBox()
        self.headSelector.toolTip = "Whose map the model's answer shows over the sequences"
        form.addRow("Map of:", self.headSelector)
        self.opacitySlider = ctk.ctkSliderWidget()
        self.opacitySlider.minimum, self.opacitySlider.maximum = 0.0, 1.0
        self.opacitySlider.singleStep = 0.05
        self.opacitySlider.value = 0.5
        form.addRow("Map opacity:", self.opacitySlider)
        self.answerText = qt.QPlainTextEdit()
        self.answerText.readOnly = True
        form.addRow(self.answerText)
        self.statusLabel = qt.QLabel("Choose a teaching pack folder.")
        self.statusLabel.wordWrap = True
        form.addRow(self.statusLabel)

        self.folderButton.connect("directoryChanged(QString)", self.onFolder)
        self.loadButton.connect("clicked(bool)", lambda checked: self.onLoad())
        self.revealModelButton.connect("clicked(bool)", lambda checked: self.onReveal("model"))
        self.revealTruthButton.connect("clicked(bool)", lambda checked: self.onReveal("truth"))
        self.hideButton.connect("clicked(bool)", lambda checked: self.onHide())
        self.headSelector.connect("currentIndexChanged(int)", lambda index: self.onMapChanged())
        self.opacitySlider.connect("valueChanged(double)", lambda value: self.onMapChanged())
        self.updateButtons()
        remembered = qt.QSettings().value(SETTINGS_KEY)
        if remembered and qt.QDir(remembered).exists():
            self.folderButton.directory = remembered  # reads the pack (directoryChanged)

    def show(self, message, error=False):
        self.statusLabel.text = message
        self.statusLabel.setStyleSheet("QLabel { color: #c00000; }" if error else "")

    def attempt(self, what, function):
        """``function()``; on an error its message in the section (a bug's traceback goes to the log) and None."""
        from neuroradfm.errors import NeuroRADFMError
        from NeuroRADFMLib.scene_io import SceneIOError

        try:
            return function()
        except (NeuroRADFMError, SceneIOError, ValueError) as error:  # the pack's or the file's own message
            self.show(str(error), error=True)
        except Exception as error:  # noqa: BLE001 - a Qt slot must not raise
            logging.exception("NeuroRADFM teaching: %s failed", what)
            self.show(f"{what} failed: {error} (details in the log)", error=True)
        return None

    def updateButtons(self):
        loaded = self.exercise is not None
        self.loadButton.enabled = self.pack is not None
        for widget in (self.revealModelButton, self.revealTruthButton, self.hideButton, self.headSelector,
                       self.opacitySlider):
            widget.enabled = loaded

    def current(self):
        """The loaded case, or None (with a message) once the scene was closed or its nodes deleted."""
        if self.exercise is not None and not self.exercise.in_scene():
            self.exercise = None
            self.updateButtons()
            self.show("The case is no longer in the scene: load it again.", error=True)
        return self.exercise

    def onFolder(self, folder):
        from NeuroRADFMLib.teaching import case_label, open_pack

        self.caseSelector.clear()
        self.pack = self.attempt("Reading the pack", lambda: open_pack(folder))
        if self.pack is not None:
            qt.QSettings().setValue(SETTINGS_KEY, folder)
            for case in self.pack.cases:
                self.caseSelector.addItem(case_label(case), case.number)
            self.show(f"{len(self.pack.cases)} cases. Choose one and press Load case.")
        self.updateButtons()

    def onLoad(self):
        from NeuroRADFMLib.teaching import load_exercise

        if self.pack is None or not self.ensureReady(self.statusLabel):
            return
        if self.exercise is not None:
            self.attempt("Removing the previous case", self.exercise.remove)
            self.exercise = None
        self.answers = {}
        self.answerText.setPlainText("")
        number = self.caseSelector.currentData
        qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
        try:  # the folder again: a pack changed or damaged since it was chosen is refused now
            self.exercise = self.attempt("Loading the case",
                                         lambda: load_exercise(slicer.mrmlScene, self.pack.folder, number))
        finally:
            qt.QApplication.restoreOverrideCursor()
        if self.exercise is not None:
            slicer.util.resetSliceViews()
            self.headSelector.blockSignals(True)
            self.headSelector.clear()
            for key, label in self.exercise.heads():
                self.headSelector.addItem(label, key)
            self.headSelector.blockSignals(False)
            self.show(f"Case {number} loaded: read the four sequences, then reveal the answers.")
        self.updateButtons()

    def onReveal(self, what):
        from NeuroRADFMLib.teaching import rows_text

        if self.current() is None:
            return
        rows = self.attempt("Revealing", lambda: self.exercise.reveal(
            what, self.headSelector.currentData or None, self.opacitySlider.value))
        if rows is not None:
            self.answers[what] = rows_text(rows)
            titles = {"model": "The model's answer", "truth": "The truth (and where the model agrees)"}
            self.answerText.setPlainText("\n\n".join(f"{titles[key]}:\n{self.answers[key]}"
                                                     for key in titles if key in self.answers))

    def onMapChanged(self):
        if self.current() is not None and "model" in self.exercise.revealed:
            self.attempt("Showing the map", lambda: self.exercise.reveal(
                "model", self.headSelector.currentData or None, self.opacitySlider.value))

    def onHide(self):
        if self.current() is not None:
            self.attempt("Hiding", self.exercise.hide)
            self.answers = {}
            self.answerText.setPlainText("")
