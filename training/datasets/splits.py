"""Which split (train, val or test) each session belongs to, and which ones the buffer keeps out.

Labelled sessions (transmitter position known) are split in space; the bench opens its datasets
through this same code, so the service evaluates the way the bench does. Walking tracks and
repeated sites make near-duplicate sessions: a split by session puts them on both sides and
rewards memorisation (issue 21's review, powder-all: the model 76 m and kNN 58 m under it, 177 m
and 277 m blocked and buffered).

- **Blocks.** Square blocks of `block_m` on an east/north grid. A block goes whole to one
  split, drawn from a hash of the dataset id and the block's grid indices, stratified: in each
  group of 4 x 4 blocks the hash orders the 16 and a per-group offset gives test the first
  `test_split` x 16 of them (2 or 3 at 15 %), val the next `validation_split` x 16, train the
  rest. Each block is still test with probability `test_split`, but held-out blocks spread
  evenly over the area and the shares of sessions stay near the asked ones (POWDER, three
  dataset ids: 10-18 % of sessions in test, against 3-24 % for one independent draw per block).
- **Block size from the receivers' extent** (`block_side_m`): a fraction of the diagonal of their
  bounding box (`TrainConfig.spatial_block_fraction`, a tenth), rounded to the 1-2-5 series, at
  least 100 m. The receivers, because they are what a lineage keeps from version to version
  while sessions come and go. Their extent, not their spacing, because receivers often share a
  site (POWDER's 29 are paired on rooftops: 74 m median nearest-neighbour distance) and one
  added inside the network changes no extent. A tenth gives about 50 blocks in the network's
  box, more where transmitters roam beyond it, so the drawn shares land near the asked ones,
  while a block stays far wider than near-duplicate sessions lie apart: POWDER 200 m (its
  importer pinned 250 m), north-west Italy 20 km, a 60 km random layout 5 km. The 1-2-5
  rounding keeps the block while a receiver added at the edge changes the extent by less than
  about 1.6x. 100 m at least: handheld GPS fixes and sessions along a walk are tens of metres
  apart, and one receiver has no extent.
- **Frame fixed per lineage.** The grid's origin is the receivers' mean position rounded to
  whole degrees. A session's split is then a function of its position, the receivers and the
  dataset id alone: a later version that adds sessions moves none, and a candidate and its
  champion meet the same test blocks. (Receivers that change enough to move the rounded origin
  or block make a new frame; the model card records origin, block and buffer, so it shows.)
- **Buffer.** A session is kept out of the sessions a model uses when it lies within
  `buffer_m` of a block of a stricter split (train < val < test): training sessions near val
  or test blocks, val sessions near test blocks. Kept out, not moved: moved, they would sit
  next to the ones they were kept from. Measured to the block, not to the transmitters in it,
  the buffer is stable across versions too, and every test transmitter of this and every later
  version is at least `buffer_m` from every training one. Default a quarter of the block
  (`TrainConfig.spatial_buffer_fraction`): POWDER's unbuffered 250 m blocks left a median of
  66 m from a test transmitter to the nearest training one, and the model's error grew with
  that distance; a quarter block (50 m there) makes about that distance the floor. On evenly spread
  positions it leaves out 34 % of training sessions and 16 % of val (half a block: 71 % and 37 %).
- **Pins.** `heimdall:split` sets a session's split whatever its block. Pins are buffered by
  transmitter: a session is kept out when a transmitter of a stricter split lies within
  `buffer_m` and one of the two is pinned (so a pinned lineage's buffer moves with its pins).

Unlabelled sessions have no position: a hash of the session id (`assign_split`), no buffer.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass

import numpy as np

from foundation.train_config import TrainConfig
from training.datasets.manifest import SPLITS
from training.geodesy import from_local_en, haversine_m, to_local_en

# Changing a salt reshuffles every session (block) of every dataset: never change them.
SPLIT_SALT = b"heimdall.split/1\x00"
BLOCK_SALT = b"heimdall.block/1\x00"
_UNIT = float(1 << 64)
BLOCK_FRACTION = TrainConfig.model_fields["spatial_block_fraction"].default  # of the receivers' diagonal
BUFFER_FRACTION = TrainConfig.model_fields["spatial_buffer_fraction"].default  # of the block side
MIN_BLOCK_M = 100.0
GROUP_SIDE = 4  # blocks are drawn in groups of 4 x 4 (stratified): 16 slots put 2 or 3 in a 15 % share
PAIR_CHUNK = 1024  # pinned sessions compared this many at a time: bounds a [chunk, N] distance array
TRAIN, VAL, TEST = (SPLITS.index(name) for name in ("train", "val", "test"))  # codes: stricter is larger


def split_unit(session_id: str) -> float:
    """A stable, uniformly distributed number in [0, 1) drawn from the session id."""
    return _unit(SPLIT_SALT + session_id.encode("utf-8"))


def check_shares(validation_split: float, test_split: float) -> None:
    """Raises ValueError for shares outside [0, 1) that leave no room for training."""
    if validation_split < 0 or test_split < 0 or validation_split + test_split >= 1:
        raise ValueError(f"validation_split={validation_split} and test_split={test_split} leave no training share")


def assign_split(session_id: str, *, validation_split: float, test_split: float, pinned: str | None = None) -> str:
    """"train", "val" or "test" for one session without a position; a `heimdall:split` pin wins.

    Raises ValueError for shares that leave no room for training, or an unknown pinned split.
    """
    check_shares(validation_split, test_split)
    if pinned is not None:
        return SPLITS[_pinned_code(pinned)]
    return SPLITS[int(_code(np.array(split_unit(session_id)), validation_split, test_split))]


def block_side_m(receivers_latlon: np.ndarray, fraction: float = BLOCK_FRACTION) -> float:
    """The block side that fits the receivers' scale (module docstring): `fraction` of the diagonal of
    their bounding box, rounded to the 1-2-5 series, at least `MIN_BLOCK_M`."""
    latlon = np.asarray(receivers_latlon, dtype=np.float64).reshape(-1, 2)
    east, north = to_local_en(latlon[:, 0], latlon[:, 1], *latlon.mean(axis=0))
    raw = max(fraction * float(np.hypot(np.ptp(east), np.ptp(north))), MIN_BLOCK_M)
    decade = 10.0 ** math.floor(math.log10(raw))
    return min((step * decade for step in (1, 2, 5, 10)), key=lambda side: abs(math.log(side / raw)))


@dataclass(frozen=True)
class DatasetSplit:
    """Every session's split (`names`, [N]) and whether the buffer keeps it out (`buffered`, [N])."""

    names: np.ndarray
    buffered: np.ndarray
    frame: SpatialFrame
    pinned: int  # labelled sessions whose split a `heimdall:split` pin set

    def facts(self) -> dict:
        """What the model card's `training.split` records."""
        kept_out = {name: int((self.buffered & (self.names == name)).sum()) for name in ("train", "val")}
        return {"method": "spatial blocks", "block_m": self.frame.block_m, "buffer_m": self.frame.buffer_m,
                "origin": list(self.frame.origin), "pinned_sessions": self.pinned, "buffered_sessions": kept_out}

    def params(self) -> dict[str, str]:
        """The same, as MLflow parameters."""
        facts = self.facts()
        return {"split_method": facts["method"], "split_block_m": f"{self.frame.block_m:g}",
                "split_buffer_m": f"{self.frame.buffer_m:g}", "split_origin": f"{self.frame.origin}",
                "split_pinned_sessions": str(self.pinned),
                **{f"split_buffered_{name}": str(n) for name, n in facts["buffered_sessions"].items()}}


