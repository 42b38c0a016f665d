"""A seeded synthetic dataset whose captures follow the physics of the real ones.

The generating model (what a Bayesian oracle on this data must assume), for session i and
receiver r:

    receivers      `cfg.receivers` (layout "fixed"), or, for layout "random", N ~ U{random_receivers_min..max}
                   drawn once per dataset uniformly in a random_area_m square around the random centre,
                   altitude ~ U(100, 800) m, ids rx-00, rx-01, ... (`receivers_for`)
    transmitter    at tx_altitude_m, uniform in lat/lon over the receivers' bounding box grown by
                   area_margin_m (the area); with towns > 0 (`placement`): uniform and pinned to test with
                   probability uniform_test_share, else N(0, town_radius_m) east and north of one of
                   `towns` centres (uniform over the area, once per dataset), pinned to val (the last) or train
    eirp_dbm       ~ U(eirp_dbm_min, eirp_dbm_max), or with probability mobile_share (0 by default; its own
                   stream) U(mobile_eirp_dbm_min, mobile_eirp_dbm_max): handhelds and mobiles
    d_r            3-D distance: haversine ground distance and altitude difference
    signal_dbm_r   = eirp_dbm - PL(d_r) + shadowing_r + static_r(transmitter) + antenna_r + calibration_r,
                   PL = log-distance with exponent n from free space at 1 m at the centre frequency,
                   steepening to path_loss_far_exponent beyond path_loss_breakpoint_m (0, one slope, by default)
                   shadowing_r ~ N(0, shadowing_sigma_db) independent per session and receiver,
                   static_r = a fixed Gaussian random field over the transmitter's position, one per
                   receiver for the dataset, std static_shadowing_sigma_db and exponential (Gudmundson)
                   correlation exp(-distance / static_shadowing_correlation_m); 0 by default
                   antenna_r = (antenna_front_to_back_db / 2)·cos(bearing from receiver r to the transmitter
                   − boresight_r), boresight_r ~ U(0, 2π) once per dataset; 0 by default (omnidirectional)
                   calibration_r ~ N(0, calibration_sigma_db) fixed per receiver for the dataset, + drift_db
                   for receiver drift_receiver from session drift_from_session on (0 by default; the sessions
                   before it are pinned to train: the older version's)
    noise_dbm_r    = noise floor over the captured bandwidth + calibration_r (the gain error
                   scales the whole capture)
    capture_r      = NBFM of power signal_dbm_r + complex Gaussian noise of power noise_dbm_r,
                   or all zeros when the receiver is offline (probability offline_probability,
                   at least one receiver online per session)

Receivers are unsynchronised, so each capture draws its own audio, carrier offset and phase:
only power carries location information, as in the real data.

Randomness: the layout, the calibration, each receiver's static field, the town centres and
every session draw from their own `SeedSequence(seed, spawn_key=...)`, so session i is the same
whatever else is generated, and a session's truth can be drawn without synthesising its samples.
The static field is a function of position, not a draw, and without towns a session's first two
draws are its position as they always were, so neither moves a default-config byte. The same
config gives byte-identical recordings; only the manifest's `created_at` differs unless passed in.

Size: the whole generating model, from receivers to captures; the oracle (`training/bench/oracle.py`)
must assume exactly what is written here, so it stays in one file (its formulas in `channel` and `placement`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np

from training.datasets.channel import (
    AntennaPatterns,
    StaticField,
    distances_m,
    log_distance_path_loss_db,
    nbfm_capture,
    noise_power_dbm,
    received_power_dbm,
)
from training.datasets.manifest import Receiver
from training.datasets.synth_config import SynthConfig
from training.datasets.placement import Placement, transmitter_area
from training.datasets.sigmf_shard import SessionRecord
from training.datasets.writer import write_dataset_version
from training.geodesy import from_local_en
from foundation.logs import counted
from foundation.object_store import S3Credentials

log = logging.getLogger(__name__)
EPOCH = datetime(2026, 11, 1, tzinfo=timezone.utc)
SESSION_INTERVAL_S = 30.0

# spawn_key roots: one independent random stream per purpose
CALIBRATION_STREAM = 0
TRUTH_STREAM = 1
SAMPLES_STREAM = 2
LAYOUT_STREAM = 3
STATIC_FIELD_STREAM = 4  # spawn_key (4, r): receiver r's field
TOWN_STREAM = 5
ANTENNA_STREAM = 6
EIRP_CLASS_STREAM = 7  # spawn_key (7, i): session i's EIRP class, drawn only with mobile_share > 0

RANDOM_RECEIVER_ALTITUDE_M = (100.0, 800.0)
STATIC_FIELD_FEATURES = 256  # random Fourier features per receiver: enough for a near-Gaussian field

@dataclass(frozen=True)
class SessionTruth:
    """Everything drawn for one session before its samples: what an oracle would want to know."""

    index: int
    session_id: str
    time: datetime
    transmitter: tuple[float, float, float]  # (latitude, longitude, altitude_m)
    eirp_dbm: float
    shadowing_db: np.ndarray  # [R] iid shadowing of this session
    static_shadowing_db: np.ndarray  # [R] each receiver's fixed field at the transmitter (zeros by default)
    antenna_gain_db: np.ndarray  # [R] each receiver's antenna gain towards the transmitter (zeros by default)
    online: np.ndarray  # bool [R]
    split: str | None  # the split the session is pinned to (towns only), None to let the trainer choose
    signal_dbm: np.ndarray  # [R] signal power in the capture, both shadowings and calibration error included
    noise_dbm: np.ndarray  # [R] noise power in the capture, calibration error included


def receivers_for(cfg: SynthConfig) -> tuple[Receiver, ...]:
    """The receivers a config realises, in receiver-axis order: `cfg.receivers`, or the seeded random layout."""
    if cfg.receiver_layout == "fixed":
        return cfg.receivers
    rng = _rng(cfg.seed, LAYOUT_STREAM)
    count = int(rng.integers(cfg.random_receivers_min, cfg.random_receivers_max + 1))
    east_m, north_m = rng.uniform(-cfg.random_area_m / 2.0, cfg.random_area_m / 2.0, size=(2, count))
    altitude_m = rng.uniform(*RANDOM_RECEIVER_ALTITUDE_M, size=count)
    latitude, longitude = from_local_en(east_m, north_m, cfg.random_center_latitude, cfg.random_center_longitude)
    return tuple(
        Receiver(id=f"rx-{r:02d}", latitude=float(latitude[r]), longitude=float(longitude[r]),
                 altitude_m=float(altitude_m[r]))
        for r in range(count)
    )


def total_shadowing_sigma_db(cfg: SynthConfig) -> float:
    """What an oracle that treats all shadowing as iid should assume: the two shadowings add in power."""
    return float(np.hypot(cfg.shadowing_sigma_db, cfg.static_shadowing_sigma_db))


def static_field(cfg: SynthConfig, receivers: tuple[Receiver, ...] | None = None) -> StaticField:
    """The config's static shadowing field, drawn once (pass `receivers` to skip re-deriving the layout)."""
    receivers = receivers_for(cfg) if receivers is None else receivers
    origin = (float(np.mean([r.latitude for r in receivers])), float(np.mean([r.longitude for r in receivers])))
    wave_per_m = np.empty((len(receivers), STATIC_FIELD_FEATURES, 2))
    phase = np.empty((len(receivers), STATIC_FIELD_FEATURES))
    for r in range(len(receivers)):
        rng = _rng(cfg.seed, STATIC_FIELD_STREAM, r)  # receiver r's field does not depend on how many there are
        gaussian = rng.standard_normal((STATIC_FIELD_FEATURES, 2))
        chi_1 = np.abs(rng.standard_normal((STATIC_FIELD_FEATURES, 1)))
        wave_per_m[r] = gaussian / (chi_1 * cfg.static_shadowing_correlation_m)
        phase[r] = rng.uniform(0.0, 2.0 * np.pi, STATIC_FIELD_FEATURES)
    return StaticField(cfg.static_shadowing_sigma_db, origin, wave_per_m, phase)


