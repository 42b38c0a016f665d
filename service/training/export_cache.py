"""The exporter's graph, traced once per architecture and kept under the state dir (`<cache_dir>/onnx-graphs/`).

Tracing (torch.export, decompositions, translation to ONNX) is most of an export's time and
depends on the architecture only, not on the weights. So the traced graph is kept, keyed by
everything it depends on (`graph_key`), and a later job of the same architecture loads it and
swaps in its own weights by the names the exporter gave them (its parameters' and buffers'
qualified names). The graph is kept as it is before the exporter's optimisation (constant
folding, merging of equal initializers), whose result depends on the values: every job
optimises its own swapped graph, which makes the file a full export would make. If any
initializer cannot be mapped to a parameter or buffer of the same shape and dtype, the
graph is not used (`load` says why) and the caller exports in full; the parity check runs
on every file either way (`service.training.export.export_and_check`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)
GRAPHS_DIR = "onnx-graphs"  # below the cache dir; the service's purge removes graphs unused for cache_retention_s
VERSIONED = ("torch", "onnx", "onnxscript", "onnx-ir")  # the packages that trace, translate and optimise


def graph_key(model: nn.Module, example: tuple[torch.Tensor, ...], **export_options) -> str:
    """SHA-256 of what the traced graph depends on: every module's class and plain attributes (for
    example `frame_scale_m`, a constant in the graph), the parameters' and buffers' names, shapes
    and dtypes, the example inputs' shapes and dtypes, the export options, the versions of the
    exporting packages, and the source of the model's modules and of the export code."""
    modules = [[name, f"{type(m).__module__}.{type(m).__qualname__}", _plain_attributes(m)]
               for name, m in model.named_modules()]
    state = [[name, list(t.shape), str(t.dtype)] for name, t in _weights(model).items()]
    sources = sorted({sys.modules[cls.__module__].__file__ for m in model.modules() for cls in type(m).__mro__
                      if cls.__module__.startswith("service.")} | {__file__, sys.modules["service.training.export"].__file__})
    digest = hashlib.sha256(json.dumps({
        "modules": modules, "state": state, "example": [[list(t.shape), str(t.dtype)] for t in example],
        "options": export_options, "versions": {name: version(name) for name in VERSIONED},
    }, sort_keys=True, default=str).encode())
    for source in sources:
        digest.update(Path(source).read_bytes())
    return digest.hexdigest()


def load(cache_dir: Path, key: str, model: nn.Module):
    """The kept graph with `model`'s weights swapped in, as a torch.onnx.ONNXProgram; None when no
    graph is kept for `key` or an initializer cannot be mapped (then a log line says which)."""
    import onnx_ir as ir

    path = Path(cache_dir) / GRAPHS_DIR / f"{key}.onnx"
    try:
        graph = ir.load(str(path))
    except FileNotFoundError:
        return None
    except Exception as exc:  # a damaged file: traced again and replaced
        _warn("onnx graph unreadable: full export", key=key, error=str(exc))
        return None
    weights = _weights(model)
    unmapped = [name for name, value in graph.graph.initializers.items()
                if name not in weights or list(value.shape) != list(weights[name].shape)
                or value.dtype != _ir_dtype(weights[name])]
    missing = sorted(set(weights) - set(graph.graph.initializers))
    if unmapped or missing:
        _warn("onnx graph not reusable: full export", key=key, unmapped_initializers=unmapped[:20],
              unused_weights=missing[:20])
        return None
    program = torch.onnx.ONNXProgram(graph, None)
    program.apply_weights(weights)
    os.utime(path)  # last used: the purge keeps graphs in use
    return program


def store(cache_dir: Path, key: str, program) -> None:
    """Keep a freshly traced graph (before optimisation) for later jobs; atomic, and only as one file."""
    folder = Path(cache_dir) / GRAPHS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".tmp-") as tmp:
        partial = Path(tmp) / f"{key}.onnx"
        program.save(str(partial), external_data=False)
        if len(list(Path(tmp).iterdir())) == 1:  # too large for one file: not kept, every job traces
            os.replace(partial, folder / f"{key}.onnx")


def _warn(event: str, **fields) -> None:
    log.warning(event, extra={"fields": {"event": event, "stage": "export", **fields}})


def _ir_dtype(tensor: torch.Tensor):
    import onnx_ir as ir

    try:
        return ir.DataType.from_numpy(torch.empty((), dtype=tensor.dtype).numpy().dtype)
    except (TypeError, ValueError):  # no numpy dtype (bfloat16, ...): not swapped, traced in full
        return None


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers (persistent or not) by qualified name: the exporter's initializer names."""
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def _plain_attributes(module: nn.Module) -> dict[str, str]:
    """A module's public attributes that can shape its graph: numbers, strings, tuples, dataclasses."""
    plain = (bool, int, float, str, tuple, list, type(None))
    return {name: repr(value) for name, value in sorted(vars(module).items())
            if not name.startswith("_") and name != "training"
            and (isinstance(value, plain) or dataclasses.is_dataclass(value))}
