"""Imports the POWDER outdoor RSS measurements (shared/data/powder/) as a `heimdall.dataset/1` version.

POWDER gives one RSS number per receiver per session, not IQ. Each number becomes a capture
whose power is that number, so the dataset reads like any other and power-based baselines
see exactly the measured RSS. The choices, and why:

- **Fixed receivers only.** The bus receivers move: the contract has one position per
  receiver, so they are skipped (`PowderData.mobile_receivers` names them).
- **Units.** POWDER's RSS is uncalibrated dB, "relative to each device". It is written as
  dBm: a fixed per-receiver offset is exactly the "fixed, unknown calibration error" the
  contract allows (POWDER's offsets may exceed its "few dB"; nothing downstream may assume
  absolute power anyway).
- **−101 (not heard or offline).** POWDER does not tell the two apart; the contract does.
  A receiver that reports nothing during a whole local campaign day is *offline* that day
  (zeros, `heimdall:online=false`): the deployed receiver set changed between days (e.g.
  no cnode/nuc2 node reported on 2022-04-25). Otherwise −101 is *online, not heard*: a noise
  capture of −101 dBm, the sentinel read as the detection floor, so absence stays information.
- **Captures.** `samples_per_capture` complex Gaussian samples per receiver, seeded per
  session, normalised so that 10·log10(mean|x|²) equals the RSS to float32 precision. They
  are stand-ins, not recordings: `sample_rate_hz` is the contract's nominal 12.5 kHz
  (POWDER measured 10,000 samples at 2 MS/s behind a 6 kHz filter).
- **Altitude.** Unknown in POWDER. Receivers get the campus ground level `GROUND_ALTITUDE_M`
  (Salt Lake City's university campus lies at ~1,400–1,500 m); transmitters, carried by hand,
  1.5 m above it. Only the horizontal position is ground truth.
- **Time.** The `timestamp` column holds local Salt Lake City date-times (sessions fall
  between 08:00 and 18:00), not the Unix seconds the README says: read as America/Denver.
- **Split.** Walking tracks make near-duplicate sessions, so a random split leaks.
  `blocked_split` pins whole 250 m blocks of transmitter positions to one split each; without
  pins (`pin_splits=False`, as the bench imports) the reader's default spatial split, blocked
  and buffered, places them (`training.datasets.splits`).
"""

from __future__ import annotations

import argparse
import ast
import csv
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from training.datasets.manifest import Receiver
from training.datasets.sigmf_shard import SessionRecord
from training.datasets.writer import write_dataset_version
from training.geodesy import to_local_en
from foundation.object_store import S3Credentials

POWDER_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "powder"
CSV_FILE, COORDS_FILE = "single_tx.csv", "location_coordinates.json"
CENTER_FREQUENCY_HZ = 462.7e6  # FRS channel of the Baofeng handhelds
SAMPLE_RATE_HZ = 12_500.0  # nominal: the captures are synthetic stand-ins for an RSS value
NOT_HEARD_DB = -101.0  # POWDER's sentinel: not heard, or offline
GROUND_ALTITUDE_M = 1450.0  # campus ground level; POWDER gives no altitude
HANDHELD_HEIGHT_M = 1.5  # transmitters are carried by walkers
LOCAL_TIME = ZoneInfo("America/Denver")  # Salt Lake City
SHARD_SESSIONS = 1000
TX_COLUMNS = ("tx_x_coord", "tx_y_coord")  # latitude, longitude
BUS_PREFIX = "bus-"
BLOCK_SALT = "heimdall.powder-block/1"  # changing it reshuffles every block: never change it

# Seven fixed receivers that report often and are spread out: the six online in >= 90 % of
# sessions (one rooftop site each, near the campus centre), plus madsen-nuc2, the receiver
# online in >= 80 % of sessions that lies farthest from those six (730 m south).
SEVEN_RECEIVERS = (
    "cbrssdr1-honors-comp",
    "ebc-nuc1-b210",
    "cbrssdr1-hospital-comp",
    "cbrssdr1-ustar-comp",
    "cbrssdr1-bes-comp",
    "guesthouse-nuc2-b210",
    "madsen-nuc2-b210",
)
VARIANTS: dict[str, tuple[str, ...] | None] = {"all": None, "seven": SEVEN_RECEIVERS}  # None: every fixed one


