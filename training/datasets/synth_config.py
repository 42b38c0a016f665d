"""The synthetic generator's configuration (`training.datasets.synth` reads it): receivers, physics,
placement, and what each scenario of the bench changes (`training.bench.scenarios`)."""

from __future__ import annotations

from dataclasses import dataclass

from training.datasets.manifest import Receiver

RECEIVER_LAYOUTS = ("fixed", "random")

DEFAULT_RECEIVERS = (
    Receiver(id="giaveno", latitude=45.03, longitude=7.27, altitude_m=600.0),
    Receiver(id="montanaro", latitude=45.234, longitude=7.857, altitude_m=300.0),
    Receiver(id="torino", latitude=45.044, longitude=7.672, altitude_m=250.0),
    Receiver(id="coazze", latitude=45.048, longitude=7.238, altitude_m=700.0),
    Receiver(id="giovi", latitude=44.561, longitude=8.956, altitude_m=480.0),
    Receiver(id="genova", latitude=44.395, longitude=8.956, altitude_m=100.0),
    Receiver(id="milano", latitude=45.478, longitude=9.123, altitude_m=120.0),
)


@dataclass(frozen=True)
class SynthConfig:
    sessions: int = 2000
    seed: int = 0
    dataset_id: str = "synth-nw-italy"
    center_frequency_hz: float = 145.5e6  # 2 m amateur band
    sample_rate_hz: float = 12_500.0  # one NBFM channel
    samples_per_capture: int = 1024
    path_loss_exponent: float = 3.0  # between free space (2) and dense urban (4)
    shadowing_sigma_db: float = 6.0  # log-normal shadowing, typical of VHF over hills
    eirp_dbm_min: float = 30.0  # 1 W handheld ...
    eirp_dbm_max: float = 44.0  # ... to 25 W mobile
    mobile_share: float = 0.0  # 0: one EIRP class; else this share of transmitters draws from the mobiles' range
    mobile_eirp_dbm_min: float = 44.0  # mobiles: 25 W ...
    mobile_eirp_dbm_max: float = 47.0  # ... to 50 W
    path_loss_breakpoint_m: float = 0.0  # 0: one slope; else path_loss_far_exponent beyond this distance
    path_loss_far_exponent: float = 4.0
    calibration_sigma_db: float = 2.0  # fixed, unknown gain error per receiver
    offline_probability: float = 0.05  # WebSDRs drop out
    noise_floor_dbm_per_12k5: float = -120.0  # noise power in 12.5 kHz at the receiver input
    area_margin_m: float = 10_000.0  # transmitters may lie this far outside the receivers' box
    tx_altitude_m: float = 2.0  # a handheld or a car roof
    fm_deviation_hz: float = 2_500.0  # narrowband FM
    shard_size: int = 1000
    receivers: tuple[Receiver, ...] = DEFAULT_RECEIVERS  # used by the "fixed" layout
    receiver_layout: str = "fixed"  # "fixed": `receivers`; "random": drawn from the seed (`receivers_for`)
    random_receivers_min: int = 7  # the random layout draws this many receivers ...
    random_receivers_max: int = 10  # ... up to this many, inclusive
    random_area_m: float = 60_000.0  # side of the square they are drawn in
    random_center_latitude: float = 45.0  # centre of that square: near Torino
    random_center_longitude: float = 7.7
    static_shadowing_sigma_db: float = 0.0  # std of each receiver's fixed shadowing field over position
    static_shadowing_correlation_m: float = 5_000.0  # distance at which that field's correlation is 1/e
    towns: int = 0  # 0: transmitters uniform, nothing pinned; else clustered around this many (`placement`)
    town_radius_m: float = 5_000.0  # with towns: std of the Gaussian offset from the town, per axis
    uniform_test_share: float = 0.15  # with towns: the share drawn uniformly and pinned to test
    antenna_front_to_back_db: float = 0.0  # 0: omnidirectional receive antennas; else `AntennaPatterns`
    # a receiver whose gain changes between dataset versions: 0, none; else receiver drift_receiver's gain error
    # grows by drift_db from session drift_from_session on (a later version), and the sessions before are pinned to train
    drift_db: float = 0.0
    drift_receiver: int = 0
    drift_from_session: int = 0

    def __post_init__(self) -> None:
        errors = []
        if self.receiver_layout not in RECEIVER_LAYOUTS:
            errors.append(f"receiver_layout {self.receiver_layout!r} is not one of {RECEIVER_LAYOUTS}")
        if not 1 <= self.random_receivers_min <= self.random_receivers_max:
            errors.append("need 1 <= random_receivers_min <= random_receivers_max")
        if not 0 <= self.mobile_share < 1 or self.mobile_eirp_dbm_min > self.mobile_eirp_dbm_max:
            errors.append(f"need 0 <= mobile_share < 1 and mobile_eirp_dbm_min <= mobile_eirp_dbm_max, got "
                          f"{self.mobile_share:g}, {self.mobile_eirp_dbm_min:g}, {self.mobile_eirp_dbm_max:g}")
        if self.path_loss_breakpoint_m < 0 or self.path_loss_far_exponent <= 0:
            errors.append(f"need path_loss_breakpoint_m >= 0 and path_loss_far_exponent > 0, got "
                          f"{self.path_loss_breakpoint_m:g}, {self.path_loss_far_exponent:g}")
        if self.drift_db and not (0 <= self.drift_receiver and 0 < self.drift_from_session):
            errors.append(f"with drift_db, need drift_receiver >= 0 and drift_from_session > 0, got "
                          f"{self.drift_receiver}, {self.drift_from_session}")
        if self.antenna_front_to_back_db < 0:
            errors.append(f"need antenna_front_to_back_db >= 0, got {self.antenna_front_to_back_db:g}")
        if self.static_shadowing_sigma_db < 0 or self.static_shadowing_correlation_m <= 0:
            errors.append("need static_shadowing_sigma_db >= 0 and static_shadowing_correlation_m > 0")
        if self.towns < 0 or self.towns == 1 or self.town_radius_m <= 0 or not 0 < self.uniform_test_share < 1:
            errors.append("need towns 0 (uniform) or >= 2 (the last is val's), town_radius_m > 0, 0 < uniform_test_share"
                          f" < 1: got {self.towns}, {self.town_radius_m:g}, {self.uniform_test_share:g}")
        if errors:
            raise ValueError("; ".join(errors))
