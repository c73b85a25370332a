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
    text = re.sub(r"#[^\n]*", "", path.read_text(encoding="utf-8"))
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
    subdirectories = [args[0] for name, args in cmake_commands(REPO / "CMakeLists.txt") if name == "add_subdirectory"]
    assert subdirectories == list(MODULES)
    commands = [name for name, _ in cmake_commands(REPO / "CMakeLists.txt")]
    assert commands.index("find_package") < commands.index("add_subdirectory")


RAW = "https://raw.githubusercontent.com/"


def test_icon_and_screenshot_urls_are_absolute_raw_urls_of_files_in_this_repository():
    """The .s4ext gets EXTENSION_ICONURL / EXTENSION_SCREENSHOTURLS verbatim (SlicerExtensionCPack.cmake): the
    Extensions Manager needs absolute URLs; each must name a file of this repository (raw URL of the homepage's
    repository, branch main)."""
    variables = cmake_variables(REPO / "CMakeLists.txt")
    homepage = variables["EXTENSION_HOMEPAGE"][0].strip('"')
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", homepage), homepage
    prefix = RAW + homepage.removeprefix("https://github.com/") + "/main/"
    icon = variables["EXTENSION_ICONURL"][0].strip('"')
    screenshots = " ".join(v.strip('"') for v in variables["EXTENSION_SCREENSHOTURLS"]).split()
    assert screenshots
    for url in [icon, *screenshots]:
        assert url.startswith(prefix), f"{url}: not a raw URL of {homepage} (main)"
        path = REPO / url.removeprefix(prefix)
        assert path.is_file(), f"{url}: {path.relative_to(REPO)} is not in the repository"
        assert path.suffix == ".png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", url
    assert icon.endswith("/NeuroRADFM/Resources/Icons/NeuroRADFM.png")
    for url in screenshots:  # small, and a rendering of the module's outputs says so in its name
        path = REPO / url.removeprefix(prefix)
        assert path.parent == REPO / "Resources" / "Screenshots" and path.stat().st_size < 300_000, url
        assert "rendering" in path.name, url


def test_description_states_the_minimum_slicer_version():
    sys.path.insert(0, str(REPO / "NeuroRADFM"))
    from NeuroRADFMLib.compatibility import MINIMUM_PYTHON, MINIMUM_SLICER

    variables = cmake_variables(REPO / "CMakeLists.txt")
    assert len(variables["EXTENSION_DESCRIPTION"]) == 1  # one quoted argument
    description = variables["EXTENSION_DESCRIPTION"][0].strip('"')
    assert ";" not in description and "\n" not in description  # a CMake list separator would split it
    slicer, python = ".".join(map(str, MINIMUM_SLICER)), ".".join(map(str, MINIMUM_PYTHON))
    assert f"Requires 3D Slicer {slicer} or newer (Python {python} or newer)" in description


@pytest.mark.parametrize("module", MODULES)
def test_self_tests_rely_on_slicers_own_module_paths(module):
    """slicer_add_python_unittest already passes --additional-module-paths <build>/<qt-scripted-modules>
    (Slicer's SlicerMacroPythonTesting.cmake): passing it again duplicates the option."""
    for cmake in (REPO / module / "Testing").rglob("CMakeLists.txt"):
        for name, arguments in cmake_commands(cmake):
            if name == "slicer_add_python_unittest":
                assert "--additional-module-paths" not in arguments and "SLICER_ARGS" not in arguments, cmake


@pytest.mark.parametrize("test", ["NeuroRADFM/Testing/Python/NeuroRADFMSelfTest.py",
                                  "NeuroRADFMTrain/Testing/Python/NeuroRADFMTrainSelfTest.py"])
def test_self_tests_skip_when_the_packages_are_missing(test):
    """On a clean build (the extension factory) the core's packages are not installed: the self-tests skip, naming
    the reason, in setUp (what unittest runs before each test_ method) and in runTest (Reload and Test)."""
    tree = ast.parse((REPO / test).read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == Path(test).stem)
    methods = {n.name: ast.unparse(n) for n in cls.body if isinstance(n, ast.FunctionDef)}
    setup = methods["setUp"]
    helpers = {n.name: ast.unparse(n) for n in tree.body if isinstance(n, ast.FunctionDef)}
    called = setup + "".join(body for name, body in helpers.items() if name in setup)
    assert "self_test_skip_reason" in called and "SkipTest" in called
    assert "except unittest.SkipTest" in methods["runTest"]