@dataclass(frozen=True)
class SpatialFrame:
    """A lineage's grid: `block_m` squares on the east/north frame at `origin` (whole degrees)."""

    dataset_id: str
    origin: tuple[float, float]
    block_m: float
    buffer_m: float

    @classmethod
    def for_lineage(cls, dataset_id: str, receivers_latlon, *, block_fraction: float = BLOCK_FRACTION,
                    buffer_fraction: float = BUFFER_FRACTION) -> SpatialFrame:
        """The lineage's frame from its receivers ([R, 2] degrees), with `TrainConfig`'s fractions."""
        latlon = np.asarray(receivers_latlon, dtype=np.float64).reshape(-1, 2)
        block_m = block_side_m(latlon, block_fraction)
        origin = tuple(float(round(value)) for value in latlon.mean(axis=0))
        return cls(dataset_id, origin, block_m, buffer_fraction * block_m)

    def split(self, session_ids, latlon: np.ndarray, pins: list[str | None], *, validation_split: float,
              test_split: float) -> DatasetSplit:
        """Every session's split (`latlon` [N, 2] NaN where unlabelled) and who the buffer keeps out."""
        check_shares(validation_split, test_split)
        latlon = np.asarray(latlon, dtype=np.float64).reshape(-1, 2)
        labelled = ~np.isnan(latlon[:, 0])
        pinned = np.array([pin is not None for pin in pins], dtype=bool).reshape(-1)
        placed, hashed = labelled & ~pinned, ~labelled & ~pinned
        codes = np.full(len(pinned), TRAIN, dtype=np.int64)
        codes[pinned] = [_pinned_code(pin) for pin in pins if pin is not None]
        units = [split_unit(session_id) for session_id, by_id in zip(session_ids, hashed) if by_id]
        codes[hashed] = _code(np.array(units, dtype=np.float64), validation_split, test_split)
        blocks = self.blocks(latlon[placed])
        codes[placed] = self.block_codes(blocks, validation_split, test_split)
        buffered = np.zeros(len(codes), dtype=bool)
        buffered[placed] = self._near_stricter_block(latlon[placed], blocks, codes[placed], validation_split,
                                                     test_split)
        buffered[labelled] |= _near_stricter_pin(latlon[labelled], codes[labelled], pinned[labelled], self.buffer_m)
        names = np.array(SPLITS, dtype="<U5")[codes]
        return DatasetSplit(names, buffered, self, int((labelled & pinned).sum()))

    def blocks(self, latlon: np.ndarray) -> np.ndarray:
        """[N, 2] int64 east/north grid indices of each position's block."""
        east, north = to_local_en(latlon[:, 0], latlon[:, 1], *self.origin)
        return np.floor(np.stack([east, north], axis=1) / self.block_m).astype(np.int64).reshape(-1, 2)

    def block_codes(self, blocks: np.ndarray, validation_split: float, test_split: float) -> np.ndarray:
        """[N] split code (index in SPLITS) of each block, drawn from the dataset id and its indices."""
        unique, inverse = np.unique(blocks.reshape(-1, 2), axis=0, return_inverse=True)
        group, slot = np.divmod(unique, GROUP_SIDE)
        units = np.array([_group_units(self.dataset_id, *map(int, g))[tuple(s)] for g, s in zip(group, slot)])
        return _code(units, validation_split, test_split)[inverse.reshape(-1)]

    def distance_to_block_m(self, latlon: np.ndarray, blocks: np.ndarray) -> np.ndarray:
        """[N] metres from each position to the nearest point of its given block (0 inside)."""
        south, west = from_local_en(blocks[:, 0] * self.block_m, blocks[:, 1] * self.block_m, *self.origin)
        north, east = from_local_en((blocks[:, 0] + 1) * self.block_m, (blocks[:, 1] + 1) * self.block_m,
                                    *self.origin)
        nearest_lat = np.clip(latlon[:, 0], south, north)
        nearest_lon = np.clip(latlon[:, 1], west, east)
        return haversine_m(latlon[:, 0], latlon[:, 1], nearest_lat, nearest_lon)

    def _near_stricter_block(self, latlon: np.ndarray, blocks: np.ndarray, codes: np.ndarray,
                             validation_split: float, test_split: float) -> np.ndarray:
        """[N] True where a block of a stricter split lies within the buffer."""
        near = np.zeros(len(codes), dtype=bool)
        if not len(codes) or self.buffer_m == 0:
            return near
        reach = math.ceil(self.buffer_m / self.block_m) + 1  # +1: the frame's metres are not the sphere's
        for step_east in range(-reach, reach + 1):
            for step_north in range(-reach, reach + 1):
                if (step_east, step_north) == (0, 0):
                    continue  # a session's own block holds its split, never a stricter one
                other = blocks + np.array([step_east, step_north])
                stricter = self.block_codes(other, validation_split, test_split) > codes
                near |= stricter & (self.distance_to_block_m(latlon, other) < self.buffer_m)
        return near


