"""A model version's source folder as a complete MLflow model: the ONNX flavour with the contract's
signature (model.md: inputs `iq`, `rx_position`, `rx_online`; outputs `position`, `covariance`),
an input example of real captures, the model card and the job's plots. So
`mlflow.pyfunc.load_model("models:/<name>@champion")` and `mlflow models serve` take it as it is.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

CARD_FILE, ONNX_FILE = "model.json", "model.onnx"


def tensor_schema(described: list[dict]):
    """MLflow's schema for export_onnx's description of the graph's inputs or outputs: a named
    (dynamic) axis, such as `batch` or `receivers`, is -1."""
    from mlflow.types import Schema, TensorSpec

    return Schema([TensorSpec(np.dtype(t["dtype"]), tuple(-1 if isinstance(d, str) else int(d) for d in t["shape"]),
                              t["name"]) for t in described])


def write_card(path: Path, card: dict) -> Path:
    path.write_text(json.dumps(card, indent=2))
    return path


def write_model_folder(folder: Path, onnx_path: Path, card: dict, example: dict[str, np.ndarray],
                       plots: list[Path]) -> Path:
    """`folder`: MLmodel, model.onnx (the very bytes of `onnx_path`, whose sha256 the card gives),
    model.json, the input example, the environment files and plots/. Returns `folder`."""
    import mlflow.onnx
    import onnx
    import onnxruntime
    from mlflow.models import ModelSignature

    described = card["onnx"]
    mlflow.onnx.save_model(
        onnx.load(str(onnx_path)), str(folder), save_as_external_data=False, input_example=example,
        signature=ModelSignature(inputs=tensor_schema(described["inputs"]),
                                 outputs=tensor_schema(described["outputs"])),
        onnx_execution_providers=["CPUExecutionProvider"],
        # named, not inferred: inference loads the model in a subprocess, seconds for nothing
        pip_requirements=[f"onnx=={onnx.__version__}", f"onnxruntime=={onnxruntime.__version__}"])
    shutil.copyfile(onnx_path, folder / ONNX_FILE)  # the published bytes, not a re-serialisation
    write_card(folder / CARD_FILE, card)
    if plots:
        (folder / "plots").mkdir()
        for plot in plots:
            shutil.copyfile(plot, folder / "plots" / plot.name)
    return folder
