"""The Makefile's targets with and without an active virtual environment (dry runs in a
temporary copy, so that nothing is installed), and the extras they install."""

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _dry_run(target: str, tmp_path: Path, virtual_env: str | None) -> list[str]:
    """The commands ``make -n TARGET`` would run in a copy of the Makefile (no .venv)."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    # Not VIRTUAL_ENV, nor the variables of a make that runs these tests (make test:
    # a nested make would print "Entering directory" lines).
    env = {key: value for key, value in os.environ.items()
           if key not in ("VIRTUAL_ENV", "MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    if virtual_env is not None:
        env["VIRTUAL_ENV"] = virtual_env
    result = subprocess.run(["make", "-n", target], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_demo_in_an_active_virtual_environment_installs_into_it(tmp_path):
    venv = str(tmp_path / "active-env")
    commands = _dry_run("demo", tmp_path, venv)
    assert commands == [f"{venv}/bin/python -m pip install --upgrade pip",
                        f"{venv}/bin/python -m pip install -e .",
                        f"touch {venv}/.keras-advcal-installed",
                        f"{venv}/bin/python -m keras_advcal demo"]


def test_demo_without_a_virtual_environment_creates_dot_venv(tmp_path):
    commands = _dry_run("demo", tmp_path, None)
    assert commands[0] == "python3 -m venv .venv"
    assert ".venv/bin/python -m pip install -e ." in commands
    assert commands[-1] == ".venv/bin/python -m keras_advcal demo"
    assert not any("[dev]" in command for command in commands)  # the demo needs no dev tools


@pytest.mark.parametrize("virtual_env", [None, "/opt/env"])
def test_test_target_installs_the_dev_extras_then_runs_pytest(tmp_path, virtual_env):
    commands = _dry_run("test", tmp_path, virtual_env)
    python = f"{virtual_env or '.venv'}/bin/python"
    assert f'{python} -m pip install -e ".[dev]"' in commands
    assert commands[-1].endswith(f"{python} -m pytest -q -p no:cacheprovider --durations=30")
    assert ("python3 -m venv .venv" in commands) == (virtual_env is None)


def test_demo_does_not_hide_the_cli_filter_behind_tf_cpp_min_log_level(tmp_path):
    """The advcal command filters TensorFlow's start-up lines itself (see cli._library)."""
    (command,) = [line for line in _dry_run("demo", tmp_path, "/e") if "keras_advcal" in line]
    assert "TF_CPP_MIN_LOG_LEVEL" not in command


def test_extras():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert "jupyterlab" in extras["notebooks"]
    assert {"pytest", "mkdocs"} <= set(extras["dev"])