def static_field_db(cfg: SynthConfig, latitude, longitude) -> np.ndarray:
    """[..., R] each receiver's static shadowing at transmitter positions (degrees); zeros by default."""
    return static_field(cfg)(latitude, longitude)


def antenna_patterns(cfg: SynthConfig, receivers: tuple[Receiver, ...] | None = None) -> AntennaPatterns:
    """The receivers' antenna patterns, their boresights drawn once per dataset."""
    receivers = receivers_for(cfg) if receivers is None else receivers
    boresight = _rng(cfg.seed, ANTENNA_STREAM).uniform(0.0, 2.0 * np.pi, size=len(receivers))
    return AntennaPatterns(cfg.antenna_front_to_back_db, np.array([[r.latitude, r.longitude] for r in receivers]),
                           boresight)


def receiver_calibration_db(cfg: SynthConfig, *, drifted: bool = True) -> np.ndarray:
    """[R] each receiver's gain error: the newest sessions' (with `drift_db` when it drifts), or with
    `drifted=False` the one before the drift, fixed for the whole dataset when nothing drifts."""
    rng = _rng(cfg.seed, CALIBRATION_STREAM)
    calibration = rng.normal(0.0, cfg.calibration_sigma_db, size=len(receivers_for(cfg)))
    if drifted and cfg.drift_db:
        calibration[cfg.drift_receiver] += cfg.drift_db
    return calibration


def session_truths(cfg: SynthConfig) -> Iterator[SessionTruth]:
    """The drawn truth of every session, cheaply: no samples are synthesised."""
    receivers = receivers_for(cfg)
    calibrations = receiver_calibration_db(cfg, drifted=False), receiver_calibration_db(cfg)
    fixed = FixedGains(static_field(cfg, receivers), antenna_patterns(cfg, receivers))
    placement = placement_for(cfg, receivers)
    for index in range(cfg.sessions):
        yield _draw_truth(cfg, index, receivers, calibrations, fixed, placement)


