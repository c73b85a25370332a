"""The Slicer extension tree is complete and consistent: CMake lists every Python file and resource, the
metadata is there, every widget the module code uses exists in its .ui file, the Qt-free parts stay
Qt-free, and the installed layout finds the demo bundle."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULES = ("NeuroRADFM", "NeuroRADFMTrain")


def cmake_commands(path: Path) -> list[tuple[str, list[str]]]:
    """(command, arguments) of a CMakeLists.txt; comments dropped, quoted arguments kept whole."""
    text = re.sub(r"#[^\n]*", "", path.read_text())
    commands = []
    for name, body in re.findall(r"(\w+)\s*\(((?:[^()]|\([^()]*\))*)\)", text):
        commands.append((name.lower(), re.findall(r'"[^"]*"|[^\s"]+', body)))
    return commands


def cmake_variables(path: Path) -> dict[str, list[str]]:
    variables: dict[str, list[str]] = {}
    for name, arguments in cmake_commands(path):
        if name == "set" and arguments:
            values = arguments[1:]
            expanded = []
            for value in values:
                value = re.sub(r"\$\{(\w+)\}", lambda m: " ".join(variables.get(m.group(1), [m.group(0)])), value)
                expanded.append(value)
            variables[arguments[0]] = expanded
    return variables


def listed_files(module: str) -> tuple[set[str], set[str]]:
    """(scripts, resources) the module's CMake files list, relative to the module folder."""
    folder = REPO / module
    variables = cmake_variables(folder / "CMakeLists.txt")
    build = [args for name, args in cmake_commands(folder / "CMakeLists.txt")
             if name == "slicermacrobuildscriptedmodule"]
    assert len(build) == 1, f"{module}: one slicerMacroBuildScriptedModule"
    args = build[0]
    assert "WITH_GENERIC_TESTS" in args and "NAME" in args and "SCRIPTS" in args and "RESOURCES" in args
    assert args[args.index("NAME") + 1] == "${MODULE_NAME}" and variables["MODULE_NAME"] == [module]
    scripts = set(variables["MODULE_PYTHON_SCRIPTS"])
    resources = set(variables["MODULE_PYTHON_RESOURCES"])
    for cmake in folder.glob("Testing/**/CMakeLists.txt"):
        relative = cmake.parent.relative_to(folder)
        for name, arguments in cmake_commands(cmake):
            if name == "slicer_add_python_unittest":
                script = arguments[arguments.index("SCRIPT") + 1].replace("${CMAKE_CURRENT_SOURCE_DIR}/", "")
                scripts.add(str(relative / script))
    return scripts, resources


def files_under(folder: Path, pattern: str) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.glob(pattern)
            if p.is_file() and "__pycache__" not in p.parts}


def test_top_level_cmake_has_the_metadata_and_both_modules():
    variables = cmake_variables(REPO / "CMakeLists.txt")
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert variables.get(f"EXTENSION_{key}") and variables[f"EXTENSION_{key}"][0].strip('"'), key
    assert "PyTorch" in variables["EXTENSION_DEPENDS"][0]
    icon = variables["EXTENSION_ICONURL"][0].strip('"')
    assert icon.startswith("http") or (REPO / icon).is_file(), icon
    subdirectories = [args[0] for name, args in cmake_commands(REPO / "CMakeLists.txt") if name == "add_subdirectory"]
    assert subdirectories == list(MODULES)
    commands = [name for name, _ in cmake_commands(REPO / "CMakeLists.txt")]
    assert commands.index("find_package") < commands.index("add_subdirectory")


@pytest.mark.parametrize("module", MODULES)
def test_cmake_lists_every_python_file_and_resource(module):
    folder = REPO / module
    scripts, resources = listed_files(module)
    python_files = files_under(folder, "**/*.py")
    assert python_files - scripts == set(), f"{module}: .py files not listed in CMake"
    assert scripts - python_files == set(), f"{module}: CMake lists missing .py files"
    resource_files = files_under(folder, "Resources/**/*")
    assert resource_files - resources == set(), f"{module}: resources not listed in CMake"
    assert resources - resource_files == set(), f"{module}: CMake lists missing resources"
    assert f"Resources/Icons/{module}.png" in resources and f"Resources/UI/{module}.ui" in resources
    cmake = (folder / "CMakeLists.txt").read_text()
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in cmake


