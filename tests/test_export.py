"""The exported model.onnx is the graph model.md promises, and parity guards it."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from service.errors import ExportError
from service.training.export import INPUT_NAMES, OPSET, OUTPUT_NAMES, check_parity, export_onnx
from service.training.model import LocalizationNet
from tests.test_model import SAMPLES, make_inputs


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
