"""The baselines' scores are computed once per sessions and code, then read back unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.datasets.reader import DatasetReader
from training.baselines import cache as baseline_cache
from training.evaluation import BaselineSetup, baseline_scores, evaluate
from training.neural.model import LocalizationNet


@pytest.fixture(scope="module")
def data(example_dataset, tmp_path_factory):
    reader = DatasetReader(str(example_dataset), cache_dir=tmp_path_factory.mktemp("cache"))
    return reader.open(validation_split=0.15, test_split=0.15, min_labelled_sessions=20)


@pytest.fixture(scope="module")
def net(data):
    return LocalizationNet(samples=data.manifest.samples_per_capture, preset="tiny").eval()


def scored(net, data, cache_dir: Path | None = None):
    return evaluate(net, data, baseline_scores(data, cache_dir))


def entries(cache_dir: Path) -> list[Path]:
    return sorted((cache_dir / "baselines").glob("*.npz"))


def test_cached_scores_equal_computed_ones_and_are_read_back(data, net, tmp_path):
    fresh = scored(net, data)
    first = scored(net, data, tmp_path)
    [entry] = entries(tmp_path)
    second = scored(net, data, tmp_path)
    for kept in (first, second):
        assert kept.baselines == fresh.baselines and list(kept.errors_by_method) == list(fresh.errors_by_method)
        assert all(np.array_equal(kept.errors_by_method[m], fresh.errors_by_method[m]) for m in fresh.errors_by_method)
    # Read back, not recomputed: a score written into the entry is what the next evaluation reports.
    metrics, errors = baseline_cache.load(tmp_path, entry.stem)
    metrics["knn"]["median_error_m"] = 12345.0
    baseline_cache.store(tmp_path, entry.stem, metrics, errors)
    assert scored(net, data, tmp_path).baselines["knn"]["median_error_m"] == 12345.0


def test_other_sessions_or_setup_make_another_key(data):
    test_idx = data.indices("test")
    setup = BaselineSetup.for_dataset(data)
    key = baseline_cache.baselines_key(data, test_idx, setup)
    assert key == baseline_cache.baselines_key(data, test_idx.copy(), setup)
    assert key != baseline_cache.baselines_key(data, test_idx[:-1], setup)
    assert key != baseline_cache.baselines_key(data, test_idx, BaselineSetup(setup.noise_floor_dbm, grid_step_m=500.0))


def test_a_damaged_entry_is_dropped_and_scored_again(data, net, tmp_path):
    fresh = scored(net, data, tmp_path)
    [entry] = entries(tmp_path)
    entry.write_bytes(b"not an npz")
    assert baseline_cache.load(tmp_path, entry.stem) is None and not entry.exists()
    assert scored(net, data, tmp_path).baselines == json.loads(json.dumps(fresh.baselines))
    assert entries(tmp_path) == [entry]
