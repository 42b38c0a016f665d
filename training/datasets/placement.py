"""Where a synthetic session's transmitter is, and which split its position pins it to.

By default transmitters are uniform over the transmitter area and nothing is pinned: the
service's spatial split (`training.datasets.splits`) decides. With towns (issue 21: "trained
on clustered transmitters and tested everywhere") real data's bias is reproduced: amateurs
transmit from where they live, so a model sees a few dense towns and is then asked about the
whole area. Each session is then, independently:

- with probability `uniform_test_share`, uniform over the area and pinned to `test`: the test
  split is exactly these, so the bench's oracle, whose prior is uniform over the area, stays
  the Bayes-optimal yardstick on it;
- otherwise around a town drawn with equal weights, at a 2-D Gaussian offset of `radius_m`
  per axis (it may fall outside the area, as a town near its edge would spill over), pinned
  to `val` for the last town and to `train` for the others.

Every session is pinned, because the spatial split would otherwise send whole towns to test
blocks (6 towns over about 50 blocks of 20 km) and mix clustered sessions into test. Val is a
whole town, held out as the spatial split holds out its val blocks: the model is fitted and
calibrated on clustered sessions and scored on uniform ones. A val drawn session by session
inside the towns would not do: the split's buffer keeps out every training session near a
pinned val transmitter, so it would empty the towns. The same buffer keeps out training and
val sessions near the uniform test transmitters (5 km on north-west Italy's 20 km blocks):
the more test sessions, the fewer training ones, which sizes the share (`bench.scenarios`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.geodesy import EARTH_RADIUS_M, from_local_en


def transmitter_area(receivers, margin_m: float) -> tuple[float, float, float, float]:
    """(lat_min, lat_max, lon_min, lon_max) in degrees: the receivers' box grown by `margin_m`."""
    latitudes = [r.latitude for r in receivers]
    longitudes = [r.longitude for r in receivers]
    margin_lat_deg = np.degrees(margin_m / EARTH_RADIUS_M)
    margin_lon_deg = margin_lat_deg / np.cos(np.radians((min(latitudes) + max(latitudes)) / 2.0))
    return (
        min(latitudes) - margin_lat_deg,
        max(latitudes) + margin_lat_deg,
        min(longitudes) - margin_lon_deg,
        max(longitudes) + margin_lon_deg,
    )


@dataclass(frozen=True, eq=False)
class Placement:
    """How a dataset places its transmitters: uniformly over `area` (no town), or around `town_centres`."""

    area: tuple[float, float, float, float]  # (lat_min, lat_max, lon_min, lon_max), degrees
    town_centres: np.ndarray  # [T, 2] latitude, longitude in degrees; empty: uniform, nothing pinned
    town_radius_m: float
    uniform_test_share: float

    @classmethod
    def draw(cls, area, towns: int, town_radius_m: float, uniform_test_share: float,
             rng: np.random.Generator) -> Placement:
        """The placement with `towns` centres drawn uniformly over `area` from `rng` (none drawn for 0)."""
        lat_min, lat_max, lon_min, lon_max = area
        centres = np.stack([rng.uniform(lat_min, lat_max, towns), rng.uniform(lon_min, lon_max, towns)], axis=1)
        return cls(area, centres, town_radius_m, uniform_test_share)

    def draw_transmitter(self, rng: np.random.Generator) -> tuple[float, float, str | None]:
        """One session's (latitude, longitude, pinned split) from the session's own stream. Without
        towns: two uniform draws and no pin, the stream every dataset before towns was drawn from."""
        if not len(self.town_centres):
            return (*self._uniform(rng), None)
        if rng.random() < self.uniform_test_share:
            return (*self._uniform(rng), "test")
        town = int(rng.integers(len(self.town_centres)))
        east_m, north_m = rng.normal(0.0, self.town_radius_m, size=2)
        latitude, longitude = from_local_en(east_m, north_m, *self.town_centres[town])
        return float(latitude), float(longitude), "val" if town == len(self.town_centres) - 1 else "train"

    def _uniform(self, rng: np.random.Generator) -> tuple[float, float]:
        lat_min, lat_max, lon_min, lon_max = self.area
        return rng.uniform(lat_min, lat_max), rng.uniform(lon_min, lon_max)
