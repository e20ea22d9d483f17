"""notebooks/inspect_crops.ipynb runs top to bottom on a tiny checkpoint made here."""
import os
import sys
from pathlib import Path

import nbclient
import nbformat
import torch
from conftest import TINY_DATA, TINY_MODEL

from raccnn.config import load_config
from raccnn.engine.checkpoint import save_checkpoint
from raccnn.models import build_racnn

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "inspect_crops.ipynb"
TINY = TINY_DATA + TINY_MODEL


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert all(not cell.outputs and cell.execution_count is None for cell in nb.cells if cell.cell_type == "code")


def test_notebook_runs_on_a_tiny_checkpoint(tmp_path, monkeypatch):
    torch.manual_seed(0)
    cfg = load_config(str(REPO / "experiments/configs/fgsynth_default.yaml"),
                      TINY + [f"data.root={tmp_path / 'fgsynth'}", f"work_dir={tmp_path / 'run'}"])
    checkpoint = tmp_path / "run" / "best.pt"
    save_checkpoint(checkpoint, {"model": build_racnn(cfg, 3).state_dict(), "config": cfg, "num_classes": 3,
                                 "classes": ["a", "b", "c"], "phase": "fusion"})
    monkeypatch.setenv("RACCNN_CHECKPOINT", str(checkpoint))

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=120,
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError with the failing cell's traceback

    text = "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)
    images = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
              if "image/png" in out.get("data", {})]
    # the kernel is this interpreter (the venv's), and it used the checkpoint made above
    kernel_python = next(line for line in text.splitlines() if line.startswith("python: "))[len("python: "):]
    assert os.path.realpath(kernel_python) == os.path.realpath(sys.executable)
    assert f"checkpoint: {checkpoint}" in text and "does not exist" not in text
    assert "val split" in text and "part box drawn: crest" in text
    assert "| scale 1 |" in text and "fused123" in text  # accuracy table and per-class columns
    assert "scale 2 fixes scale 1 on" in text and "scale 2 breaks scale 1 on" in text
    assert len(images) >= 2  # the crop grid and the map of centres
