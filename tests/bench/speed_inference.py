"""Inference for `python -m tests.bench.speed`: ONNX Runtime against PyTorch eager on the exported model.

The `small` model (untrained: speed does not depend on the weights) is exported by the job's own
`export_onnx`; both engines score the same dataset sessions at batch 1 and 64. ONNX Runtime is
timed with the session options that the service uses where it scores models (the defaults,
`champion_gate.score_onnx` and `export.check_parity`), and with the options worth setting elsewhere.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

BATCHES = {1: 50, 64: 10}  # batch size: timed runs (after a fifth as many warm-up runs, at least 2)


def _median_ms(run, repeats: int) -> float:
    for _ in range(max(2, repeats // 5)):
        run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def ort_options() -> dict[str, object]:
    """The ONNX Runtime session options compared: the defaults, one thread, every core and every graph rewrite."""
    import onnxruntime as ort

    one = ort.SessionOptions()
    one.intra_op_num_threads = 1
    cores = ort.SessionOptions()
    cores.intra_op_num_threads = os.cpu_count() or 1
    cores.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    cores.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return {"defaults (as scored in the service)": None, "intra_op_num_threads=1": one,
            f"intra_op_num_threads={cores.intra_op_num_threads}, ORT_ENABLE_ALL": cores}


def inference_rows(data_uri: str, state_dir: Path) -> list[dict]:
    """Per batch size: torch eager ms, and ms plus speed-up for each ONNX Runtime option set."""
    import onnxruntime as ort
    import torch

    from foundation.train_config import TrainConfig
    from foundation.settings import Settings
    from training.export import export_onnx
    from training.neural.model import LocalizationNet, frame_scale_for
    from training.pipeline import open_dataset

    data = open_dataset(Settings(state_dir=state_dir), TrainConfig(), data_uri)
    net = LocalizationNet(samples=data.manifest.samples_per_capture, preset="small",
                          frame_scale_m=frame_scale_for(data.rx_position[:, :2].astype(np.float64))).eval()
    iq, online, rx = data.model_inputs(data.indices("test")[: max(BATCHES)])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(net, path, samples=data.manifest.samples_per_capture, example_receivers=len(data.receivers))
        sessions = {name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                    for name, options in ort_options().items()}
        for batch, repeats in BATCHES.items():
            feed = {"iq": iq[:batch], "rx_position": rx[:batch], "rx_online": online[:batch]}
            tensors = [torch.from_numpy(feed[name]) for name in ("iq", "rx_position", "rx_online")]
            with torch.inference_mode():
                eager_ms = _median_ms(lambda: net(*tensors), repeats)
            ort_ms = {name: _median_ms(lambda s=session: s.run(None, feed), repeats)
                      for name, session in sessions.items()}
            rows.append({"batch": batch, "torch_ms": eager_ms, "ort_ms": ort_ms,
                         "torch_threads": torch.get_num_threads()})
    return rows