@pytest.mark.parametrize("module", MODULES)
def test_cmake_lists_every_python_file_and_resource(module):
    folder = REPO / module
    scripts, resources = listed_files(module)
    python_files = files_under(folder, "**/*.py")
    assert python_files - scripts == set(), f"{module}: .py files not listed in CMake"
    assert scripts - python_files == set(), f"{module}: CMake lists missing .py files"
    resource_files = files_under(folder, "Resources/**/*") | (files_under(folder, "neuroradfm/**/*") - python_files)
    assert resource_files - resources == set(), f"{module}: resources not listed in CMake"
    assert resources - resource_files == set(), f"{module}: CMake lists missing resources"
    assert f"Resources/Icons/{module}.png" in resources and f"Resources/UI/{module}.ui" in resources
    cmake = (folder / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in cmake


def test_the_bundled_core_and_the_demo_bundle_are_part_of_the_neuroradfm_module():
    scripts, _ = listed_files("NeuroRADFM")
    core = files_under(REPO / "NeuroRADFM", "neuroradfm/**/*.py")
    assert len(core) > 30 and core <= scripts
    variables = cmake_variables(REPO / "NeuroRADFM" / "CMakeLists.txt")
    bundle_files = {p.name for p in (REPO / "Resources" / "demo-bundle").iterdir() if p.is_file()}
    assert set(variables["NEURORADFM_DEMO_BUNDLE_FILES"]) == bundle_files == {"card.json", "weights.safetensors"}
    cmake = (REPO / "NeuroRADFM" / "CMakeLists.txt").read_text(encoding="utf-8")
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
    source = (REPO / module / f"{module}.py").read_text(encoding="utf-8")
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
    tree = ast.parse((REPO / module / f"{module}.py").read_text(encoding="utf-8"))
    classes = {node.name: [ast.unparse(b) for b in node.bases] for node in tree.body if isinstance(node, ast.ClassDef)}
    assert classes[module] == ["ScriptedLoadableModule"]
    assert classes[f"{module}Widget"][0] == "ScriptedLoadableModuleWidget"
    assert classes[f"{module}Logic"] == ["ScriptedLoadableModuleLogic"]
    assert classes[f"{module}Test"] == ["ScriptedLoadableModuleTest"]


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_qt_stays_in_the_thin_module_files():
    for path in (REPO / "NeuroRADFM" / "NeuroRADFMLib").glob("*.py"):
        assert not imported_modules(path) & {"qt", "ctk", "PythonQt"}, path
        assert "ScriptedLoadableModule" not in path.read_text(encoding="utf-8"), path
    for path in (REPO / "NeuroRADFM" / "neuroradfm").rglob("*.py"):
        assert not imported_modules(path) & {"qt", "ctk", "slicer", "NeuroRADFMLib"}, path


STUB_SLICER_CONFIG = r"""
# A stand-in for Slicer's build tree (SlicerConfig.cmake), just enough to configure, build and install the
# extension's scripted modules the way slicerMacroBuildScriptedModule / ctkMacroCompilePythonScript lay
# them out: SCRIPTS and RESOURCES copied, relative paths kept, under one qt-scripted-modules folder.
set(Slicer_USE_FILE ${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake)
set(Slicer_EXTENSION_GENERATE_CONFIG ${CMAKE_CURRENT_LIST_DIR}/Empty.cmake)
set(Slicer_EXTENSION_CPACK ${CMAKE_CURRENT_LIST_DIR}/Empty.cmake)
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.10/qt-scripted-modules)
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.10/qt-scripted-modules)
set(Slicer_FOUND TRUE)
set(Slicer_VERSION 5.10.0)
"""

STUB_USE_SLICER = r"""
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY_SLICER "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_SLICER_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "Unknown keywords given to slicerMacroBuildScriptedModule(): ${MY_SLICER_UNPARSED_ARGUMENTS}")
  endif()
  set(_outputs)
  foreach(_file IN LISTS MY_SLICER_SCRIPTS MY_SLICER_RESOURCES)
    if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${_file})
      message(FATAL_ERROR "slicerMacroBuildScriptedModule given nonexistent file '${_file}'")
    endif()
    get_filename_component(_dir ${_file} DIRECTORY)
    set(_out ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}/${_file})
    add_custom_command(OUTPUT ${_out} DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/${_file}
      COMMAND ${CMAKE_COMMAND} -E copy ${CMAKE_CURRENT_SOURCE_DIR}/${_file} ${_out})
    list(APPEND _outputs ${_out})
    install(FILES ${CMAKE_CURRENT_SOURCE_DIR}/${_file} DESTINATION ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}/${_dir})
  endforeach()
  add_custom_target(${MY_SLICER_NAME} ALL DEPENDS ${_outputs})
endmacro()
function(slicer_add_python_unittest)
  cmake_parse_arguments(MY "" "SCRIPT" "SLICER_ARGS" ${ARGN})
  get_filename_component(_script ${MY_SCRIPT} ABSOLUTE)
  if(NOT EXISTS ${_script})
    message(FATAL_ERROR "slicer_add_python_unittest: nonexistent script ${MY_SCRIPT}")
  endif()
  file(APPEND ${CMAKE_BINARY_DIR}/python-unittests.txt "${_script}\n")
endfunction()
"""


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_cmake_configure_build_install_with_a_stub_slicer(tmp_path, tiny_bundle, phantom_cohort):
    """The real CMake files, configured against a stand-in Slicer: every listed file exists, the install
    tree has the modules, the bundled core, the demo bundle and the requirements, and the core runs
    from the installed folder (as PythonSlicer would run it)."""
    stub = tmp_path / "Slicer-build"
    stub.mkdir()
    (stub / "SlicerConfig.cmake").write_text(STUB_SLICER_CONFIG)
    (stub / "UseSlicer.cmake").write_text(STUB_USE_SLICER)
    (stub / "Empty.cmake").write_text("")
    build, prefix = tmp_path / "build", tmp_path / "install"

    def run(*command):
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    run("cmake", "-S", str(REPO), "-B", str(build), f"-DSlicer_DIR={stub}", "-DBUILD_TESTING=ON",
        f"-DCMAKE_INSTALL_PREFIX={prefix}")
    run("cmake", "--build", str(build))
    run("cmake", "--install", str(build))
    tests = (build / "python-unittests.txt").read_text(encoding="utf-8").split()
    assert sorted(Path(t).name for t in tests) == sorted(
        ["NeuroRADFM.py", "NeuroRADFMSelfTest.py", "NeuroRADFMTrain.py", "NeuroRADFMTrainSelfTest.py"])

    installed = prefix / "lib" / "Slicer-5.10" / "qt-scripted-modules"
    for name in ("NeuroRADFM.py", "NeuroRADFMTrain.py", "NeuroRADFMLib/process.py", "NeuroRADFMLib/compatibility.py",
                 "NeuroRADFMWidgets/device_selector.py", "neuroradfm/cli.py",
                 "neuroradfm/io/sequence_names.py", "Resources/UI/NeuroRADFM.ui", "Resources/UI/NeuroRADFMTrain.ui",
                 "Resources/Icons/NeuroRADFMTrain.png", "Resources/requirements.txt",
                 "Resources/demo-bundle/card.json", "Resources/demo-bundle/weights.safetensors",
                 "Resources/lesson-bundles/erm/weights.safetensors", "Resources/lesson-bundles/group-dro/card.json",
                 "neuroradfm/teach/vendor/niivue-0.69.0/niivue.umd.js"):
        assert (installed / name).is_file(), name
    assert (build / "lib/Slicer-5.10/qt-scripted-modules/Resources/demo-bundle/card.json").is_file()

    env = {k: v for k, v in os.environ.items() if k != "NEURORADFM_DEMO_BUNDLE"}
    env["PYTHONPATH"] = str(installed)
    check = ("import NeuroRADFMLib.process as p, NeuroRADFMLib.dependencies as d, neuroradfm.demo as n; "
             "print(p.CORE_PARENT); print(d.REQUIREMENTS_FILE.is_file()); print(n.demo_bundle_path()); "
             "print(n.lesson_bundle_path('group-dro'))")
    out = subprocess.run([sys.executable, "-c", check], env=env, cwd=tmp_path, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [str(installed), "True", str(installed / "Resources" / "demo-bundle"),
                   str(installed / "Resources" / "lesson-bundles" / "group-dro")]
    # a prediction by the installed core, launched the way the module launches it
    code = ("import sys; from NeuroRADFMLib.process import CoreProcess; "
            f"p = CoreProcess(['predict', {str(phantom_cohort.parent / 'BraTS-PHN-00005-000')!r}, '--model', "
            f"{str(tiny_bundle)!r}, '--out', 'out', '--device', 'cpu', '--progress', 'json', '--no-overview'], "
            "python=sys.executable).start(); sys.exit(p.wait(timeout=300))")
    subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, check=True)
    assert (tmp_path / "out" / "BraTS-PHN-00005-000" / "contours.seg.nrrd").is_file()


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_cmake_refuses_a_slicer_older_than_5_10(tmp_path):
    stub = tmp_path / "Slicer-build"
    stub.mkdir()
    (stub / "SlicerConfig.cmake").write_text(STUB_SLICER_CONFIG.replace("5.10.0", "5.8.1"))
    (stub / "UseSlicer.cmake").write_text(STUB_USE_SLICER)
    (stub / "Empty.cmake").write_text("")
    done = subprocess.run(["cmake", "-S", str(REPO), "-B", str(tmp_path / "build"), f"-DSlicer_DIR={stub}"],
                          capture_output=True, text=True)
    assert done.returncode != 0
    message = " ".join(done.stderr.split())  # CMake wraps long messages
    assert "NeuroRADFM needs 3D Slicer 5.10 or newer (Python 3.10+); this Slicer is 5.8.1" in message
