"""`heimdall-training` as a user runs it: embedded mode, no servers, one process per command."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.support.cli import TINY_FLAGS, run_cli


def test_train_json_prints_one_object_with_everything_a_script_needs(synth_dataset, tmp_path):
    done = run_cli(["train", "--data_dir", str(synth_dataset), *TINY_FLAGS, "--json"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)  # the whole of stdout is one JSON object
    model = result["model"]
    onnx = Path(model["onnx"]["uri"].removeprefix("file://"))
    assert hashlib.sha256(onnx.read_bytes()).hexdigest() == model["onnx"]["sha256"]
    card = json.loads(Path(model["card_uri"].removeprefix("file://")).read_text())
    assert card["model_version"] == model["model_version"] == 1 and model["aliases"] == ["candidate", "champion"]
    assert set(result["metrics"]) >= {"median_error_m", "p90_error_m", "mean_error_m", "coverage_1sigma",
                                      "coverage_2sigma", "coverage_95", "nll"}
    assert set(result["baselines"]) == {"weighted_centroid", "ml_grid_search", "knn"}
    assert result["mlflow"]["tracking_uri"] == f"sqlite:///{tmp_path}/mlflow.db"
    log_lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert log_lines and all(line["job_id"] == result["job_id"] for line in log_lines)
    assert [line["event"] for line in log_lines if line.get("event") == "progress"], "no progress lines"


def test_train_summary_names_model_card_run_metrics_and_ui(synth_dataset, tmp_path):
    done = run_cli(["train", "--data_dir", str(synth_dataset), *TINY_FLAGS, "--run_name_prefix", "nightly",
                    "--experiment_name", "cli-test"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    for expected in ("model.onnx", "model.json", "mlflow run", "weighted_centroid", "ml_grid_search",
                     f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db"):
        assert expected in done.stdout
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("cli-test")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_name.startswith("nightly-cli-tiny-v1-")


def test_a_corrupt_dataset_fails_at_the_data_stage_and_registers_nothing(synth_dataset, tmp_path):
    import shutil

    broken = tmp_path / "broken" / "cli-tiny" / "v1"
    shutil.copytree(synth_dataset, broken)
    data_file = next(broken.glob("shards/000000/*.sigmf-data"))
    data_file.chmod(0o644)
    with open(data_file, "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02\x03")
    done = run_cli(["train", "--data_dir", str(broken), *TINY_FLAGS], tmp_path / "state")
    assert done.returncode == 1
    assert "data failed" in done.stderr and "sha256" in done.stderr and data_file.name in done.stderr
    assert not (tmp_path / "state" / "store").exists()
    assert not (tmp_path / "state" / "mlflow.db").exists()


def test_a_misspelt_setting_is_refused_at_start_up(synth_dataset, tmp_path):
    done = run_cli(["train", "--data_dir", str(synth_dataset)], tmp_path, HEIMDALL_MODELS_URL="s3://x")
    assert done.returncode == 2 and "HEIMDALL_MODELS_URL" in done.stderr


def test_export_only_needs_a_checkpoint(synth_dataset, tmp_path):
    done = run_cli(["train", "--data_dir", str(synth_dataset), "--export_only"], tmp_path)
    assert done.returncode == 1 and "--export_only needs --checkpoint" in done.stderr


@pytest.mark.parametrize(("flags", "named"), [
    (["--scenario", "powder-seven", "--sessions", "3000"], "powder-seven"),
    (["--scenario", "nw-italy-2m", "--sessions", "10"], "at least 100"),
    (["--scenario", "nw-italy-2m", "--seeds", "0"], "--seeds 0"),
    (["--scenario", "nw-italy-2m", "--preset", "radio-mapp"], "radio-map-learned"),
])
def test_bench_refuses_a_session_count_for_real_data_and_says_why(tmp_path, flags, named):
    """Nothing is measured and no report is written: the flags are checked before any data is made."""
    done = run_cli(["bench", *flags, "--out", str(tmp_path / "reports")], tmp_path / "state")
    assert done.returncode == 2 and named in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "reports").exists() and not (tmp_path / "state" / "bench").exists()
