"""The device combo box of NeuroRADFM and NeuroRADFMTrain: listed on first use, never in the widget's setup().

The listing (and its messages) comes from NeuroRADFMLib.devices; this file only fills the combo box.
"""

import qt


class DeviceSelectorFilter(qt.QObject):
    """Event filter: a mouse press, key press or wheel turn on the selector calls ``onUse`` before the combo box
    handles it (opens its pop-up), so the devices are listed just before they are shown."""

    def __init__(self, onUse):
        super().__init__()
        self.onUse = onUse

    def eventFilter(self, watched, event):
        if event.type() in (qt.QEvent.MouseButtonPress, qt.QEvent.KeyPress, qt.QEvent.Wheel):
            self.onUse()
        return False


def lazyDeviceSelector(selector, onUse):
    """The selector's entries before listing (automatic, CPU: no PyTorch import) and the filter that calls
    ``onUse`` when the user reaches for it. Keep the returned filter (a Python object the combo box does not own)."""
    from NeuroRADFMLib.devices import placeholder_choices

    selector.clear()
    for device, label in placeholder_choices():
        selector.addItem(label, device)
    deviceFilter = DeviceSelectorFilter(onUse)
    selector.installEventFilter(deviceFilter)
    return deviceFilter


def listDevices(selector, statusLabel):
    """Fill ``selector`` from NeuroRADFMLib.devices (imports PyTorch unless it is not installed yet), keep its choice
    where it is still listed (``auto``: the first GPU this PyTorch supports, else the CPU), and show any problem
    (PyTorch not loadable, a GPU this PyTorch build does not support) in ``statusLabel`` and the tooltip.
    Returns the DeviceListing."""
    from NeuroRADFMLib.devices import device_listing, torch_install_problem

    qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)  # the first torch import takes seconds
    try:
        listing = device_listing(torch_problem=torch_install_problem())
    finally:
        qt.QApplication.restoreOverrideCursor()
    current = selector.currentData
    selector.blockSignals(True)
    selector.clear()
    for index, ((device, label), entry) in enumerate(zip(listing.choices(), listing.devices)):
        selector.addItem(label, device)
        selector.setItemData(index, entry.tooltip, qt.Qt.ToolTipRole)
    selector.setCurrentIndex(max(0, selector.findData(listing.resolve(current))))
    selector.blockSignals(False)
    selector.toolTip = listing.message or "CPU or a CUDA GPU (name and memory)"
    if listing.message:
        statusLabel.text = listing.message
    return listing


def chosenDeviceUsable(listing, selector):
    """False, after a dialog saying why (and what to do), when the chosen GPU is one this PyTorch build cannot run
    on: the run would fail at its first layer ("no kernel image is available")."""
    import slicer

    problem = listing.problem(selector.currentData)
    if problem:
        slicer.util.errorDisplay(problem)
    return problem is None
