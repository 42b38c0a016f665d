"""The drifted receiver: its gain changes from the newer version on, and the bench's second model trains on that alone."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from foundation.settings import Settings
from foundation.train_config import TrainConfig
from training.bench.drift import without_older_sessions
from training.bench.oracle import ChannelModel
from training.bench.scenarios import scenario
from training.datasets.synth import receiver_calibration_db, session_truths, synthesize_dataset
from training.pipeline import open_dataset

SESSIONS = 400  # the change at session 200: the scenario's share


def test_the_drifted_receivers_gain_changes_from_the_newer_version_on_and_the_oracle_knows_the_newer_one():
    cfg = scenario("drifted-receiver", sessions=SESSIONS)
    assert cfg.drift_from_session == SESSIONS // 2
    model = ChannelModel.from_synth(cfg)
    shift = np.zeros(len(model.calibration_db))
    shift[cfg.drift_receiver] = cfg.drift_db
    np.testing.assert_allclose(receiver_calibration_db(cfg) - receiver_calibration_db(cfg, drifted=False), shift)
    for truth in session_truths(cfg):
        older = truth.index < cfg.drift_from_session
        assert (truth.split == "train") if older else truth.split is None  # the older version trains only
        mean = model.mean_offset_db(*truth.transmitter[:2]) + truth.eirp_dbm - (shift if older else 0.0)
        np.testing.assert_allclose(truth.signal_dbm - truth.shadowing_db, mean, atol=1e-9)
        np.testing.assert_allclose(truth.noise_dbm - model.receiver_noise_dbm, -shift if older else 0.0, atol=1e-9)


def test_a_drift_needs_its_change_inside_the_sessions():
    with pytest.raises(ValueError, match="drift_from_session"):
        replace(scenario("drifted-receiver"), drift_from_session=0)


def test_the_post_drift_view_keeps_only_the_older_sessions_out_of_training(tmp_path):
    cfg = replace(scenario("drifted-receiver", sessions=SESSIONS), samples_per_capture=64, dataset_id="drift-test")
    data = open_dataset(Settings(state_dir=tmp_path), TrainConfig(), synthesize_dataset(cfg, str(tmp_path / "data")))
    index = np.array([int(s.rsplit("-", 1)[1]) for s in data.session_ids])
    alone = without_older_sessions(data, cfg)
    train, newer_train = data.indices("train"), alone.indices("train")
    assert (index[train] < cfg.drift_from_session).any()  # the model trains on both versions
    np.testing.assert_array_equal(newer_train, train[index[train] >= cfg.drift_from_session])
    for split in ("val", "test"):
        np.testing.assert_array_equal(alone.indices(split), data.indices(split))
        assert (index[data.indices(split)] >= cfg.drift_from_session).all()
    assert len(data.indices("train")) == len(train)  # the dataset itself is unchanged
