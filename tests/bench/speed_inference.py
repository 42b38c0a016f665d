"""Inference for `python -m tests.bench.speed`: the model the service serves by default, as it serves it.

The default preset (`TrainConfig().preset`, the learned radio map) is fitted and calibrated as the
quality bench fits it (`training.bench.fitting.train_for_bench`: the family's own fit, then the job's
covariance scale) and exported as the job exports it (`training.pipeline.export_model`: the kept
graph, the parity check). The closed-form map held every training session in its graph (the
fingerprint memory); the learned map keeps a one-session stub. It is fitted at two sizes of synthetic
dataset, so that a graph growing with the training set would show, and on two deployments of issue 22's
"any area" (`AREAS_KM`): 300 × 300 km, whose 2 km cells are evaluated coarse to fine
(`training.radio_map.refine`), and a 3 × 3 km campus. ONNX Runtime is timed with the session options of the service
where it scores models (the defaults with the CPU provider: `champion_gate.score_onnx`,
`export.check_parity`, the MLflow flavour), beside two other option sets and PyTorch eager.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from tests.bench.speed_data import dataset

SAMPLES = 1024  # per capture: the demo's, as the rates part's dataset
# dataset id: sessions (about 45 % of them land in the training split once blocks and buffers are set aside)
DATASETS = {"speed-rates-3k": 3000, "speed-inference-18k": 18_000}
# dataset id: side of the square its 7 random receivers are drawn in, km; transmitters up to a tenth beyond
AREAS_KM = {"speed-area-300km": 300.0, "speed-area-3km": 3.0}
AREA_SESSIONS = 3000
BATCHES = {1: 50, 64: 10}  # batch size: timed runs (after a fifth as many warm-up runs, at least 2)
SERVICE_OPTIONS = "defaults (as in the service)"
# issue 22's goals for the served model, on the service's options
GOAL_BATCH_1_MS, GOAL_PER_SESSION_AT_64_MS, GOAL_GRAPH_MB = 10.0, 1.0, 100.0


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
    """The ONNX Runtime session options compared: the service's (defaults), one thread, every core and every rewrite."""
    import onnxruntime as ort

    one = ort.SessionOptions()
    one.intra_op_num_threads = 1
    cores = ort.SessionOptions()
    cores.intra_op_num_threads = os.cpu_count() or 1
    cores.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    cores.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return {SERVICE_OPTIONS: None, "intra_op_num_threads=1": one,
            f"intra_op_num_threads={cores.intra_op_num_threads}, ORT_ENABLE_ALL": cores}


def served_model(uri: str, state_dir: Path):
    """(dataset, fitted network, `Exported`) for the default preset on `uri`, fitted and exported as a job does."""
    from foundation.child_protocol import JobSpec
    from foundation.settings import Settings
    from foundation.train_config import TrainConfig
    from training.bench.fitting import train_for_bench
    from training.pipeline import Job, export_model, open_dataset

    settings, config = Settings(state_dir=state_dir), TrainConfig()
    data = open_dataset(settings, config, uri)
    workdir = state_dir / Path(uri).parent.name
    net, tracking, _ = train_for_bench(settings, data, config, f"speed-{Path(uri).parent.name}", workdir)
    tracking.finish("FINISHED")
    exported = export_model(Job(settings, JobSpec(data_uri=uri, config=config), data), net, workdir)
    return data, net, exported


def batch_times(net, data, onnx_path: Path) -> list[dict]:
    """Per batch size: torch eager ms and ms for each ONNX Runtime option set, on the test split's sessions."""
    import onnxruntime as ort
    import torch

    iq, online, rx = data.model_inputs(data.indices("test")[: max(BATCHES)])
    sessions = {name: ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
                for name, options in ort_options().items()}
    rows = []
    for batch, repeats in BATCHES.items():
        feed = {"iq": iq[:batch], "rx_position": rx[:batch], "rx_online": online[:batch]}
        tensors = [torch.from_numpy(feed[name]) for name in ("iq", "rx_position", "rx_online")]
        with torch.inference_mode():
            eager_ms = _median_ms(lambda: net(*tensors), repeats)
        ort_ms = {name: _median_ms(lambda s=session: s.run(None, feed), repeats) for name, session in sessions.items()}
        rows.append({"batch": batch, "torch_ms": eager_ms, "ort_ms": ort_ms, "torch_threads": torch.get_num_threads()})
    return rows


def area_dataset(root: Path, dataset_id: str, side_km: float) -> str:
    """A deployment of `AREA_SESSIONS` sessions over a `side_km` square, written once below `root` and reused."""
    from training.datasets.synth import SynthConfig, synthesize_dataset

    version = root / dataset_id / "v1"
    if not (version / "dataset.json").is_file():
        synthesize_dataset(SynthConfig(sessions=AREA_SESSIONS, dataset_id=dataset_id, samples_per_capture=SAMPLES,
                                       receiver_layout="random", random_area_m=side_km * 1000.0,
                                       area_margin_m=side_km * 100.0, shard_size=5000), str(root))
    return str(version)


def inference_rows(root: Path, state_dir: Path, *, areas: bool = False) -> list[dict]:
    """Per dataset (the training-set sizes, or with `areas` the deployments): what the served graph holds,
    its cells, its file size, the fit's time and the batch times."""
    uris = {name: area_dataset(root, name, side_km) for name, side_km in AREAS_KM.items()} if areas else \
        {name: dataset(root, name, sessions, SAMPLES) for name, sessions in DATASETS.items()}
    rows = []
    for dataset_id, uri in uris.items():
        started = time.monotonic()
        data, net, exported = served_model(uri, state_dir)
        fitted_s = time.monotonic() - started
        shape, (ny, nx) = net.shape_args(), net.grid_shape
        step_m = float(net.cell_var_m2[0] * 12.0) ** 0.5
        rows.append({"dataset": dataset_id, "sessions": len(data), "train_sessions": int(len(data.indices("train"))),
                     "memory_sessions": shape["memory_sessions"], "receivers": shape["receivers"],
                     "cells": ny * nx, "cell_m": step_m, "area_km": (nx * step_m / 1000, ny * step_m / 1000),
                     "refine_stride": shape["refine_stride"], "onnx_mb": exported.onnx["bytes"] / 1e6,
                     "fit_and_export_s": fitted_s, "batches": batch_times(net, data, exported.onnx_path),
                     "load_average": os.getloadavg()[0]})
    return rows


def goals(row: dict) -> list[tuple[str, float, str, bool]]:
    """Issue 22's goals for one size, on the service's options: (what, this run's figure, the goal, met)."""
    at = {b["batch"]: b["ort_ms"][SERVICE_OPTIONS] for b in row["batches"]}
    return [("ms at batch 1", at[1], f"≤ {GOAL_BATCH_1_MS:g} ms", at[1] <= GOAL_BATCH_1_MS),
            ("ms per session at batch 64", at[64] / 64, f"≤ {GOAL_PER_SESSION_AT_64_MS:g} ms",
             at[64] / 64 <= GOAL_PER_SESSION_AT_64_MS),
            ("ONNX file MB", row["onnx_mb"], f"< {GOAL_GRAPH_MB:g} MB", row["onnx_mb"] < GOAL_GRAPH_MB)]
