"""``pip install`` of the checkout in a fresh venv, on the Pythons pyproject.toml claims.

The trainer side (``pip install .``, Python 3.8 here, the oldest supported) gets
client_layer with numpy, pyzmq and msgpack and nothing else; the server
(``pip install '.[server]'``, Python 3.11) gets a ``zfeed-server`` that runs.
The checkout is copied first: building a wheel writes ``build/`` and
``*.egg-info`` next to ``pyproject.toml``, and nothing may be left outside tmp.
"""

import ast
import os
import shutil
import subprocess
import sys
import tomllib

import pytest

from harness.children import REPO

CLIENT_PYTHON_3_8 = REPO / ".venv-client3.8" / "bin" / "python"
PACKAGES = ("server", "client_layer")
INSTALL_TIMEOUT_S = 240
# What a venv holds before anything is installed (Python 3.8's venv also brings setuptools).
VENV_OWN = {"pip", "setuptools"}


def pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def requirement_name(line):
    """``"numpy>=1.24; python_version < '3.9'"`` -> ``"numpy"``."""
    for stop in "=<>!~;[ ":
        line = line.split(stop, 1)[0]
    return line.strip().lower()


def fresh_venv(python, tmp_path):
    """A new venv in tmp_path from ``python`` (a venv's interpreter is enough: venv uses its base)."""
    venv = tmp_path / "venv"
    subprocess.run([str(python), "-m", "venv", str(venv)], check=True, timeout=120)
    return venv / "bin"


def pip_install(bin_dir, tmp_path, extras=""):
    """``pip install CHECKOUT[EXTRAS]`` of a copy of the checkout; the environment for what runs next."""
    source = tmp_path / "zfeed"
    for package in PACKAGES:
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    env = dict(os.environ, PIP_CACHE_DIR=str(tmp_path / "pip-cache"))
    env.pop("PYTHONPATH", None)  # the installed package, not the checkout, must be what imports
    result = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", str(source) + extras],
                            cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    assert result.returncode == 0, result.stdout + result.stderr
    return env


def run(bin_dir, args, env, tmp_path):
    return subprocess.run([str(bin_dir / args[0]), *args[1:]], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.integration
def test_trainer_side_installs_on_python_3_8_with_numpy_pyzmq_and_msgpack_only(tmp_path):
    if not CLIENT_PYTHON_3_8.is_file():
        pytest.fail("no Python 3.8 at %s: run ./dev setup" % CLIENT_PYTHON_3_8, pytrace=False)
    bin_dir = fresh_venv(CLIENT_PYTHON_3_8, tmp_path)
    env = pip_install(bin_dir, tmp_path)
    probe = run(bin_dir, ["python", "-c", "import sys, client_layer; from client_layer import BatchClient, wire; "
                          "print(sys.version_info[:2], client_layer.__file__)"], env, tmp_path)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.startswith("(3, 8) ") and str(tmp_path / "venv") in probe.stdout
    listed = run(bin_dir, ["python", "-m", "pip", "list", "--format", "freeze"], env, tmp_path)
    installed = {requirement_name(line) for line in listed.stdout.split()} - VENV_OWN
    assert installed == {"zfeed", "numpy", "pyzmq", "msgpack"}


@pytest.mark.integration
def test_server_extra_installs_a_working_zfeed_server_on_python_3_11(tmp_path):
    assert sys.version_info[:2] == (3, 11), "the test suite runs on the server's Python, 3.11"
    bin_dir = fresh_venv(sys.executable, tmp_path)
    env = pip_install(bin_dir, tmp_path, "[server]")
    for command in (["zfeed-server", "--help"], ["python", "-m", "server", "--help"]):
        result = run(bin_dir, command, env, tmp_path)
        assert result.returncode == 0, result.stderr
        assert "--source" in result.stdout and "--from-prototxt" in result.stdout
    imported = run(bin_dir, ["python", "-c", "import client_layer, server.tools.convert_imageset; "
                             "print(client_layer.__file__)"], env, tmp_path)
    assert imported.returncode == 0 and str(tmp_path / "venv") in imported.stdout, imported.stderr


@pytest.mark.unit
def test_server_extra_declares_every_requirement_of_the_server():
    """requirements.txt pins what the server is tested with; the extra must not miss one of them."""
    project = pyproject()["project"]
    declared = {requirement_name(r) for r in project["dependencies"] + project["optional-dependencies"]["server"]}
    pinned = {requirement_name(line) for line in (REPO / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    assert pinned - declared == set()


def annotations_evaluated_at_run_time(tree):
    """Annotations Python evaluates when a module runs: on parameters, returns and class or
    module level names (a function body's own ``x: T`` is never evaluated)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            arguments = node.args
            for argument in arguments.posonlyargs + arguments.args + arguments.kwonlyargs + \
                    [arguments.vararg, arguments.kwarg]:
                if argument is not None and argument.annotation is not None:
                    yield argument.annotation
            if node.returns is not None:
                yield node.returns
        if isinstance(node, (ast.Module, ast.ClassDef)):
            yield from (child.annotation for child in node.body if isinstance(child, ast.AnnAssign))


def newer_than_3_8(annotation):
    """``X | Y`` (Python 3.10) or ``list[int]``-style builtin generics (3.9) inside an annotation."""
    for node in ast.walk(annotation):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return True
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and \
                node.value.id in ("list", "dict", "tuple", "set", "frozenset", "type"):
            return True
    return False


@pytest.mark.unit
def test_no_module_evaluates_an_annotation_python_3_8_cannot():
    """pyproject.toml says Python >= 3.8: an annotation that 3.8 cannot evaluate breaks the
    import there (``from __future__ import annotations`` keeps them unevaluated)."""
    offending = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            if any(isinstance(node, ast.ImportFrom) and node.module == "__future__" and
                   any(alias.name == "annotations" for alias in node.names) for node in tree.body):
                continue
            offending += ["%s:%d" % (path.relative_to(REPO), annotation.lineno)
                          for annotation in annotations_evaluated_at_run_time(tree) if newer_than_3_8(annotation)]
    assert offending == []
