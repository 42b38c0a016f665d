"""The classical baselines' scores, kept between jobs: `<cache_dir>/baselines/<key>.npz`.

Scoring the baselines (the censored channel fit, the kNN tuning and the ML grid search) is a
pure function of the sessions of the three splits and of the baselines' code, and it is the
slowest part of evaluating a model. A retrain of the same dataset version with another
configuration, or the retry of a job that failed after evaluation, finds the same scores here
instead of computing them again. The key covers the sessions' content (`sessions_digest`), the
setup and the source of every module the scores depend on, so a change to any of them is a miss.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from training.datasets.verified import VerifiedDataset

# The modules whose code decides the scores (`training.evaluation` and what it calls).
SCORING_MODULES = ("training.evaluation", "training.baselines.power", "training.baselines.grid_search",
                   "training.baselines.knn", "training.path_loss", "training.metrics",
                   "training.geodesy", "training.datasets.channel")


def baselines_key(data: VerifiedDataset, test_idx: np.ndarray, setup) -> str:
    """SHA-256 of what the baselines' scores depend on: sessions, setup, code."""
    digest = hashlib.sha256(repr(setup).encode())
    for indices in (data.indices("train"), data.indices("val"), test_idx):
        digest.update(data.sessions_digest(indices).encode())
    for name in SCORING_MODULES:
        digest.update(Path(importlib.import_module(name).__file__).read_bytes())
    return digest.hexdigest()


def load(cache_dir: Path, key: str) -> tuple[dict[str, dict], dict[str, np.ndarray]] | None:
    """(metrics, errors) kept under `key`, or None; an unreadable entry is removed and counts as a miss."""
    path = cache_dir / "baselines" / f"{key}.npz"
    try:
        with np.load(path, allow_pickle=False) as stored:
            metrics = json.loads(str(stored["metrics"]))
            return metrics, {name: stored[f"errors/{name}"] for name in metrics}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError):
        path.unlink(missing_ok=True)
        return None


def store(cache_dir: Path, key: str, metrics: dict[str, dict], errors: dict[str, np.ndarray]) -> None:
    """Keep the scores under `key`; written whole or not at all (a rename), so readers never see half."""
    folder = cache_dir / "baselines"
    folder.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            np.savez(out, metrics=np.array(json.dumps(metrics)), **{f"errors/{name}": errors[name] for name in metrics})
        os.replace(partial, folder / f"{key}.npz")
    finally:
        Path(partial).unlink(missing_ok=True)
