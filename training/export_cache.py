"""The exporter's graph, traced once per architecture and kept under the state dir (`<cache_dir>/onnx-graphs/`).

Tracing (torch.export, decompositions, translation to ONNX) is most of an export's time and
depends on the architecture only, not on the weights. So the graph is kept, keyed by
everything it depends on (`graph_key`), and a later job of the same architecture loads it and
swaps in its own weights by the names the exporter gave them (its parameters' and buffers'
qualified names).

The exporter's optimisation (constant folding, merging of equal initializers) would make the
graph depend on the weights' values: it folds a weight's transpose into a new initializer and
merges weights that happen to be equal (LayerNorm's ones). So every export is optimised with
the weights held as graph inputs (`optimize_around_weights`), which the optimiser cannot fold
or merge, and then bound back as initializers: the same optimised graph for any weights, and
the same outputs as the exporter's own optimisation (ONNX Runtime folds the few weight
transposes left when it loads the file). If a weight the kept graph names cannot be mapped to
a parameter or buffer of the same shape and dtype, the graph is not used (`load` says why) and
the caller exports in full; the parity check runs on every file either way
(`training.export.export_and_check`).
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
WEIGHTS_KEY = "heimdall:weights"  # a kept graph's metadata: the initializers that are the model's weights
VERSIONED = ("torch", "onnx", "onnxscript", "onnx-ir")  # the packages that trace, translate and optimise


def graph_key(model: nn.Module, example: tuple[torch.Tensor, ...], **export_options) -> str:
    """SHA-256 of what the traced graph depends on: every module's class and plain attributes (for
    example `frame_scale_m`, a constant in the graph; a plain tensor attribute by its content),
    the parameters' and buffers' names, shapes and dtypes, the example inputs' shapes and dtypes,
    the export options, the versions of the exporting packages, and the source of the model's
    modules and of the export code."""
    modules = [[name, f"{type(m).__module__}.{type(m).__qualname__}", _plain_attributes(m)]
               for name, m in model.named_modules()]
    state = [[name, list(t.shape), str(t.dtype)] for name, t in _weights(model).items()]
    sources = sorted({sys.modules[cls.__module__].__file__ for m in model.modules() for cls in type(m).__mro__
                      if cls.__module__.startswith(("training.", "foundation."))} | {__file__, sys.modules["training.export"].__file__})
    digest = hashlib.sha256(json.dumps({
        "modules": modules, "state": state, "example": [[list(t.shape), str(t.dtype)] for t in example],
        "options": export_options, "versions": {name: version(name) for name in VERSIONED},
    }, sort_keys=True, default=str).encode())
    for source in sources:
        digest.update(Path(source).read_bytes())
    return digest.hexdigest()


def optimize_around_weights(program, model: nn.Module) -> None:
    """The exporter's optimisation with the weights held as graph inputs, then bound back as
    initializers: the optimised graph does not depend on their values. In place."""
    graph = program.model.graph
    weights = [graph.initializers[name] for name in _weights(model) if name in graph.initializers]
    tensors = [value.const_value for value in weights]
    for value in weights:
        graph.initializers.pop(value.name)
        value.const_value = None  # the optimiser folds any value whose tensor it can see (x * 1.0 -> x)
        graph.inputs.append(value)
    try:
        program.optimize()
    finally:
        for value, tensor in zip(weights, tensors):
            graph.inputs.remove(value)
            value.const_value = tensor
            graph.register_initializer(value)


def load(cache_dir: Path, key: str, model: nn.Module):
    """The kept graph with `model`'s weights swapped in, as a torch.onnx.ONNXProgram; None when no
    graph is kept for `key` or a weight cannot be mapped (then a log line says which)."""
    import onnx_ir as ir

    path = Path(cache_dir) / GRAPHS_DIR / f"{key}.onnx"
    try:
        graph = ir.load(str(path))
        named = json.loads(graph.metadata_props.pop(WEIGHTS_KEY))
    except FileNotFoundError:
        return None
    except Exception as exc:  # damaged, or without its list of weights: traced again and replaced
        _warn("onnx graph unreadable: full export", key=key, error=f"{type(exc).__name__}: {exc}")
        return None
    weights, initializers = _weights(model), graph.graph.initializers
    unmapped = [name for name in named if name not in weights or name not in initializers
                or list(initializers[name].shape) != list(weights[name].shape)
                or initializers[name].dtype != _ir_dtype(weights[name])]
    if unmapped:
        _warn("onnx graph not reusable: full export", key=key, unmapped_initializers=unmapped[:20])
        return None
    program = torch.onnx.ONNXProgram(graph, None)
    program.apply_weights(weights)
    os.utime(path)  # last used: the purge keeps graphs in use
    return program


def store(cache_dir: Path, key: str, program, model: nn.Module) -> None:
    """Keep an optimised graph for later jobs, with the names of its weights; atomic, and only as one file."""
    folder = Path(cache_dir) / GRAPHS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    metadata = program.model.metadata_props
    metadata[WEIGHTS_KEY] = json.dumps(sorted(set(_weights(model)) & set(program.model.graph.initializers)))
    try:
        with tempfile.TemporaryDirectory(dir=folder, prefix=".tmp-") as tmp:
            partial = Path(tmp) / f"{key}.onnx"
            program.save(str(partial), external_data=False)
            if len(list(Path(tmp).iterdir())) == 1:  # too large for one file: not kept, every job traces
                os.replace(partial, folder / f"{key}.onnx")
    finally:
        metadata.pop(WEIGHTS_KEY)  # not part of the published file


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
    """A module's public attributes that can shape its graph: numbers, strings, tuples, dataclasses,
    and tensors that are neither parameters nor buffers (the exporter bakes them in as constants)."""
    plain = (bool, int, float, str, tuple, list, type(None))
    described = {}
    for name, value in sorted(vars(module).items()):
        if name.startswith("_") or name == "training":
            continue
        if isinstance(value, torch.Tensor):
            described[name] = hashlib.sha256(value.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
        elif isinstance(value, plain) or dataclasses.is_dataclass(value):
            described[name] = repr(value)
    return described