@dataclass(frozen=True)
class PowderData:
    """POWDER sessions with a known transmitter, over the fixed receivers (axis R)."""

    receivers: list[Receiver]
    session_ids: list[str]  # "powder-<CSV data row>", stable whatever is filtered out
    times: list[datetime]  # timezone-aware
    rss_db: np.ndarray  # [N, R] float64 as in the CSV; NOT_HEARD_DB when not heard or offline
    online: np.ndarray  # [N, R] bool: False where the receiver reported nothing that whole day
    tx_latlon: np.ndarray  # [N, 2] float64 degrees
    mobile_receivers: tuple[str, ...]  # bus receivers, skipped

    def select(self, receiver_ids: Sequence[str]) -> PowderData:
        """The same sessions over `receiver_ids` only, in that order. Raises KeyError for an unknown id."""
        column = {receiver.id: j for j, receiver in enumerate(self.receivers)}
        missing = [rid for rid in receiver_ids if rid not in column]
        if missing:
            raise KeyError(f"not fixed POWDER receivers: {missing}")
        columns = [column[rid] for rid in receiver_ids]
        return replace(self, receivers=[self.receivers[j] for j in columns],
                       rss_db=self.rss_db[:, columns], online=self.online[:, columns])


def load_powder(csv_path: Path | str = POWDER_DIR / CSV_FILE,
                coords_path: Path | str = POWDER_DIR / COORDS_FILE) -> PowderData:
    """Read the CSV and the receiver coordinates. Raises ValueError for a malformed file."""
    coordinates = ast.literal_eval(Path(coords_path).read_text())  # Python literals, not JSON
    with open(csv_path, newline="") as stream:
        header, *rows = list(csv.reader(stream))
    fixed = [name for name in header if coordinates.get(name) is not None]
    mobile = tuple(name for name, position in coordinates.items() if position is None)
    if not fixed or not set(TX_COLUMNS) <= set(header):
        raise ValueError(f"{csv_path}: no fixed receiver columns or no {TX_COLUMNS} columns")
    table = np.array([[float(row[header.index(name)]) for name in (*fixed, *TX_COLUMNS)] for row in rows])
    rss_db, tx_latlon = table[:, :len(fixed)], table[:, len(fixed):]
    keep = _valid_position(tx_latlon)
    times = [_parse_time(row[header.index("timestamp")]) for row in rows]
    online = _online(rss_db, [moment.astimezone(LOCAL_TIME).date() for moment in times])
    receivers = [Receiver(id=name, latitude=coordinates[name][0], longitude=coordinates[name][1],
                          altitude_m=GROUND_ALTITUDE_M) for name in fixed]
    return PowderData(
        receivers=receivers,
        session_ids=[f"powder-{row:05d}" for row in np.flatnonzero(keep)],
        times=[moment for moment, kept in zip(times, keep) if kept],
        rss_db=rss_db[keep], online=online[keep], tx_latlon=tx_latlon[keep], mobile_receivers=mobile)


def _valid_position(latlon: np.ndarray) -> np.ndarray:
    """[N] bool: finite, in range, and not the -1 / 0 placeholders."""
    lat, lon = latlon[:, 0], latlon[:, 1]
    finite = np.isfinite(latlon).all(axis=1)
    placeholder = ((lat == -1) & (lon == -1)) | ((lat == 0) & (lon == 0))
    return finite & ~placeholder & (np.abs(lat) <= 90) & (np.abs(lon) <= 180)


def _parse_time(text: str) -> datetime:
    """Unix seconds (UTC), or a local Salt Lake City date-time as this copy of the data holds."""
    try:
        return datetime.fromtimestamp(float(text), tz=timezone.utc)
    except ValueError:
        return datetime.fromisoformat(text).replace(tzinfo=LOCAL_TIME)


def _online(rss_db: np.ndarray, days: list) -> np.ndarray:
    """[N, R] bool: a receiver is offline on a day it reported nothing at all."""
    days = np.array(days)
    online = np.empty(rss_db.shape, dtype=bool)
    for day in np.unique(days):
        today = days == day
        online[today] = (rss_db[today] != NOT_HEARD_DB).any(axis=0)
    return online


def spatial_blocks(tx_latlon: np.ndarray, *, block_m: float = 250.0) -> np.ndarray:
    """[N, 2] int64 east/north index of each position's `block_m` square block.

    Blocks are laid on the local east/north frame centred on the positions' bounding box.
    """
    latlon = np.asarray(tx_latlon, dtype=np.float64).reshape(-1, 2)
    lat0, lon0 = (latlon.min(axis=0) + latlon.max(axis=0)) / 2
    east, north = to_local_en(latlon[:, 0], latlon[:, 1], lat0, lon0)
    return np.floor(np.stack([east, north], axis=1) / block_m).astype(np.int64)


