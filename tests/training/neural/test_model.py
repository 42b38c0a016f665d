"""LocalizationNet keeps the promises of model.md and the physics of contracts/README.md."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.geodesy import to_local_en
from training.fit import gaussian_nll
from training.neural.model import LOCAL_SCALE_M, PRESETS, LocalizationNet
from tests.support.model_inputs import SAMPLES, make_inputs


@pytest.fixture(scope="module")
def model() -> LocalizationNet:
    torch.manual_seed(0)
    return LocalizationNet(SAMPLES, "tiny").eval()


def run(model, iq, rx_position, rx_online):
    with torch.no_grad():
        return model(iq, rx_position, rx_online)


def outputs_differ(a, b, position_deg: float = 1e-4) -> bool:
    return bool((a[0] - b[0]).abs().max() > position_deg or not torch.allclose(a[1], b[1], rtol=1e-3))


def test_outputs_have_contract_shapes_and_positive_definite_covariance(model):
    position, covariance = run(model, *make_inputs(batch=3, receivers=5))
    assert position.shape == (3, 2) and covariance.shape == (3, 2, 2)
    assert position.dtype == covariance.dtype == torch.float32
    assert ((position - torch.tensor([45.0, 8.0])).abs() < 2.0).all()
    torch.testing.assert_close(covariance, covariance.transpose(1, 2))
    assert (torch.linalg.eigvalsh(covariance.double()) > 0).all()


def test_receiver_order_does_not_matter(model):
    iq, rx_position, rx_online = make_inputs()
    rx_online[:, 1] = 0
    perm = torch.tensor([3, 6, 0, 5, 1, 4, 2])
    expected = run(model, iq, rx_position, rx_online)
    permuted = run(model, iq[:, perm], rx_position[:, perm], rx_online[:, perm])
    torch.testing.assert_close(permuted[0], expected[0], atol=2e-5, rtol=0)
    torch.testing.assert_close(permuted[1], expected[1], rtol=1e-4, atol=0)


@pytest.mark.parametrize("garbage", [1e6, float("nan"), float("inf")])
def test_offline_receiver_iq_has_no_influence(model, garbage):
    iq, rx_position, rx_online = make_inputs()
    rx_online[:, 2] = 0
    expected = run(model, iq, rx_position, rx_online)
    iq[:, 2] = garbage * torch.randn_like(iq[:, 2]) if math.isfinite(garbage) else garbage
    rx_position[:, 2] = torch.tensor([-60.0, 170.0, 9000.0])
    got = run(model, iq, rx_position, rx_online)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_online_receiver_iq_changes_the_output(model):
    iq, rx_position, rx_online = make_inputs()
    expected = run(model, iq, rx_position, rx_online)
    iq[:, 0] *= 10.0  # +20 dB at one receiver
    assert outputs_differ(run(model, iq, rx_position, rx_online), expected)


def test_absolute_power_level_is_preserved(model):
    iq, rx_position, rx_online = make_inputs()
    expected = run(model, iq, rx_position, rx_online)
    louder = run(model, iq * math.sqrt(10.0), rx_position, rx_online)  # +10 dB everywhere
    assert outputs_differ(louder, expected)


def test_features_read_in_dbm(model):
    iq, _, _ = make_inputs(batch=2, receivers=3)
    dbm = 10 * torch.log10((iq**2).sum(-1).mean(-1))
    torch.testing.assert_close(model.total_power(iq), (dbm + 100) / 20)
    # white noise: the mean over bins of each frame's linear power is the capture power
    spec_linear = 10 ** ((model.spectrogram(iq) * 20 - 100) / 10)
    spec_dbm = 10 * torch.log10(spec_linear.mean(dim=(-1, -2)))
    assert (spec_dbm - dbm).abs().max() < 0.5


def test_sessions_in_a_batch_are_independent(model):
    iq, rx_position, rx_online = make_inputs(batch=5)
    rx_online[1, :3] = 0
    together = run(model, iq, rx_position, rx_online)
    for i in range(5):
        alone = run(model, iq[i : i + 1], rx_position[i : i + 1], rx_online[i : i + 1])
        torch.testing.assert_close(alone[0][0], together[0][i], atol=2e-5, rtol=0)
        torch.testing.assert_close(alone[1][0], together[1][i], rtol=1e-4, atol=0)


def test_forward_local_and_target_frame_agree_with_forward(model):
    iq, rx_position, rx_online = make_inputs()
    with torch.no_grad():
        mean, chol, origin = model.forward_local(iq, rx_position, rx_online)
        position, covariance = model(iq, rx_position, rx_online)
    torch.testing.assert_close(origin, rx_position[..., :2].mean(dim=1))
    torch.testing.assert_close(model.target_to_local(position, origin), mean, atol=1e-4, rtol=0)
    torch.testing.assert_close(covariance, (chol @ chol.transpose(1, 2)) * LOCAL_SCALE_M**2, rtol=1e-5, atol=0)
    east, north = to_local_en(45.1, 8.2, 45.0, 8.0)
    local = model.target_to_local(torch.tensor([[45.1, 8.2]]), torch.tensor([[45.0, 8.0]]))
    np.testing.assert_allclose(local[0].numpy() * LOCAL_SCALE_M, [east, north], atol=1.0)  # float32 degrees: ~0.4 m


def test_gaussian_nll_matches_closed_form_for_a_diagonal_covariance():
    s1, s2, r1, r2 = 0.5, 2.0, 0.3, -1.0
    chol = torch.tensor([[[s1, 0.0], [0.0, s2]]])
    mean, target = torch.zeros(1, 2), torch.tensor([[r1, r2]])
    by_hand = 0.5 * (r1**2 / s1**2 + r2**2 / s2**2) + math.log(s1 * s2) + math.log(2 * math.pi)
    assert gaussian_nll(mean, chol, target, beta=0.0).item() == pytest.approx(by_hand, rel=1e-6)
    for beta in (0.5, 1.0):  # det(Σ)^(β/2) = (s1 s2)^β
        got = gaussian_nll(mean, chol, target, beta=beta).item()
        assert got == pytest.approx((s1 * s2) ** beta * by_hand, rel=1e-6)


def test_gaussian_nll_matches_torch_for_a_full_covariance():
    chol = torch.tensor([[[0.7, 0.0], [0.4, 0.3]], [[1.5, 0.0], [-0.9, 0.2]]])
    mean, target = torch.tensor([[0.1, -0.2], [1.0, 2.0]]), torch.tensor([[0.5, 0.1], [0.0, 1.5]])
    expected = -torch.distributions.MultivariateNormal(mean, scale_tril=chol).log_prob(target)
    torch.testing.assert_close(gaussian_nll(mean, chol, target, beta=0.0), expected)


def test_beta_weight_is_not_differentiated():
    chol = torch.tensor([[[0.7, 0.0], [0.4, 0.3]]], requires_grad=True)
    mean, target = torch.zeros(1, 2), torch.tensor([[0.5, 0.1]])
    gaussian_nll(mean, chol, target, beta=0.0).sum().backward()
    plain = chol.grad.clone()
    chol.grad = None
    gaussian_nll(mean, chol, target, beta=1.0).sum().backward()
    torch.testing.assert_close(chol.grad, (0.7 * 0.3) * plain)


def test_presets_construct_and_describe_themselves():
    assert set(PRESETS) >= {"tiny", "small", "large"}
    small = LocalizationNet(1024, "small").describe()
    assert 50_000 <= small["params"] <= 200_000 and small["nfft"] == 64
    with torch.device("meta"):  # ConvNeXt-Large scale: count without allocating 800 MB
        large = LocalizationNet(2500, "large").describe()
    assert large["dims"] == (192, 384, 768, 1536) and large["params"] > 150_000_000
    assert {"preset", "samples", "nfft", "params"} <= set(large)


def test_refuses_unknown_preset_and_too_short_captures():
    with pytest.raises(ValueError, match="unknown preset"):
        LocalizationNet(SAMPLES, "huge")
    with pytest.raises(ValueError, match="too short"):
        LocalizationNet(16, "tiny")
