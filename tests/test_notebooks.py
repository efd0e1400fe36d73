"""Every notebook in notebooks/ executes (small settings, no cell error) and holds its generator's cells."""

import glob
import os
import runpy

import pytest

NOTEBOOKS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "notebooks", "*.ipynb")))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_notebook_executes(path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    os.environ.setdefault("JAXMOE_NB_STEPS", "20")  # the kernel inherits the environment
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": os.path.dirname(path)}})
    client.execute()


GENERATORS = os.path.join(os.path.dirname(__file__), "..", "tools")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_notebook_matches_its_generator(path, tmp_path):
    """Every notebook has its generator in tools/make_notebook_NN.py, and the stored notebook
    holds exactly the cells that generator writes (the stored one adds the outputs)."""
    nbformat = pytest.importorskip("nbformat")
    number = os.path.basename(path)[:2]
    generator = os.path.join(GENERATORS, f"make_notebook_{number}.py")
    assert os.path.isfile(generator), f"{os.path.basename(path)} has no generator tools/make_notebook_{number}.py"
    module = runpy.run_path(generator)  # defines the cells and write(); writes nothing when imported
    assert os.path.samefile(module["NOTEBOOK"], path)
    module["write"](tmp_path / "nb.ipynb")
    written = nbformat.read(tmp_path / "nb.ipynb", as_version=4).cells
    stored = nbformat.read(path, as_version=4).cells
    assert [(c.cell_type, c.source) for c in written] == [(c.cell_type, c.source) for c in stored]