def blocked_split(tx_latlon: np.ndarray, *, block_m: float = 250.0, seed: int = 0, val_share: float = 0.15,
                  test_share: float = 0.15) -> list[str]:
    """"train"/"val"/"test" per position, whole `block_m` blocks at a time.

    Blocks are ordered by a seeded hash of their index; in that order they fill the test
    split up to `test_share` of the positions, then val up to `val_share`, and the rest
    train. So no block spans two splits, and each share overshoots by at most one block.
    Raises ValueError for shares that leave no training share.
    """
    if val_share < 0 or test_share < 0 or val_share + test_share >= 1:
        raise ValueError(f"val_share={val_share} and test_share={test_share} leave no training share")
    blocks, block_of = np.unique(spatial_blocks(tx_latlon, block_m=block_m), axis=0, return_inverse=True)
    sizes = np.bincount(block_of.reshape(-1), minlength=len(blocks))
    order = sorted(range(len(blocks)), key=lambda b: _block_hash(seed, *blocks[b]))
    targets = (("test", test_share * len(block_of)), ("val", (test_share + val_share) * len(block_of)))
    block_split, filled = [""] * len(blocks), 0
    for b in order:
        block_split[b] = next((name for name, target in targets if filled < target), "train")
        filled += sizes[b]
    return [block_split[b] for b in block_of.reshape(-1)]


def _block_hash(seed: int, east: int, north: int) -> bytes:
    return hashlib.sha256(f"{BLOCK_SALT}:{seed}:{east}:{north}".encode()).digest()


def import_powder(root_uri: str, *, variant: str = "all", dataset_id: str | None = None, version: int = 1,
                  samples_per_capture: int = 64, block_m: float = 250.0, seed: int = 0, pin_splits: bool = True,
                  credentials: S3Credentials | None = None, csv_path: Path | str = POWDER_DIR / CSV_FILE,
                  coords_path: Path | str = POWDER_DIR / COORDS_FILE) -> str:
    """Write POWDER as `<root>/<dataset_id>/v<version>` (default id `powder-<variant>`); return its URI.

    Every session is labelled and, with `pin_splits`, pinned to its `blocked_split`. Raises ValueError for an
    unknown variant or a malformed file, plus whatever `write_dataset_version` raises
    (FileExistsError for a committed version, StorageUnavailable from the store).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} is not one of {sorted(VARIANTS)}")
    data = load_powder(csv_path, coords_path)
    if VARIANTS[variant] is not None:
        data = data.select(VARIANTS[variant])
    splits = blocked_split(data.tx_latlon, block_m=block_m, seed=seed) if pin_splits else [None] * len(data.session_ids)
    return write_dataset_version(
        root_uri, dataset_id=dataset_id or f"powder-{variant}", version=version, parent_version=None,
        center_frequency_hz=CENTER_FREQUENCY_HZ, sample_rate_hz=SAMPLE_RATE_HZ,
        samples_per_capture=samples_per_capture, receivers=data.receivers,
        sessions=_sessions(data, splits, samples_per_capture, seed), shard_size=SHARD_SESSIONS,
        credentials=credentials)


def _sessions(data: PowderData, splits: list[str | None], samples: int, seed: int) -> Iterator[SessionRecord]:
    for i, session_id in enumerate(data.session_ids):
        row = int(session_id.rpartition("-")[2])  # seeds by CSV row, so a session's noise never changes
        iq = capture_at_power(data.rss_db[i], samples, np.random.default_rng((seed, row)))
        iq[~data.online[i]] = 0
        latitude, longitude = data.tx_latlon[i]
        yield SessionRecord(
            session_id=session_id, time=data.times[i], split=splits[i], online=data.online[i].copy(), iq=iq,
            emitter=(float(latitude), float(longitude), GROUND_ALTITUDE_M + HANDHELD_HEIGHT_M))


def capture_at_power(power_dbm: np.ndarray, samples: int, rng: np.random.Generator) -> np.ndarray:
    """complex64 [R, samples] Gaussian noise whose 10·log10(mean|x|²) is exactly `power_dbm` [R]."""
    draw = rng.standard_normal((len(power_dbm), samples, 2))
    drawn_mw = np.einsum("rsc,rsc->r", draw, draw) / samples
    draw *= np.sqrt(10.0 ** (np.asarray(power_dbm, dtype=np.float64) / 10.0) / drawn_mw)[:, None, None]
    return (draw[..., 0] + 1j * draw[..., 1]).astype(np.complex64)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m training.datasets.powder ROOT [--variant seven]`: import by hand, print the version URI."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root_uri")
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="all")
    parser.add_argument("--version", type=int, default=1)
    arguments = parser.parse_args(argv)
    print(import_powder(arguments.root_uri, variant=arguments.variant, version=arguments.version))


if __name__ == "__main__":
    main()