def _near_stricter_pin(latlon: np.ndarray, codes: np.ndarray, pinned: np.ndarray, buffer_m: float) -> np.ndarray:
    """[N] True where a transmitter of a stricter split lies within `buffer_m`, one of the two pinned."""
    near = np.zeros(len(codes), dtype=bool)
    if not pinned.any() or buffer_m == 0:
        return near
    for code in (TRAIN, VAL):
        mine, stricter = codes == code, codes > code
        near[mine & pinned] = _any_within(latlon[mine & pinned], latlon[stricter], buffer_m)
        near[mine & ~pinned] = _any_within(latlon[mine & ~pinned], latlon[stricter & pinned], buffer_m)
    return near


def _any_within(points: np.ndarray, targets: np.ndarray, radius_m: float) -> np.ndarray:
    """[len(points)] True where some target lies closer than `radius_m`."""
    found = np.zeros(len(points), dtype=bool)
    for start in range(0, len(points) if len(targets) else 0, PAIR_CHUNK):
        chunk = points[start:start + PAIR_CHUNK]
        distance = haversine_m(chunk[:, None, 0], chunk[:, None, 1], targets[None, :, 0], targets[None, :, 1])
        found[start:start + PAIR_CHUNK] = (distance < radius_m).any(axis=1)
    return found


