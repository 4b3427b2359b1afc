"""Run scripts from tests/caffe_scripts/ under the Python that has real Caffe.

That interpreter is ``$ZFEED_CAFFE_PYTHON``, else ``<repo>/.venv-caffe/bin/python``
(made by ``./dev setup``). Tests that need it fail, never skip, when it is
missing: a cross-check against real Caffe that silently stops running is
worse than none.
"""

import subprocess
from pathlib import Path

import pytest

from harness import children

SCRIPTS = Path(__file__).resolve().parent / "caffe_scripts"


def caffe_python() -> str:
    """Path of the Caffe Python; fails the calling test when it does not exist."""
    try:
        return children.caffe_python()
    except children.ChildError as missing:
        pytest.fail(str(missing), pytrace=False)


def run_caffe_script(name, *args, timeout=120) -> subprocess.CompletedProcess:
    """Run ``tests/caffe_scripts/<name>`` (``.py`` optional) with ``args`` under Caffe's Python.

    The child gets GLOG_minloglevel=2 (quiet Caffe) and PYTHONPATH=<repo>
    (so ``import client_layer`` works). Returns the completed process with
    text stdout/stderr; fails the test, showing both, on a non-zero exit or
    when ``timeout`` seconds pass.
    """
    script = SCRIPTS / (name if name.endswith(".py") else f"{name}.py")
    command = [caffe_python(), str(script), *map(str, args)]
    env = children.child_env()
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{script.name} timed out after {timeout} s\n"
                    f"--- stdout ---\n{_text(exc.stdout)}\n--- stderr ---\n{_text(exc.stderr)}",
                    pytrace=False)
    if result.returncode != 0:
        pytest.fail(f"{script.name} exited with status {result.returncode}\n"
                    f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}",
                    pytrace=False)
    return result


def _text(output):
    # TimeoutExpired carries bytes even when the run asked for text.
    return output.decode(errors="replace") if isinstance(output, bytes) else output
