"""`bench` end to end on a shrunken scenario: every method scored on the same test sessions."""

from __future__ import annotations

from service.bench.runner import run_scenario
from service.config import TrainConfig
from service.settings import Settings

TINY = TrainConfig(preset="tiny", epochs=2, batch_size=32, min_labelled_sessions=20)


def test_bench_scores_model_oracle_bound_and_baselines_and_writes_the_report(tmp_path):
    settings = Settings(state_dir=tmp_path / "state")
    run = run_scenario(settings, "nw-italy-2m", quick=True, out_dir=tmp_path / "reports", config=TINY, sessions=200)

    assert set(run.rows) == {"model", "oracle", "cramer_rao", "weighted_centroid", "ml_grid_search", "knn"}
    tested = run.sessions["test"]
    assert all(len(errors) == tested for errors in run.errors.values())
    # the oracle is the best estimate there is on average: a 2-epoch tiny model must not beat it
    assert run.rows["oracle"]["median_error_m"] < run.rows["model"]["median_error_m"]
    assert run.rows["oracle"]["nll"] < run.rows["model"]["nll"]
    for key in ("coverage_1sigma", "coverage_68", "coverage_2sigma", "coverage_95", "sigma_error_spearman"):
        assert key in run.rows["model"] and key in run.rows["oracle"]
    report = (tmp_path / "reports" / "nw-italy-2m" / "report.md").read_text()
    assert "Model median ÷ oracle median" in report and "## Targets" in report
    for png in ("results.png", "reliability.png"):
        assert (tmp_path / "reports" / "nw-italy-2m" / png).stat().st_size > 10_000
    assert run.timings["train_sessions_per_s"] > 0 and run.timings["eval_sessions_per_s"] > 0