def test_the_bundled_core_and_the_demo_bundle_are_part_of_the_neuroradfm_module():
    scripts, _ = listed_files("NeuroRADFM")
    core = files_under(REPO / "NeuroRADFM", "neuroradfm/**/*.py")
    assert len(core) > 30 and core <= scripts
    variables = cmake_variables(REPO / "NeuroRADFM" / "CMakeLists.txt")
    bundle_files = {p.name for p in (REPO / "Resources" / "demo-bundle").iterdir() if p.is_file()}
    assert set(variables["NEURORADFM_DEMO_BUNDLE_FILES"]) == bundle_files == {"card.json", "weights.safetensors"}
    cmake = (REPO / "NeuroRADFM" / "CMakeLists.txt").read_text()
    assert "DESTINATION ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}/Resources/demo-bundle" in cmake


def test_the_installed_layout_finds_the_demo_bundle(tmp_path):
    """Slicer installs SCRIPTS and RESOURCES under one qt-scripted-modules folder; the core must find
    Resources/demo-bundle there without the source tree or $NEURORADFM_DEMO_BUNDLE."""
    installed = tmp_path / "lib" / "Slicer-5.10" / "qt-scripted-modules"
    shutil.copytree(REPO / "NeuroRADFM" / "neuroradfm", installed / "neuroradfm",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (installed / "Resources" / "demo-bundle").mkdir(parents=True)
    for name in ("card.json", "weights.safetensors"):
        os.symlink(REPO / "Resources" / "demo-bundle" / name, installed / "Resources" / "demo-bundle" / name)
    env = {k: v for k, v in os.environ.items() if k != "NEURORADFM_DEMO_BUNDLE"}
    env["PYTHONPATH"] = str(installed)
    found = subprocess.run([sys.executable, "-c", "import neuroradfm.demo as d; print(d.__file__); "
                            "print(d.demo_bundle_path())"], env=env, cwd=tmp_path, capture_output=True, text=True,
                           check=True).stdout.split()
    assert found == [str(installed / "neuroradfm" / "demo.py"), str(installed / "Resources" / "demo-bundle")]


def ui_widget_names(path: Path) -> set[str]:
    return {w.get("name") for w in ElementTree.parse(path).iter("widget")}


@pytest.mark.parametrize("module", MODULES)
def test_every_widget_the_module_uses_is_in_its_ui_file(module):
    source = (REPO / module / f"{module}.py").read_text()
    used = set(re.findall(r"\bui\.(\w+)", source))
    assert len(used) > 10
    defined = ui_widget_names(REPO / module / "Resources" / "UI" / f"{module}.ui")
    assert used - defined == set(), f"{module}.py uses widgets missing from {module}.ui"
    tree = ElementTree.parse(REPO / module / "Resources" / "UI" / f"{module}.ui")
    standard = {"QLabel", "QPushButton", "QComboBox", "QCheckBox", "QLineEdit", "QSpinBox", "QDoubleSpinBox",
                "QProgressBar", "QWidget"}
    custom = {c.findtext("class") for c in tree.iter("customwidget")}
    assert {w.get("class") for w in tree.iter("widget")} - standard <= custom


@pytest.mark.parametrize("module", MODULES)
def test_module_files_have_the_slicer_entry_points(module):
    tree = ast.parse((REPO / module / f"{module}.py").read_text())
    classes = {node.name: [ast.unparse(b) for b in node.bases] for node in tree.body if isinstance(node, ast.ClassDef)}
    assert classes[module] == ["ScriptedLoadableModule"]
    assert classes[f"{module}Widget"][0] == "ScriptedLoadableModuleWidget"
    assert classes[f"{module}Logic"] == ["ScriptedLoadableModuleLogic"]
    assert classes[f"{module}Test"] == ["ScriptedLoadableModuleTest"]


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_qt_stays_in_the_thin_module_files():
    for path in (REPO / "NeuroRADFM" / "NeuroRADFMLib").glob("*.py"):
        assert not imported_modules(path) & {"qt", "ctk", "PythonQt"}, path
        assert "ScriptedLoadableModule" not in path.read_text(), path
    for path in (REPO / "NeuroRADFM" / "neuroradfm").rglob("*.py"):
        assert not imported_modules(path) & {"qt", "ctk", "slicer", "NeuroRADFMLib"}, path
