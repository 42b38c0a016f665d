"""The radio-map model: its in-graph posterior is the oracle's, receivers are known by position, it exports."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from training.bench.oracle import oracle_posterior
from training.geodesy import EARTH_RADIUS_M, haversine_m
from training.radio_map.model import RadioMapNet
from training.baselines.knn import KnnParams, _neighbours, knn_fingerprint
from training.radio_map.fit import Sessions, fit_radio_map, memory_values
from training.radio_map.train import noise_floor_of
from tests.support.oracle_map import (
    EIRP_STEPS, MARGIN_DB, NOISE_DBM, ORIGIN, STEP_M, area, channel, net_of, sessions,
)

def test_in_graph_posterior_is_the_oracles_on_the_same_grid():
    model = channel(np.array([-2.0, 0.0, 1.5]))  # each receiver's own noise floor
    net, grid = net_of(model)
    power = sessions(model, 12)
    online = np.ones_like(power, dtype=bool)
    online[5, 1] = False
    oracle = oracle_posterior(power, online, model, area=area(), grid_step_m=STEP_M, eirp_steps=EIRP_STEPS,
                              censor_margin_db=MARGIN_DB, posterior_dtype=np.float64)
    rx = torch.tensor(np.repeat(model.rx_position[None], 12, axis=0), dtype=torch.float32)
    args = (torch.tensor(power, dtype=torch.float32), rx, torch.tensor(online))
    with torch.no_grad():
        log_prob = net.log_posterior(*net.per_receiver(*args)[:3], net.log_prior)
        position, cov = net.from_power(*args)
    assert (~online | (power > model.receiver_noise_dbm + MARGIN_DB)).mean() < 1.0  # some receivers are censored
    np.testing.assert_allclose(log_prob.exp().numpy(), np.exp(oracle.log_prob.reshape(12, -1)), atol=2e-4)
    moved = haversine_m(position[:, 0].double().numpy(), position[:, 1].double().numpy(),
                        oracle.mean_latlon[:, 0], oracle.mean_latlon[:, 1])
    assert moved.max() < 5.0  # metres, on 2 km cells
    np.testing.assert_allclose(cov.double().numpy(), oracle.cov_m2, rtol=0.02, atol=1e3)


def test_receivers_are_known_by_position_in_any_order_and_unknown_ones_are_ignored():
    model = channel()
    net, _ = net_of(model)
    power = torch.tensor(sessions(model, 4), dtype=torch.float32)
    rx = torch.tensor(np.repeat(model.rx_position[None], 4, axis=0), dtype=torch.float32)
    online = torch.ones(4, 3, dtype=torch.bool)
    with torch.no_grad():
        reference = net.from_power(power, rx, online)
        order = torch.tensor([2, 0, 1])
        permuted = net.from_power(power[:, order], rx[:, order], online[:, order])
        stranger = rx[:, :1] + torch.tensor([0.05, 0.05, 0.0])  # ~6 km away from every known receiver
        extra = net.from_power(torch.cat([power, power[:, :1]], 1), torch.cat([rx, stranger], 1),
                               torch.cat([online, online[:, :1]], 1))
    for got in (permuted, extra):
        torch.testing.assert_close(got[0], reference[0])
        torch.testing.assert_close(got[1], reference[1], rtol=1e-4, atol=1e-2)


def test_co_located_radios_are_told_apart_by_their_power_level():
    net = RadioMapNet(2, (1, 1), 1, samples=64)
    with torch.no_grad():
        net.level_mean_db.copy_(torch.tensor([-60.0, -95.0]))
        net.level_std_db.fill_(5.0)
    rx = torch.zeros(1, 2, 3)  # both inputs at the origin, where both known radios are
    power = torch.tensor([[-97.0, -58.0]])
    heard = torch.ones(1, 2, dtype=torch.bool)
    match = net.identify(power, heard, net.nearby(rx), heard)
    assert match.tolist() == [[[0.0, 1.0], [1.0, 0.0]]]


def test_an_exported_radio_map_matches_pytorch_in_onnx_runtime(tmp_path):
    import onnxruntime as ort

    from training.export import check_parity, export_onnx

    model = channel()
    net, _ = net_of(model)
    rng = np.random.default_rng(1)
    power = sessions(model, 16, seed=1)
    iq = rng.standard_normal((16, 3, 64, 2))
    iq *= np.sqrt(10 ** (power / 10) / (iq**2).sum(-1).mean(-1))[..., None, None]
    inputs = {"iq": iq.astype(np.float32), "rx_position": np.repeat(model.rx_position[None], 16, 0).astype(np.float32),
              "rx_online": np.ones((16, 3), np.float32)}
    inputs["rx_online"][3, 0] = 0.0
    inputs["iq"][3, 0] = np.nan  # an offline receiver's capture must not leak
    export_onnx(net, tmp_path / "model.onnx", samples=64, example_receivers=3)
    report = check_parity(net, tmp_path / "model.onnx", inputs)
    assert report["passed"] and report["max_abs_diff"]["position_m"] < 1.0
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    two = {name: value[:5, 1:] for name, value in inputs.items()}  # other batch, fewer receivers
    position, _ = session.run(None, two)
    with torch.no_grad():
        expected, _ = net(*(torch.from_numpy(two[name]) for name in ("iq", "rx_position", "rx_online")))
    np.testing.assert_allclose(position, expected.numpy(), atol=1e-4)


def shadowed_sessions(n: int, static_db: float, iid_db: float, eirp_dbm: float = 37.0, seed: int = 2):
    """Sessions over the area: a fixed ±static_db pattern per receiver (period ~16 km) and iid shadowing."""
    rng = np.random.default_rng(seed)
    model = channel()
    lat, lon = rng.uniform(*area()[:2], n), rng.uniform(*area()[2:], n)
    bump = static_db * np.cos(np.radians(lat - ORIGIN[0]) * EARTH_RADIUS_M / 2500.0)[:, None] * np.array([1, -1, 1])
    signal = eirp_dbm + model.mean_offset_db(lat, lon) + bump + rng.normal(0, iid_db, (n, 3))
    power = np.maximum(10 * np.log10(10 ** (signal / 10) + 10 ** (NOISE_DBM / 10)), NOISE_DBM)
    return power, np.ones_like(power, dtype=bool), np.c_[lat, lon]


def test_the_fitted_map_learns_static_shadowing_the_channel_alone_cannot(monkeypatch):
    import training.radio_map.fit as radio_map_fit

    power, online, latlon = shadowed_sessions(900, static_db=12.0, iid_db=2.0)
    split = [Sessions(power[s], online[s], latlon[s]) for s in (slice(0, 600), slice(600, 750))]
    monkeypatch.setattr(radio_map_fit, "MEMORY_CHOICES", ((2.0, 0.0),))  # the map alone: no fingerprint memory
    monkeypatch.setattr(radio_map_fit, "BLENDS", (0.0,))
    rx = channel().rx_position
    net, chosen = fit_radio_map(*split, rx, NOISE_DBM, MARGIN_DB, samples=64, sample_rate_hz=12500.0)
    # the ±12 dB pattern is partly absorbed by the exponent (2.8 here), the map learns the rest
    assert chosen["exponent"] == pytest.approx(3.0, abs=0.3) and chosen["kernel_m"] > 0
    monkeypatch.setattr(radio_map_fit, "KERNEL_STEPS", ())  # no map
    _, flat = fit_radio_map(*split, rx, NOISE_DBM, MARGIN_DB, samples=64, sample_rate_hz=12500.0)
    # measured: 822 m with the map, 1703 m without (and ~1 km with no static shadowing at all)
    assert chosen["val_median_error_m"] < 0.7 * flat["val_median_error_m"]


def test_iid_shadowing_gets_no_map_and_the_censored_fits_sigma():
    """A map learnt from iid shadowing is noise, and heard residuals alone would learn their truncation
    (far receivers heard only when lucky): the out-of-sample censored likelihood prefers no map."""
    from training.radio_map.fit import _Channel, choose_map

    power, online, latlon = shadowed_sessions(900, static_db=0.0, iid_db=6.0, eirp_dbm=10.0)
    assert 0.2 < (power <= NOISE_DBM + MARGIN_DB).mean() < 0.6  # censoring matters here
    channel_fit = _Channel(Sessions(power, online, latlon), channel().rx_position[:, :2], NOISE_DBM, MARGIN_DB,
                           np.zeros(3))
    kernel_m, residual_map, _, sigma = choose_map(channel_fit, [2000.0, 4000.0])
    assert kernel_m == 0.0 and not residual_map.any()
    np.testing.assert_allclose(sigma, 6.0, atol=0.5)  # the heard residuals alone: ~4.5 dB


def test_a_reported_floor_is_found_else_each_receivers_own_noise_floor():
    rng = np.random.default_rng(3)
    power = rng.uniform(-100.0, -40.0, (300, 4))
    online = np.ones_like(power, dtype=bool)
    reported = power.copy()
    reported[::7, 1] = -101.0  # "not heard", as POWDER writes it
    floor, offsets, margin = noise_floor_of(reported, online, 12500.0, samples=1024)
    assert (floor, margin) == (-101.0, 0.5) and not offsets.any()
    # receivers 0-2 hear nothing in a third of the sessions: thermal noise scaled by their gain error
    gain_db = np.array([-2.0, 0.0, 1.5, 0.0])
    noise = -120.0 + gain_db + rng.normal(0.0, 10 / math.log(10) / math.sqrt(1024), (300, 4))
    power[::3, :3] = noise[::3, :3]
    floor, offsets, margin = noise_floor_of(power, online, 12500.0, samples=1024)
    assert floor == pytest.approx(-120.0) and margin == pytest.approx(1.09, abs=0.01)
    np.testing.assert_allclose(offsets, gain_db, atol=0.05)  # receiver 3 always hears: the thermal floor


def test_a_radio_map_job_fits_exports_and_registers_through_the_pipeline(tmp_path, example_dataset):
    """The whole `train` recipe with `--preset radio-map`: closed-form fit, its own file, calibration, export, card;
    the MLflow run's parameters describe the fitted map (its shapes are the fit's, known only after it)."""
    import json

    import mlflow

    from foundation.child_protocol import JobSpec
    from foundation.train_config import TrainConfig
    from foundation.settings import Settings
    from training.pipeline import run_job
    from training.radio_map.builder import load

    config = TrainConfig(preset="radio-map", min_labelled_sessions=10)
    settings = Settings(state_dir=tmp_path)
    result = run_job(settings, JobSpec(data_uri=str(example_dataset), config=config, checkpoint_dir=tmp_path / "ckpt"))
    net = load(tmp_path / "ckpt" / "last.ckpt")
    assert isinstance(net, RadioMapNet) and net.mean_db.abs().sum() > 0
    params = mlflow.MlflowClient(settings.mlflow_tracking_uri).get_run(result["mlflow"]["run_id"]).data.params
    fitted = net.describe()
    assert params["receivers"] == str(fitted["receivers"]) != "1"
    assert params["grid_shape"] == str(fitted["grid_shape"]) and params["buffers"] == str(fitted["buffers"])
    cards = list(tmp_path.rglob("model.json"))
    assert cards, result
    card = json.loads(cards[0].read_text())
    assert card["parity"]["passed"] and card["training"]["config"]["preset"] == "radio-map"


@pytest.mark.parametrize("params", [KnnParams(k=5, weights="inverse_square", metric="rms", offline="skip"),
                                    KnnParams(k=3, weights="uniform", metric="mean_abs", offline="not_heard")])
def test_the_fingerprint_memory_in_the_graph_is_the_tuned_knn(params):
    model = channel()
    rng = np.random.default_rng(4)
    train_power, query_power = sessions(model, 200, seed=5), sessions(model, 20, seed=6)
    train_online = rng.random((200, 3)) > 0.1
    query_online = np.ones((20, 3), dtype=bool)
    query_online[::4, 1] = False
    train_latlon = np.c_[rng.uniform(*area()[:2], 200), rng.uniform(*area()[2:], 200)]
    expected = knn_fingerprint(train_power, train_online, train_latlon, query_power, query_online,
                               noise_floor_dbm=NOISE_DBM, params=params)
    grid_net, _ = net_of(model)
    net = RadioMapNet(3, grid_net.grid_shape, EIRP_STEPS, samples=64, memory_sessions=200, neighbours=params.k)
    net.load_state_dict({**grid_net.state_dict(), **{f"memory.{k}": v for k, v in net.memory.state_dict().items()}})
    channel_frame = SimpleNamespace(noise=NOISE_DBM, tx_en=net.to_local_en(torch.tensor(train_latlon)).double().numpy())
    values = memory_values(Sessions(train_power, train_online, train_latlon), channel_frame, params)
    with torch.no_grad():
        for name, value in values.items():
            getattr(net.memory, name).copy_(torch.as_tensor(np.asarray(value), dtype=torch.float32))
        net.memory.blend.fill_(1.0)  # the output position is the memory's kNN estimate alone
        position, _ = net.from_power(torch.tensor(query_power, dtype=torch.float32),
                                     torch.tensor(np.repeat(model.rx_position[None], 20, 0), dtype=torch.float32),
                                     torch.tensor(query_online))
    moved = haversine_m(position[:, 0].double().numpy(), position[:, 1].double().numpy(), expected[:, 0], expected[:, 1])
    # a session whose compared receivers all sit at the floor ties with many training sessions: which
    # k of those are taken is arbitrary (in numpy and in the graph alike), so only untied sessions compare
    dist, _ = _neighbours(train_power, train_online, query_power, query_online, NOISE_DBM, params, params.k + 1)
    untied = (dist[:, 0] > 1e-3) & (dist[:, -1] - dist[:, -2] > 1e-3)
    assert untied.sum() >= 12 and moved[untied].max() < 1.0  # metres


def test_the_memorys_density_factorised_by_axis_is_the_kernel_sum_over_every_cell():
    """The fingerprint memory's prior takes the grid as two axes (the fit's and the oracle's grids are
    products); it must equal the plain Gaussian kernel sum over all G cells of `grid_en`."""
    net, _ = net_of(channel())
    east, north = net.grid_axes()
    ny, nx = net.grid_shape
    np.testing.assert_array_equal(torch.stack(torch.meshgrid(east, north, indexing="xy"), dim=-1).reshape(-1, 2),
                                  net.grid_en)
    gen = torch.Generator().manual_seed(0)
    where = net.grid_en[torch.randint(0, ny * nx, (6, 4), generator=gen)] + 500 * torch.randn(6, 4, 2, generator=gen)
    votes = torch.rand(6, 4, generator=gen)
    votes = votes / votes.sum(dim=1, keepdim=True)
    memory = net.memory
    memory.weight.fill_(0.7)
    memory.bandwidth_m.fill_(800.0)
    d2 = ((net.grid_en[None, None] - where[:, :, None]) ** 2).sum(dim=-1)
    density = (votes[..., None] * torch.exp(-0.5 * d2 / 800.0**2)).sum(dim=1)
    expected = torch.log(0.3 * net.log_prior.exp() + 0.7 * density / density.sum(dim=-1, keepdim=True) + 1e-30)
    torch.testing.assert_close(memory.log_prior(votes, where, east, north, net.log_prior), expected,
                               rtol=1e-5, atol=1e-5)
