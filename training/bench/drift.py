"""The drifted-receiver scenario's second model: the same preset fitted on the newer version's sessions alone.

Issue 22's goal for a receiver whose gain changes between dataset versions: the model trained on the
new version (its older sessions, from before the change, included) should be within
`RECOVERY_GOAL` of a model fitted on the sessions recorded after the change alone. The scenario pins
the older sessions to train (`SynthConfig.drift_from_session`), so val and test hold only newer
ones; here the older sessions are kept out of training too (as the spatial buffer keeps sessions
out), the split is otherwise the same, and the second model is scored on the same test sessions as
the first: row `model_post_drift_only`.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np

from training.bench.fitting import train_for_bench

RECOVERY_GOAL = 1.02  # the model's median error at most this times the post-drift-only model's
POST_DRIFT_ONLY = "model_post_drift_only"


def without_older_sessions(data, cfg):
    """A view of `data` whose training split keeps out the sessions from before the drift."""
    index = np.array([int(session_id.rsplit("-", 1)[1]) for session_id in data.session_ids])
    alone = copy.copy(data)
    alone.split = replace(data.split, buffered=data.split.buffered | (index < cfg.drift_from_session))
    return alone


def score_post_drift_only(run, settings, data, cfg, config, workdir: Path, test_idx, true) -> None:
    """Fit the preset on the post-drift sessions alone, score it on the test split, and say how the model compares."""
    from training.calibration import calibration_report
    from training.evaluation import predict
    from training.metrics import localization_errors_m, localization_metrics

    alone = without_older_sessions(data, cfg)
    net, tracking, fit_info = train_for_bench(settings, alone, config, f"{run.scenario}-seed{run.seed}-post-drift-only",
                                              workdir / "post-drift-only")
    tracking.finish("FINISHED")
    pred, cov = predict(net, data, test_idx)
    run.rows[POST_DRIFT_ONLY] = {**localization_metrics(pred, cov, true), **calibration_report(pred, cov, true)}
    run.errors[POST_DRIFT_ONLY] = localization_errors_m(pred, true)
    ratio = run.rows["model"]["median_error_m"] / run.rows[POST_DRIFT_ONLY]["median_error_m"]
    newer = len(alone.indices("train"))
    run.notes.append(
        f"drifted receiver: receiver {cfg.drift_receiver}'s gain changed by {cfg.drift_db:+g} dB from session "
        f"{cfg.drift_from_session} on. The model (trained on {run.sessions['train']} sessions, "
        f"{run.sessions['train'] - newer} of them older) against {POST_DRIFT_ONLY} (the same preset on the {newer} "
        f"newer training sessions alone, {fit_info['epochs']} epochs): median {ratio:.3f}× (goal ≤ {RECOVERY_GOAL:g}×).")
