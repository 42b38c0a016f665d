"""The radio channel the synthetic data follows: path loss, noise, NBFM captures and a fixed shadowing field.

Plain functions of physical quantities (metres, hertz, dBm), with no dataset config in sight:
`training.datasets.synth` draws the random parts per session and calls these. Powers are on the
mW scale of the captures, so 10·log10(mean |x|²) of a capture is its power in dBm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.geodesy import haversine_m, to_local_en

SPEED_OF_LIGHT_M_S = 299_792_458.0
NOISE_REFERENCE_BANDWIDTH_HZ = 12_500.0
AUDIO_TONE_RANGE_HZ = (300.0, 3_000.0)
CARRIER_OFFSET_MAX_HZ = 500.0
FIELD_CHUNK_POSITIONS = 4096  # bounds the [positions, R, features] temporary


def free_space_path_loss_db(distance_m, frequency_hz):
    """Friis free-space loss between isotropic antennas: 20*log10(4*pi*d*f/c)."""
    return 20.0 * np.log10(4.0 * np.pi * np.asarray(distance_m) * frequency_hz / SPEED_OF_LIGHT_M_S)


def log_distance_path_loss_db(distance_m, frequency_hz, exponent, reference_m=1.0, breakpoint_m=0.0, far_exponent=0.0):
    """Free-space loss up to `reference_m`, then 10*n dB per decade. Closer than the reference is clamped to it.
    With `breakpoint_m` > 0, 10*`far_exponent` dB per decade beyond it (dual slope: past the ground
    reflection's breakpoint the loss steepens)."""
    distance_m = np.maximum(np.asarray(distance_m, dtype=float), reference_m)
    loss = free_space_path_loss_db(reference_m, frequency_hz) + 10.0 * exponent * np.log10(distance_m / reference_m)
    if breakpoint_m > 0:
        loss = loss + 10.0 * (far_exponent - exponent) * np.log10(np.maximum(distance_m, breakpoint_m) / breakpoint_m)
    return loss


def received_power_dbm(eirp_dbm, path_loss_db, shadowing_db, calibration_db):
    """Signal power as the receiver reports it: the calibration error is part of the measurement."""
    return eirp_dbm - path_loss_db + shadowing_db + calibration_db


def noise_power_dbm(noise_floor_dbm_per_12k5, sample_rate_hz):
    """Thermal-like noise grows with the captured (complex) bandwidth, which is the sample rate."""
    return noise_floor_dbm_per_12k5 + 10.0 * np.log10(sample_rate_hz / NOISE_REFERENCE_BANDWIDTH_HZ)


def nbfm_capture(
    power_dbm: float,
    noise_dbm: float,
    samples: int,
    sample_rate_hz: float,
    deviation_hz: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """complex64 [samples]: NBFM of mean power `power_dbm` (mW scale) plus Gaussian noise of `noise_dbm`.

    The audio is 1-3 tones in 300-3000 Hz, peak deviation at most `deviation_hz`, with a random
    carrier offset of up to 500 Hz and a random phase. FM has a constant envelope, so the
    signal's power is exact in every capture; only the noise's is a random estimate.
    """
    t_s = np.arange(samples) / sample_rate_hz
    tones = int(rng.integers(1, 4))
    tone_hz = rng.uniform(*AUDIO_TONE_RANGE_HZ, size=tones)
    tone_phase = rng.uniform(0.0, 2.0 * np.pi, size=tones)
    tone_weight = rng.uniform(0.5, 1.0, size=tones)
    tone_weight /= tone_weight.sum()  # |audio| <= 1, so the deviation never exceeds deviation_hz
    carrier_offset_hz = rng.uniform(-CARRIER_OFFSET_MAX_HZ, CARRIER_OFFSET_MAX_HZ)
    carrier_phase = rng.uniform(0.0, 2.0 * np.pi)
    # phase = integral of 2*pi*deviation*audio(t): closed form for a sum of cosines
    tone_waves = np.sin(2.0 * np.pi * np.outer(tone_hz, t_s) + tone_phase[:, None])
    audio_phase = (deviation_hz * tone_weight / tone_hz) @ tone_waves
    phase = carrier_phase + 2.0 * np.pi * carrier_offset_hz * t_s + audio_phase
    signal = np.sqrt(_milliwatts(power_dbm)) * np.exp(1j * phase)
    noise = np.sqrt(_milliwatts(noise_dbm) / 2.0) * (rng.standard_normal(samples) + 1j * rng.standard_normal(samples))
    return (signal + noise).astype(np.complex64)


def _milliwatts(power_dbm: float) -> float:
    return 10.0 ** (power_dbm / 10.0)


def distances_m(latitude: float, longitude: float, altitude_m: float, receivers) -> np.ndarray:
    """3-D distance [R] from a point to each receiver: ground distance and altitude difference."""
    ground_m = haversine_m(
        latitude, longitude, np.array([r.latitude for r in receivers]), np.array([r.longitude for r in receivers])
    )
    height_m = np.array([r.altitude_m for r in receivers]) - altitude_m
    return np.hypot(ground_m, height_m)


@dataclass(frozen=True)
class StaticField:
    """Each receiver's fixed shadowing field: a sum of random Fourier features (Rahimi & Recht 2007).

    The features' wave vectors follow the spectrum of the exponential covariance
    sigma^2 exp(-d / correlation_m), a 2-D Cauchy (Student-t, 1 degree of freedom) of scale
    1/correlation_m, so the field has the documented std and correlation.
    """

    sigma_db: float
    origin: tuple[float, float]  # (latitude, longitude) of the local frame the wave vectors live in
    wave_per_m: np.ndarray  # [R, K, 2] east/north
    phase: np.ndarray  # [R, K]

    def __call__(self, latitude, longitude) -> np.ndarray:
        """[..., R] the field in dB at positions of any shape (degrees)."""
        latitude, longitude = np.broadcast_arrays(np.asarray(latitude, float), np.asarray(longitude, float))
        receivers = self.phase.shape[0]
        if self.sigma_db == 0.0:
            return np.zeros((*latitude.shape, receivers))
        east_m, north_m = to_local_en(latitude.ravel(), longitude.ravel(), *self.origin)
        out = np.empty((east_m.size, receivers))
        for start in range(0, east_m.size, FIELD_CHUNK_POSITIONS):
            part = slice(start, start + FIELD_CHUNK_POSITIONS)
            angle = (east_m[part, None, None] * self.wave_per_m[..., 0] + north_m[part, None, None]
                     * self.wave_per_m[..., 1] + self.phase)
            out[part] = np.cos(angle).sum(axis=-1)
        out *= self.sigma_db * np.sqrt(2.0 / self.phase.shape[1])
        return out.reshape(*latitude.shape, receivers)


@dataclass(frozen=True)
class AntennaPatterns:
    """Each receiver's antenna gain by the bearing to the transmitter: (F/2)·cos(bearing − boresight_r),
    a cardioid-like pattern F dB stronger in front than behind, 0 dB on average over bearings."""

    front_to_back_db: float
    rx_latlon: np.ndarray  # [R, 2] degrees
    boresight_rad: np.ndarray  # [R] clockwise from north

    def __call__(self, latitude, longitude) -> np.ndarray:
        """[..., R] the gain in dB towards transmitters at positions of any shape (degrees)."""
        latitude, longitude = np.broadcast_arrays(np.asarray(latitude, float), np.asarray(longitude, float))
        if self.front_to_back_db == 0.0:
            return np.zeros((*latitude.shape, self.boresight_rad.size))
        east, north = to_local_en(latitude[..., None], longitude[..., None], self.rx_latlon[:, 0], self.rx_latlon[:, 1])
        return 0.5 * self.front_to_back_db * np.cos(np.arctan2(east, north) - self.boresight_rad)