def _code(unit: np.ndarray, validation_split: float, test_split: float) -> np.ndarray:
    """Split code of uniform draws: test below `test_split`, val below the two shares, else train."""
    return np.where(unit < test_split, TEST, np.where(unit < test_split + validation_split, VAL, TRAIN))


def _pinned_code(pinned: str) -> int:
    if pinned not in SPLITS:
        raise ValueError(f"pinned split {pinned!r} is not one of {SPLITS}")
    return SPLITS.index(pinned)


@functools.lru_cache(maxsize=1 << 16)
def _group_units(dataset_id: str, group_east: int, group_north: int) -> np.ndarray:
    """[GROUP_SIDE, GROUP_SIDE] draws in [0, 1) of one group's blocks: their hash order, shifted by one
    offset for the group (systematic sampling), so each is uniform and the group's shares are exact
    to a block."""
    salt = BLOCK_SALT + f"{dataset_id}/{group_east}/{group_north}".encode("utf-8")
    order = np.argsort([_unit(salt + f"/{east}/{north}".encode()) for east in range(GROUP_SIDE)
                        for north in range(GROUP_SIDE)])
    rank = np.empty(GROUP_SIDE * GROUP_SIDE)
    rank[order] = np.arange(GROUP_SIDE * GROUP_SIDE)
    return ((rank + _unit(salt)) / (GROUP_SIDE * GROUP_SIDE)).reshape(GROUP_SIDE, GROUP_SIDE)


def _unit(payload: bytes) -> float:
    return int.from_bytes(hashlib.sha256(payload).digest()[:8], "big") / _UNIT
