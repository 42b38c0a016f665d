"""The exported model.onnx is the graph model.md promises, and parity guards it."""

from __future__ import annotations

import hashlib
import logging
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from foundation.errors import ExportError
from training import export
from training import export_cache
from training.export import INPUT_NAMES, OPSET, OUTPUT_NAMES, check_parity, export_and_check, export_onnx
from training.export_cache import GRAPHS_DIR
from training.neural.model import LocalizationNet
from tests.support.model_inputs import SAMPLES, make_inputs


@pytest.fixture(scope="module")
def model() -> LocalizationNet:
    torch.manual_seed(0)
    return LocalizationNet(SAMPLES, "tiny")


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "model.onnx"
    return path, export_onnx(model, path, samples=SAMPLES)


@pytest.fixture(scope="module")
def session(exported) -> ort.InferenceSession:
    return ort.InferenceSession(str(exported[0]), providers=["CPUExecutionProvider"])


def held_out(batch: int = 16, receivers: int = 7) -> dict[str, np.ndarray]:
    iq, rx_position, rx_online = make_inputs(batch, receivers, seed=1)
    rx_online[::3, 1] = 0
    return {name: t.numpy() for name, t in zip(INPUT_NAMES, (iq, rx_position, rx_online))}


def test_file_is_self_contained_and_described_truthfully(exported):
    path, info = exported
    assert [p.name for p in path.parent.iterdir()] == ["model.onnx"]
    data = path.read_bytes()
    assert info["bytes"] == len(data) and info["sha256"] == hashlib.sha256(data).hexdigest()
    assert info["opset"] == OPSET >= 17
    onnx.checker.check_model(str(path), full_check=True)


def test_inputs_and_outputs_match_the_contract(exported):
    _, info = exported
    assert info["inputs"] == [
        {"name": "iq", "dtype": "float32", "shape": ["batch", "receivers", SAMPLES, 2]},
        {"name": "rx_position", "dtype": "float32", "shape": ["batch", "receivers", 3]},
        {"name": "rx_online", "dtype": "float32", "shape": ["batch", "receivers"]},
    ]
    assert info["outputs"] == [
        {"name": "position", "dtype": "float32", "shape": ["batch", 2]},
        {"name": "covariance", "dtype": "float32", "shape": ["batch", 2, 2]},
    ]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("receivers", [5, 7, 9])
def test_onnx_runtime_accepts_any_batch_and_receiver_count(model, session, batch, receivers):
    feed = held_out(batch, receivers)
    position, covariance = session.run(list(OUTPUT_NAMES), feed)
    assert position.shape == (batch, 2) and covariance.shape == (batch, 2, 2)
    with torch.no_grad():
        expected = model.eval()(*(torch.from_numpy(feed[name]) for name in INPUT_NAMES))
    np.testing.assert_allclose(position, expected[0].numpy(), atol=5e-5, rtol=0)
    np.testing.assert_allclose(covariance, expected[1].numpy(), rtol=1e-4)


def test_onnx_graph_ignores_offline_receivers_even_when_nan(session):
    feed = held_out(batch=3)
    feed["rx_online"][:, 4] = 0
    expected = session.run(list(OUTPUT_NAMES), feed)
    feed["iq"][:, 4] = np.nan
    for got, want in zip(session.run(list(OUTPUT_NAMES), feed), expected):
        np.testing.assert_array_equal(got, want)


def test_parity_passes_and_reports_its_measurements(model, exported):
    report = check_parity(model, exported[0], held_out(), batch_sizes=(1, 16))
    assert report["passed"] and report["batch_sizes"] == [1, 16]
    assert report["max_abs_diff"]["position_m"] <= report["tolerances"]["position_m"]
    assert set(report["max_abs_diff"]) == {"position", "position_m", "covariance"}


def test_parity_fails_loudly_against_other_weights(exported):
    torch.manual_seed(1)
    other = LocalizationNet(SAMPLES, "tiny")
    with pytest.raises(ExportError) as caught:
        check_parity(other, exported[0], held_out())
    assert caught.value.report["passed"] is False
    assert caught.value.stage == "export" and caught.value.retryable is False


def test_exporter_failures_become_export_errors(tmp_path):
    class Broken(nn.Module):
        def forward(self, iq, rx_position, rx_online):
            raise RuntimeError("cannot trace this")

    with pytest.raises(ExportError, match="cannot trace this") as caught:
        export_onnx(Broken(), tmp_path / "model.onnx", samples=SAMPLES)
    assert isinstance(caught.value.__cause__, Exception)


# ---------------------------------------------------------------- a traced graph kept per architecture


def trained_like(seed: int, frame_scale_m: float = 20_000.0) -> LocalizationNet:
    """A tiny net with weights of its own: every parameter moved, a calibrated covariance scale."""
    torch.manual_seed(seed)
    net = LocalizationNet(SAMPLES, "tiny", frame_scale_m=frame_scale_m)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
        net.covariance_scale.fill_(1.5 + seed)
    return net.eval()


def outputs(path) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(list(OUTPUT_NAMES), held_out())


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """A graph cache holding the tiny architecture's traced graph (from a first model)."""
    folder = tmp_path_factory.mktemp("cache")
    export_onnx(trained_like(0), folder / "first.onnx", samples=SAMPLES, graphs_dir=folder)
    assert len(list((folder / GRAPHS_DIR).glob("*.onnx"))) == 1
    return folder


