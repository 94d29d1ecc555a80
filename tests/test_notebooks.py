"""The tutorial notebooks: they run (at small size), and are committed as
``notebooks/_build.py`` writes them: its sources, with the outputs of their small run.

Each notebook is executed with nbclient in a kernel that runs *this* Python
(``sys.executable``: a kernelspec written into a temporary Jupyter path), with
``ADVCAL_NOTEBOOK_SIZE=small`` and without the cells tagged ``skip-ci`` (the Colab
install cell).
"""

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
KERNEL_NAME = "keras-advcal-tests"
# Notebooks whose small run draws a figure (03 prints tables only).
PLOTTING = {"01_quickstart.ipynb", "02_robust_overfitting.ipynb", "04_label_noise.ipynb"}


def _build_module():
    """notebooks/_build.py, the source of the notebooks."""
    sys.path.insert(0, str(NOTEBOOK_DIR))
    try:
        import _build
    finally:
        sys.path.remove(str(NOTEBOOK_DIR))
    return _build


def _ids(paths):
    return [path.name for path in paths]


def test_there_are_notebooks():
    names = {path.name for path in NOTEBOOKS}
    assert {"01_quickstart.ipynb", "02_robust_overfitting.ipynb",
            "03_keras_tuner.ipynb", "04_label_noise.ipynb"} <= names


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory):
    """A kernelspec that starts ``sys.executable -m ipykernel_launcher``."""
    from ipykernel.kernelspec import install

    prefix = tmp_path_factory.mktemp("jupyter")
    install(kernel_name=KERNEL_NAME, prefix=str(prefix), display_name="keras-advcal tests")
    spec_dir = prefix / "share" / "jupyter" / "kernels" / KERNEL_NAME
    argv = json.loads((spec_dir / "kernel.json").read_text())["argv"]
    assert argv[0] == sys.executable
    previous = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(
        [str(prefix / "share" / "jupyter")] + ([previous] if previous else []))
    yield KERNEL_NAME
    if previous is None:
        os.environ.pop("JUPYTER_PATH", None)
    else:
        os.environ["JUPYTER_PATH"] = previous


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_at_small_size(path, kernel_name, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("ADVCAL_NOTEBOOK_SIZE", "small")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    nb.cells = [cell for cell in nb.cells
                if "skip-ci" not in cell.get("metadata", {}).get("tags", [])]
    client = NotebookClient(nb, kernel_name=kernel_name, timeout=300,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    errors = [output for cell in nb.cells if cell.cell_type == "code"
              for output in cell.get("outputs", []) if output.get("output_type") == "error"]
    assert not errors
    # The kernel was this interpreter, so the notebook tested this checkout.
    probe = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.get("execution_count") for cell in probe)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_committed_notebook_holds_its_small_run(path):
    """Every cell but the Colab install ran, in order, without error; the notebooks
    that plot carry their figures (what the documentation site shows)."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    ran = [cell for cell in code if "skip-ci" not in cell.metadata.get("tags", [])]
    assert all(cell.execution_count is None and not cell.outputs for cell in code
               if cell not in ran), f"{path.name}: the Colab install cell has outputs"
    counts = [cell.execution_count for cell in ran]
    assert counts == list(range(1, len(ran) + 1)), (
        f"{path.name}: saved without a complete run (execution counts {counts}): "
        "run python notebooks/_build.py")
    outputs = [output for cell in ran for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    assert not [output for output in outputs if output.get("name") == "stderr"]
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert bool(images) == (path.name in PLOTTING), f"{path.name}: {len(images)} figures"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_layout(path):
    """Colab badge first, Colab-only install cell, size read from the environment."""
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "markdown"
    assert _build_module().colab_url(path.name) in first.source
    assert "colab-badge.svg" in first.source
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    install = code[0]
    assert "skip-ci" in install.metadata.get("tags", [])
    assert '"google.colab" in sys.modules' in install.source
    parameters = code[1]
    assert "parameters" in parameters.metadata.get("tags", [])
    assert 'os.environ.get("ADVCAL_NOTEBOOK_SIZE", "full")' in parameters.source


def test_notebooks_match_their_build_script():
    """notebooks/_build.py is the source of the notebooks: regenerate after editing."""
    _build = _build_module()
    for name, cells in _build.NOTEBOOKS.items():
        expected = _build.make_notebook(name, cells)
        actual = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
        assert [c.source for c in actual.cells] == [c.source for c in expected.cells], (
            f"{name} differs from notebooks/_build.py: run python notebooks/_build.py")
