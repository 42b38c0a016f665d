"""A dataset version that passed every check: the session index in RAM, samples read from the cache.

`training.datasets.reader` builds it once the whole version is verified; training, evaluation,
export and registration read sessions from it, one at a time or a batch at a time.

Samples are read with `pread` into the caller's array, not through memory maps: every page of
a memory map that an epoch touches counts in the process's resident set (RssFile) for as long
as the map is open, so a job's peak RSS grew with the dataset (+72 MB at 10,000 sessions of
128 samples, +358 MB at 50,000). Read pages stay in the kernel's page cache, outside the RSS.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import BinaryIO, Sequence

import numpy as np

from training.datasets.manifest import SPLITS, Manifest, Receiver
from training.datasets.splits import DatasetSplit
from foundation.errors import StorageUnavailable

OPEN_FILES_MAX = 128  # data files kept open per process; each holds a file descriptor
CHUNK_SESSIONS = 256  # sessions read at once by `chunks`: bounds one [chunk, R, S, 2] float32 array


class VerifiedDataset:
    """A version that passed every check: a session index (axis N) over receivers (axis R).

    Only the index lives in RAM; samples are read from the cache's files, opened lazily in
    each process (open files are dropped when pickled into a DataLoader worker).
    """

    def __init__(self, *, manifest: Manifest, uri: str, session_ids: np.ndarray, split: DatasetSplit,
                 emitter: np.ndarray, online: np.ndarray, shard_of: np.ndarray, row_of: np.ndarray,
                 data_files: np.ndarray):
        self.manifest, self.uri = manifest, uri
        self.receivers: list[Receiver] = list(manifest.receivers)  # their order is the receiver axis R
        self.session_ids = session_ids  # [N] str
        self.split = split  # how the sessions were split (`training.datasets.splits`): the card records it
        self.splits = split.names  # [N] "train", "val" or "test"
        self.emitter = emitter  # [N, 3] latitude, longitude, altitude_m; NaN when unlabelled
        self.labelled = ~np.isnan(emitter[:, 0])  # [N] bool
        self.online = online  # [N, R] bool
        self.rx_position = np.array([[r.latitude, r.longitude, r.altitude_m] for r in self.receivers],
                                    dtype=np.float32).reshape(-1, 3)  # [R, 3]
        self._shard_of, self._row_of, self._data_files = shard_of, row_of, data_files
        self._row_bytes = manifest.samples_per_capture * 2 * 4  # one capture: S cf32 samples
        self._open: OrderedDict[str, BinaryIO] = OrderedDict()
        self._reading = threading.Lock()  # a job reads from two threads: its baselines beside its export

    def __len__(self) -> int:
        return len(self.session_ids)

    def __getstate__(self) -> dict:
        state = {**self.__dict__, "_open": OrderedDict()}  # open files (and their lock) are per process
        del state["_reading"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _reading=threading.Lock())

    def indices(self, split: str, labelled_only: bool = True) -> np.ndarray:
        """The sessions a model uses in `split`: labelled and outside the spatial buffer; with
        `labelled_only=False`, every session the split holds, unlabelled and buffered ones too."""
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {SPLITS}")
        chosen = self.splits == split
        return np.flatnonzero(chosen & self.labelled & ~self.split.buffered if labelled_only else chosen)

    def sessions_digest(self, indices: Sequence[int] | np.ndarray) -> str:
        """SHA-256 naming the content of these sessions, in order: equal digests, equal samples and labels.

        Cached data files are named by their SHA-256, so the file names with each session's file
        and row stand for the samples; online masks, labels and receiver positions are hashed as is.
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        digest = hashlib.sha256("\n".join(os.path.basename(f) for f in self._data_files.ravel()).encode())
        for part in (self._shard_of[indices], self._row_of[indices], self.online[indices], self.emitter[indices],
                     self.rx_position):
            digest.update(np.ascontiguousarray(part).tobytes())
        return digest.hexdigest()

    def read_session(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(iq float32 [R, S, 2], online float32 [R]); offline receivers' iq is zeros."""
        iq = np.zeros((len(self.receivers), self.manifest.samples_per_capture, 2), dtype=np.float32)
        self._fill(int(i), iq)
        return iq, self.online[i].astype(np.float32)

    def read_many(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(iq float32 [B, R, S, 2], online float32 [B, R])."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        iq = np.zeros((len(indices), len(self.receivers), self.manifest.samples_per_capture, 2), dtype=np.float32)
        for row, i in enumerate(indices):
            self._fill(int(i), iq[row])
        return iq, self.online[indices].astype(np.float32)

    def model_inputs(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The model's inputs for these sessions, float32: (iq [B, R, S, 2], online [B, R], rx_position [B, R, 3])."""
        iq, online = self.read_many(indices)
        rx = np.ascontiguousarray(np.broadcast_to(self.rx_position, (len(online), *self.rx_position.shape)))
        return iq, online, rx

    def chunks(self, indices: Sequence[int] | np.ndarray,
               size: int = CHUNK_SESSIONS) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """(chunk indices, iq, online, rx_position) for `indices` in order, `size` sessions at a time,
        so that scoring many sessions holds one chunk's samples in memory."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        for start in range(0, len(indices), size):
            chunk = indices[start : start + size]
            yield (chunk, *self.model_inputs(chunk))

    def _fill(self, i: int, out: np.ndarray) -> None:
        """Read session `i`'s online captures into `out` [R, S, 2] (C-contiguous float32)."""
        offset = int(self._row_of[i]) * self._row_bytes
        for receiver in np.flatnonzero(self.online[i]):
            path = self._data_files[self._shard_of[i], receiver]
            with self._reading:  # no other thread closes the file (`_file`'s LRU) while it is read
                read = os.preadv(self._file(path).fileno(), [out[receiver]], offset)
            if read != self._row_bytes:
                raise StorageUnavailable(f"{path} is shorter than when it was verified: changed in the cache "
                                         "(the next open fetches it again)", stage="data")
            if sys.byteorder == "big":  # the files are little-endian cf32
                out[receiver].byteswap(inplace=True)

    def _file(self, path: str) -> BinaryIO:
        """One data file, opened once per process; least recently used ones are closed. Under `_reading`."""
        file = self._open.pop(path, None)
        if file is None:
            file = open(path, "rb", buffering=0)
            if len(self._open) >= OPEN_FILES_MAX:
                self._open.popitem(last=False)[1].close()
        self._open[path] = file
        return file
