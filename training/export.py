"""ONNX export of LocalizationNet and the ONNX Runtime vs PyTorch parity check (model.md).

This is the one place where torch.onnx, onnx and onnxruntime errors are translated into
`ExportError`.

Size: the exporter and its parity check: the one place where ONNX errors are translated.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from foundation.errors import ExportError

log = logging.getLogger(__name__)

INPUT_NAMES = ("iq", "rx_position", "rx_online")
OUTPUT_NAMES = ("position", "covariance")
OPSET = 18
DYNAMIC_DIMS = ("batch", "receivers")  # the contract's names for the dynamic axes

# Why these defaults: float32 near latitude 45 has a spacing of 3.8e-6 degrees (0.4 m), and
# ONNX Runtime accumulates convolutions and matmuls in another order than torch. Untrained
# nets differ by ~1 m; the trained `small` demo model was measured at 8.4 m (7.6e-5 degrees),
# its deep encoder amplifying rounding. 50 m keeps a 6x margin and is still 400x below the
# physical accuracy (10-30 km), so a real graph defect (wrong op, lost mask, baked-in shape)
# shows up as kilometres. Covariances: measured relative differences 2e-5 at most; 1e-3 of
# max |covariance| keeps a 50x margin.
DEFAULT_TOLERANCES = {"position_m": 50.0, "covariance_rel": 1e-3}


def export_onnx(model: nn.Module, path: Path, *, samples: int, example_receivers: int = 7,
                graphs_dir: Path | None = None) -> dict:
    """Write `model` as one self-contained ONNX file with dynamic batch and receivers.

    With `graphs_dir`, the optimised graph is kept there per architecture and a later model of
    the same architecture reuses it with its own weights (`training.export_cache`); call
    `export_and_check`, which exports in full when a reused graph fails the parity check.
    Returns {"sha256", "bytes", "opset", "inputs", "outputs"}, shapes read back from the file.
    Raises ExportError when the exporter fails, the file is not self-contained, or
    onnx.checker refuses it.
    """
    return _export(model, Path(path), samples, example_receivers, graphs_dir)[0]


def export_and_check(model: nn.Module, path: Path, inputs: dict[str, np.ndarray], *, samples: int,
                     example_receivers: int = 7, graphs_dir: Path | None = None) -> tuple[dict, dict]:
    """`export_onnx`, then `check_parity` on the file, which always runs. A file made from a kept
    graph that fails it is exported again in full (a log line says so) and checked again.
    Returns (export_onnx's description, the parity report). Raises ExportError."""
    info, reused = _export(model, Path(path), samples, example_receivers, graphs_dir)
    try:
        return info, check_parity(model, path, inputs)
    except ExportError as exc:
        if not reused:
            raise
        log.warning("onnx graph failed parity: full export", extra={"fields": {
            "event": "onnx graph failed parity: full export", "stage": "export", "error": exc.message}})
    info, _ = _export(model, Path(path), samples, example_receivers, graphs_dir, reuse=False)
    return info, check_parity(model, path, inputs)


def _export(model: nn.Module, path: Path, samples: int, example_receivers: int, graphs_dir: Path | None, *,
            reuse: bool = True) -> tuple[dict, bool]:
    """(the file's description, whether it was made from a kept graph)."""
    from training import export_cache

    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        # batch >= 2 so that batch size 1 is not baked into the graph
        example = _example_inputs(2, example_receivers, samples)
        key = export_cache.graph_key(model, example, opset=OPSET, inputs=INPUT_NAMES, outputs=OUTPUT_NAMES,
                                     dynamic=DYNAMIC_DIMS) if graphs_dir is not None else None
        kept = export_cache.load(graphs_dir, key, model) if key and reuse else None
        if kept is not None:
            try:
                return _write(kept, path, samples), True
            except ExportError as exc:
                log.warning("onnx graph unusable: full export", extra={"fields": {
                    "event": "onnx graph unusable: full export", "stage": "export", "error": exc.message}})
        program = _translate(lambda: _run_exporter(model, example), path)
        _translate(lambda: export_cache.optimize_around_weights(program, model), path)
        if key:
            _translate(lambda: export_cache.store(graphs_dir, key, program, model), path)
        return _write(program, path, samples), False
    finally:
        model.train(was_training)


def _write(program, path: Path, samples: int) -> dict:
    """Write the optimised graph as one file with the contract's axis names, and check it."""
    import onnx

    def write():
        program.save(str(path), external_data=False)
        proto = onnx.load(str(path), load_external_data=False)
        _name_dynamic_axes(proto, samples)
        onnx.save(proto, str(path))
        onnx.checker.check_model(str(path), full_check=True)
        return proto

    proto = _translate(write, path)
    _require_self_contained(path, proto)
    data = path.read_bytes()
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "opset": _opset(proto),
        "inputs": [_describe(v) for v in proto.graph.input],
        "outputs": [_describe(v) for v in proto.graph.output],
    }


