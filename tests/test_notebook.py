"""notebooks/quickstart.ipynb runs top to bottom, headless, from its own folder."""
import pytest

from conftest import ROOT

NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs():
    nbformat = pytest.importorskip("nbformat", reason="pip install -r requirements-dev.txt (nbformat)")
    nbclient = pytest.importorskip("nbclient", reason="pip install -r requirements-dev.txt (nbclient)")
    pytest.importorskip("ipykernel", reason="pip install -r requirements-dev.txt (ipykernel)")
    pytest.importorskip("gradio", reason="the notebook calls the app (pip install -r requirements.txt)")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(cell.get("outputs") for cell in nb.cells), "commit the notebook without outputs"
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    images = [i for i, cell in enumerate(nb.cells) for out in cell.get("outputs", [])
              if "image/png" in out.get("data", {})]
    assert len(images) == 3, "curves, input | map | target, and the API's map"
    text = "".join(out.get("text", "") for out in nb.cells[images[-1]].outputs)
    assert "MP/s" in text and "eval mode" in text
