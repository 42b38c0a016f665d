"""Which split (train, val or test) a session belongs to.

The split is a pure function of the session id, never of the session's position in a
dataset, so a session keeps its split when a later version of the dataset adds sessions:
a model evaluated on version k+1's test set has never trained on any of them.
"""

from __future__ import annotations

import hashlib

from training.datasets.manifest import SPLITS

# Changing the salt reshuffles every session of every dataset: never change it.
SPLIT_SALT = b"heimdall.split/1\x00"
_UNIT = float(1 << 64)


def split_unit(session_id: str) -> float:
    """A stable, uniformly distributed number in [0, 1) drawn from the session id."""
    digest = hashlib.sha256(SPLIT_SALT + session_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / _UNIT


def assign_split(session_id: str, *, validation_split: float, test_split: float, pinned: str | None = None) -> str:
    """"train", "val" or "test" for one session; a `heimdall:split` pin wins.

    Raises ValueError for shares outside [0, 1) that leave no room for training, or an
    unknown pinned split.
    """
    if pinned is not None:
        if pinned not in SPLITS:
            raise ValueError(f"pinned split {pinned!r} is not one of {SPLITS}")
        return pinned
    if validation_split < 0 or test_split < 0 or validation_split + test_split >= 1:
        raise ValueError(f"validation_split={validation_split} and test_split={test_split} leave no training share")
    unit = split_unit(session_id)
    if unit < test_split:
        return "test"
    if unit < test_split + validation_split:
        return "val"
    return "train"
