"""First use of NeuroRADFM and NeuroRADFMTrain: one question, then the install (PyTorch through the PyTorch
extension, the rest with pip; from PyPI, or offline from a wheel folder made by ``neuroradfm wheelhouse``).

Every outcome ends in a status message, never in an exception out of a Qt slot. The decisions and the texts come
from NeuroRADFMLib.dependencies; this file only asks and shows.
"""

import os

import qt
import slicer

TITLE = "NeuroRADFM: install packages"


def _stop(statusLabel, message, dialog=False):
    statusLabel.text = message
    if dialog:
        slicer.util.warningDisplay(message, windowTitle=TITLE)
    return False


def _askSource(plan, reachable):
    """'online', 'offline' (choose a wheel folder) or None (cancelled): the one dialog."""
    from NeuroRADFMLib.dependencies import confirmation_text

    box = qt.QMessageBox(slicer.util.mainWindow())
    box.setWindowTitle(TITLE)
    box.setIcon(qt.QMessageBox.Question)
    box.setText(confirmation_text(plan, reachable))
    online = box.addButton("Install from the internet (PyPI)", qt.QMessageBox.AcceptRole)
    offline = box.addButton("Install offline from a folder...", qt.QMessageBox.ActionRole)
    box.addButton(qt.QMessageBox.Cancel)
    box.setDefaultButton(offline if reachable is False else online)
    box.exec_()
    role = box.buttonRole(box.clickedButton()) if box.clickedButton() else None
    return {qt.QMessageBox.AcceptRole: "online", qt.QMessageBox.ActionRole: "offline"}.get(role)


def _chooseFolder():
    """A wheel folder from the file dialog (remembered in the settings), or None."""
    from NeuroRADFMLib.dependencies import WHEELHOUSE_SETTING

    folder = qt.QFileDialog.getExistingDirectory(
        slicer.util.mainWindow(), "Wheel folder made with `neuroradfm wheelhouse`",
        slicer.util.settingsValue(WHEELHOUSE_SETTING, "") or "")
    if folder:
        qt.QSettings().setValue(WHEELHOUSE_SETTING, folder)
    return folder or None


def ensurePackages(logic, statusLabel):
    """True when the core's packages are ready, after at most one question and an install."""
    from NeuroRADFMLib import dependencies as deps

    fixed = deps.wheelhouse_folder(os.environ)  # $NEURORADFM_WHEELHOUSE: an administrator's folder, always used
    try:
        plan = deps.check(fixed)
    except Exception as error:  # noqa: BLE001 - a folder or list that cannot be used: a message
        return _stop(statusLabel, str(error), dialog=True)
    if plan.ready:
        return True
    if plan.refused:
        return _stop(statusLabel, plan.message, dialog=True)
    if fixed:
        if not slicer.util.confirmOkCancelDisplay(deps.confirmation_text(plan), TITLE):
            return _stop(statusLabel, plan.message + " Not installed (cancelled).")
    else:
        choice = _askSource(plan, deps.pypi_reachable())
        if choice is None:
            return _stop(statusLabel, plan.message + " Not installed (cancelled).")
        if choice == "offline":
            folder = _chooseFolder()
            if folder is None:
                return _stop(statusLabel, "No wheel folder chosen: nothing installed. " + plan.message)
            try:
                plan = deps.check(folder)
            except Exception as error:  # noqa: BLE001 - a folder or list that cannot be used: a message
                return _stop(statusLabel, str(error), dialog=True)
            if plan.refused:
                return _stop(statusLabel, plan.message, dialog=True)
    how = plan.source.describe()
    statusLabel.text = f"{how[0].upper()}{how[1:]}..."
    slicer.app.processEvents()
    try:
        with slicer.util.tryWithErrorDisplay(f"NeuroRAD-FM's packages could not be installed ({how}).",
                                             waitCursor=True):
            logic.installPackages(plan)
            after = deps.check(plan.source.folder)
    except Exception as error:  # shown (and logged) by tryWithErrorDisplay, which re-raises
        return _stop(statusLabel, str(error))
    statusLabel.text = f"Packages installed {plan.source.origin}." if after.ready else after.message
    return after.ready