def _translate(step, path: Path):
    """Run one step of the export; what it raises becomes ExportError (the exporter raises many unrelated types)."""
    try:
        return step()
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"ONNX export to {path} failed: {type(exc).__name__}: {exc}") from exc


def _run_exporter(model: nn.Module, example: tuple[torch.Tensor, ...]):
    """torch.onnx's dynamo exporter, every input dynamic in its first two axes (batch, receivers).

    Returns the ONNXProgram before optimisation: `export_cache.optimize_around_weights` optimises
    it so that the result does not depend on the weights' values."""
    batch, receivers = torch.export.Dim("batch", min=1), torch.export.Dim("receivers", min=1)
    with warnings.catch_warnings():
        # one Dim object shared by all inputs makes the exporter say an axis name "will not
        # be used"; `_name_dynamic_axes` gives the axes the contract's names afterwards
        warnings.filterwarnings("ignore", message=".*The axis name", category=UserWarning)
        return torch.onnx.export(
            model,
            example,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            opset_version=OPSET,
            dynamo=True,
            optimize=False,
            dynamic_shapes={name: {0: batch, 1: receivers} for name in INPUT_NAMES},
            verbose=False,  # the exporter otherwise prints progress to stdout, which `--json` owns
        )


def check_parity(
    model: nn.Module,
    onnx_path: Path,
    inputs: dict[str, np.ndarray],
    *,
    batch_sizes: tuple[int, ...] = (1, 16),
    tolerances: dict[str, float] | None = None,
) -> dict:
    """Compare ONNX Runtime (CPU) with PyTorch eval on the first n sessions for each n.

    `inputs` maps INPUT_NAMES to held-out arrays; a batch size larger than the sessions
    given is clipped to what is there. Returns the report (see model.md `parity`).
    Raises ExportError (with `.report`) when a difference exceeds its tolerance or an output
    is not finite, or when ONNX Runtime cannot load or run the file.
    """
    import onnxruntime as ort

    tolerances = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    available = len(inputs[INPUT_NAMES[0]])
    sizes = sorted({min(n, available) for n in batch_sizes})
    try:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"ONNX Runtime cannot load {onnx_path}: {exc}") from exc
    was_training = model.training
    model.eval()
    try:
        diffs = [_batch_differences(session, model, inputs, n, onnx_path) for n in sizes]
    finally:
        model.train(was_training)
    report = _parity_report(diffs, tolerances, sizes)
    if not report["passed"]:
        error = ExportError(f"ONNX Runtime and PyTorch disagree on {onnx_path}: {report}")
        error.report = report
        raise error
    return report


def _batch_differences(session, model: nn.Module, inputs: dict[str, np.ndarray], n: int, onnx_path: Path) -> dict:
    """ONNX Runtime against PyTorch on the first `n` sessions: the largest differences, and whether all is finite."""
    feed = {name: np.ascontiguousarray(inputs[name][:n], dtype=np.float32) for name in INPUT_NAMES}
    try:
        ort_position, ort_covariance = session.run(list(OUTPUT_NAMES), feed)
    except Exception as exc:
        raise ExportError(f"ONNX Runtime failed on {onnx_path} at batch {n}: {exc}") from exc
    with torch.no_grad():
        torch_position, torch_covariance = (
            t.numpy() for t in model(*(torch.from_numpy(feed[name]) for name in INPUT_NAMES))
        )
    outputs = (ort_position, ort_covariance, torch_position, torch_covariance)
    return {
        "finite": all(bool(np.isfinite(output).all()) for output in outputs),
        "position": float(np.abs(ort_position - torch_position).max()),
        "position_m": float(_distance_m(ort_position, torch_position).max()),
        "covariance": float(np.abs(ort_covariance - torch_covariance).max()),
        "covariance_scale": float(np.abs(torch_covariance).max()),
    }