def placement_for(cfg: SynthConfig, receivers: tuple[Receiver, ...] | None = None) -> Placement:
    """Where the config's transmitters are drawn: its transmitter area and its town centres (none by default)."""
    area = transmitter_area(receivers_for(cfg) if receivers is None else receivers, cfg.area_margin_m)
    return Placement.draw(area, cfg.towns, cfg.town_radius_m, cfg.uniform_test_share, _rng(cfg.seed, TOWN_STREAM))


@dataclass(frozen=True)
class FixedGains:
    """What a dataset fixes about the channel by position, drawn once: the static field, the antennas."""

    field: StaticField
    antennas: AntennaPatterns


def _draw_truth(cfg: SynthConfig, index: int, receivers, calibrations: tuple[np.ndarray, np.ndarray],
                fixed: FixedGains, placement: Placement) -> SessionTruth:
    rng = _rng(cfg.seed, TRUTH_STREAM, index)
    latitude, longitude, split = placement.draw_transmitter(rng)  # the first draws of the session's stream
    before_drift = bool(cfg.drift_db) and index < cfg.drift_from_session
    calibration_db, split = (calibrations[0], "train") if before_drift else (calibrations[1], split)
    eirp_dbm = rng.uniform(cfg.eirp_dbm_min, cfg.eirp_dbm_max)
    shadowing_db = rng.normal(0.0, cfg.shadowing_sigma_db, size=len(receivers))
    online = rng.random(len(receivers)) >= cfg.offline_probability
    if not online.any():
        online[rng.integers(len(receivers))] = True  # a session nobody recorded would not exist
    static_shadowing_db = fixed.field(latitude, longitude)  # zeros by default: x + 0.0 == x keeps old bytes
    antenna_gain_db = fixed.antennas(latitude, longitude)  # the same
    distance_m = distances_m(latitude, longitude, cfg.tx_altitude_m, receivers)
    path_loss_db = log_distance_path_loss_db(distance_m, cfg.center_frequency_hz, cfg.path_loss_exponent,
                                             breakpoint_m=cfg.path_loss_breakpoint_m, far_exponent=cfg.path_loss_far_exponent)
    if cfg.mobile_share > 0 and (mobile := _rng(cfg.seed, EIRP_CLASS_STREAM, index)).random() < cfg.mobile_share:
        eirp_dbm = mobile.uniform(cfg.mobile_eirp_dbm_min, cfg.mobile_eirp_dbm_max)
    return SessionTruth(
        index=index,
        session_id=f"{cfg.dataset_id}-{index:07d}",
        time=EPOCH + timedelta(seconds=SESSION_INTERVAL_S * index),
        transmitter=(float(latitude), float(longitude), cfg.tx_altitude_m),
        eirp_dbm=float(eirp_dbm),
        shadowing_db=shadowing_db,
        static_shadowing_db=static_shadowing_db,
        antenna_gain_db=antenna_gain_db,
        online=online,
        split=split,
        signal_dbm=received_power_dbm(eirp_dbm, path_loss_db, shadowing_db + static_shadowing_db + antenna_gain_db,
                                      calibration_db),
        noise_dbm=noise_power_dbm(cfg.noise_floor_dbm_per_12k5, cfg.sample_rate_hz) + calibration_db,
    )


def capture_session(cfg: SynthConfig, truth: SessionTruth) -> SessionRecord:
    """The samples every receiver records for one drawn session."""
    rng = _rng(cfg.seed, SAMPLES_STREAM, truth.index)
    iq = np.zeros((truth.online.size, cfg.samples_per_capture), dtype=np.complex64)
    for r in np.flatnonzero(truth.online):
        iq[r] = nbfm_capture(truth.signal_dbm[r], truth.noise_dbm[r], cfg.samples_per_capture, cfg.sample_rate_hz,
                             cfg.fm_deviation_hz, rng)
    return SessionRecord(
        session_id=truth.session_id,
        time=truth.time,
        emitter=truth.transmitter,
        split=truth.split,
        online=truth.online.copy(),
        iq=iq,
    )


def generate_sessions(cfg: SynthConfig) -> Iterator[SessionRecord]:
    """Every session with its samples, lazily, in order; deterministic from `cfg.seed`."""
    for truth in session_truths(cfg):
        yield capture_session(cfg, truth)


def synthesize_dataset(
    cfg: SynthConfig,
    root_uri: str,
    *,
    version: int = 1,
    credentials: S3Credentials | None = None,
    created_at: datetime | None = None,
) -> str:
    """Write the synthetic dataset as `<root>/<dataset_id>/v<version>`; return its URI.

    Raises what `write_dataset_version` raises (FileExistsError for an existing version).
    """
    return write_dataset_version(
        root_uri,
        dataset_id=cfg.dataset_id,
        version=version,
        parent_version=None,
        center_frequency_hz=cfg.center_frequency_hz,
        sample_rate_hz=cfg.sample_rate_hz,
        samples_per_capture=cfg.samples_per_capture,
        receivers=list(receivers_for(cfg)),
        sessions=counted(generate_sessions(cfg), total=cfg.sessions, unit="sessions", logger=log),
        shard_size=cfg.shard_size,
        credentials=credentials,
        created_at=created_at,
    )


def _rng(seed: int, *spawn_key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=spawn_key))