def test_a_model_of_the_same_architecture_gets_its_weights_swapped_into_the_kept_graph(graphs, tmp_path,
                                                                                        monkeypatch):
    second = trained_like(1)
    fresh = export_onnx(second, tmp_path / "fresh.onnx", samples=SAMPLES)  # a full export, no cache
    monkeypatch.setattr(export, "_run_exporter", lambda *a: pytest.fail("traced again despite the kept graph"))
    swapped, parity = export_and_check(second, tmp_path / "swapped.onnx", held_out(), samples=SAMPLES,
                                       graphs_dir=graphs)
    assert parity["passed"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.onnx", "swapped.onnx"]  # no side file
    assert (swapped["opset"], swapped["inputs"], swapped["outputs"]) == (fresh["opset"], fresh["inputs"],
                                                                          fresh["outputs"])
    for got, want in zip(outputs(tmp_path / "swapped.onnx"), outputs(tmp_path / "fresh.onnx")):
        np.testing.assert_array_equal(got, want)
    first = outputs(graphs / "first.onnx")
    assert not np.allclose(outputs(tmp_path / "swapped.onnx")[0], first[0])  # the second model's weights


def test_a_kept_graph_that_fails_parity_falls_back_to_a_full_export(graphs, tmp_path, caplog):
    """A graph whose initializers all map but whose constants are not this model's (here the frame
    scale, kept under this model's key as a stale or damaged cache would): parity catches it."""
    other = trained_like(2, frame_scale_m=3_000.0)
    key = export_cache.graph_key(other, export._example_inputs(2, 7, SAMPLES), opset=OPSET, inputs=INPUT_NAMES,
                                 outputs=OUTPUT_NAMES, dynamic=export.DYNAMIC_DIMS)
    kept = next((graphs / GRAPHS_DIR).glob("*.onnx"))
    shutil.copy(kept, kept.with_name(f"{key}.onnx"))
    with caplog.at_level(logging.WARNING):
        info, parity = export_and_check(other, tmp_path / "model.onnx", held_out(), samples=SAMPLES,
                                        graphs_dir=graphs)
    assert parity["passed"] and info["inputs"][0]["shape"] == ["batch", "receivers", SAMPLES, 2]
    assert [r.message for r in caplog.records if "full export" in r.message] == [
        "onnx graph failed parity: full export"]
    assert kept.with_name(f"{key}.onnx").read_bytes() != kept.read_bytes()  # replaced by this model's own graph


def test_a_kept_graph_with_a_weight_that_maps_to_nothing_is_not_used(graphs, tmp_path, caplog):
    model = trained_like(3)
    key = export_cache.graph_key(model, export._example_inputs(2, 7, SAMPLES), opset=OPSET, inputs=INPUT_NAMES,
                                 outputs=OUTPUT_NAMES, dynamic=export.DYNAMIC_DIMS)
    proto = onnx.load(str(next((graphs / GRAPHS_DIR).glob("*.onnx"))))
    renamed = next(t for t in proto.graph.initializer if t.name == "head.3.bias")
    renamed.name = "mystery"  # the kept graph still lists head.3.bias among its weights
    for node in proto.graph.node:
        node.input[:] = ["mystery" if name == "head.3.bias" else name for name in node.input]
    onnx.save(proto, str(graphs / GRAPHS_DIR / f"{key}.onnx"))
    with caplog.at_level(logging.WARNING):
        info, parity = export_and_check(model, tmp_path / "model.onnx", held_out(), samples=SAMPLES,
                                        graphs_dir=graphs)
    assert parity["passed"]
    lines = [r for r in caplog.records if "full export" in r.message]
    assert [r.message for r in lines] == ["onnx graph not reusable: full export"]
    assert lines[0].fields["unmapped_initializers"] == ["head.3.bias"]


def test_the_graph_is_optimised_the_same_whatever_the_weights(tmp_path):
    """The exporter's own optimisation folds weights' transposes and merges equal weights (an
    untrained net's LayerNorm ones): a graph kept for one model would not fit another's weights."""
    untrained, trained = LocalizationNet(SAMPLES, "tiny"), trained_like(4)
    graphs = []
    for net in (untrained, trained):
        program = export._run_exporter(net.eval(), export._example_inputs(2, 7, SAMPLES))
        export_cache.optimize_around_weights(program, net)
        graphs.append(program.model.graph)
    weights = set(export_cache._weights(trained))
    assert weights <= set(graphs[0].initializers)  # every weight kept, none merged or folded away
    assert [(n.op_type, [v.name if v is not None else None for v in n.inputs]) for n in graphs[0]] == \
        [(n.op_type, [v.name if v is not None else None for v in n.inputs]) for n in graphs[1]]


def test_the_key_names_what_the_graph_bakes_in_and_not_the_weights():
    example = export._example_inputs(2, 7, SAMPLES)

    def key(net):
        return export_cache.graph_key(net, example, opset=OPSET)

    base = key(trained_like(0))
    assert key(trained_like(1)) == base  # other weights: the same graph
    assert key(trained_like(0, frame_scale_m=3_000.0)) != base  # a constant of the graph
    assert key(LocalizationNet(SAMPLES, "small")) != base
    plain = trained_like(0)
    plain.lookup = torch.arange(3.0)  # neither parameter nor buffer: baked in as a constant, keyed by content
    other = trained_like(0)
    other.lookup = torch.arange(3.0) + 1
    assert key(plain) != key(other) != base