def _parity_report(diffs: list[dict], tolerances: dict[str, float], sizes: list[int]) -> dict:
    """model.md's `parity` report: the worst difference over all batch sizes against its tolerance."""
    worst = {key: max([0.0, *(d[key] for d in diffs)]) for key in ("position", "position_m", "covariance",
                                                                   "covariance_scale")}
    covariance_diff, covariance_scale = worst["covariance"], worst["covariance_scale"]
    return {
        "max_abs_diff": {"position": worst["position"], "position_m": worst["position_m"],
                         "covariance": covariance_diff},
        "max_rel_diff": {"covariance": covariance_diff / covariance_scale if covariance_scale else 0.0},
        "tolerances": tolerances,
        "batch_sizes": sizes,
        "passed": all(d["finite"] for d in diffs)
        and worst["position_m"] <= tolerances["position_m"]
        and covariance_diff <= tolerances["covariance_rel"] * covariance_scale,
    }


def _distance_m(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from training.geodesy import haversine_m

    a, b = a.astype(np.float64), b.astype(np.float64)
    return haversine_m(a[:, 0], a[:, 1], b[:, 0], b[:, 1])


def _example_inputs(batch: int, receivers: int, samples: int) -> tuple[torch.Tensor, ...]:
    """Physically scaled example inputs (~-100 dBm noise, receivers near 45 N 8 E)."""
    generator = torch.Generator().manual_seed(0)
    iq = torch.randn(batch, receivers, samples, 2, generator=generator) * 7e-6
    offsets = torch.randn(batch, receivers, 2, generator=generator) * 0.3
    altitude = torch.rand(batch, receivers, 1, generator=generator) * 500.0
    rx_position = torch.cat([torch.tensor([45.0, 8.0]) + offsets, altitude], dim=-1)
    return iq, rx_position, torch.ones(batch, receivers)


def _name_dynamic_axes(proto, samples: int) -> None:
    """Give the exporter's symbolic dims (s0, s1, ...) the contract's names.

    Every graph input has [batch, receivers, ...] and outputs have [batch, ...]; the names are
    taken from the inputs' first two axes so the mapping is read, not guessed.
    """
    iq_samples = proto.graph.input[0].type.tensor_type.shape.dim[2].dim_value
    if iq_samples != samples:
        raise ExportError(f"iq was exported with {iq_samples} samples, the card says {samples}")
    renames: dict[str, str] = {}
    for value in proto.graph.input:
        dims = value.type.tensor_type.shape.dim
        for dim, name in zip(dims[:2], DYNAMIC_DIMS):
            if not dim.dim_param:
                raise ExportError(f"input {value.name} axis {name} was exported as fixed size {dim.dim_value}")
            renames[dim.dim_param] = name
    for value in [*proto.graph.input, *proto.graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in renames:
                dim.dim_param = renames[dim.dim_param]


def _require_self_contained(path: Path, proto) -> None:
    from onnx.external_data_helper import uses_external_data

    side_files = [p.name for p in path.parent.glob(path.name + ".*") if p != path]
    external = [t.name for t in proto.graph.initializer if uses_external_data(t)]
    if side_files or external:
        raise ExportError(f"{path} is not self-contained: side files {side_files}, external tensors {external}")


def _opset(proto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _describe(value) -> dict:
    import onnx

    tensor = value.type.tensor_type
    shape = [d.dim_param if d.dim_param else d.dim_value for d in tensor.shape.dim]
    return {"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name, "shape": shape}
