"""`heimdall-training bench`: how close a trained model gets to what physics allows.

For one named scenario and one seed, every number comes from one run on the same test sessions: the model,
the Bayesian oracle and the Cramér-Rao bound on the RMSE of unbiased estimators (synthetic scenarios, where
the generating model is known), and the classical baselines (weighted centroid, maximum-likelihood grid
search with the exponent fitted on the training split, kNN on received power). The report is Markdown plus
PNG figures, written to a folder and logged to MLflow.

Every scenario runs once per seed in `BENCH_SEEDS`, and the summary shows each headline figure
as the median over seeds with its range. A seed changes everything that is drawn: the training
seed, and the data (synthetic: the generator's seed, so other sessions and, for random-70cm,
another layout; POWDER: which blocks are held out). Seed 0 is the scenario as defined.

The split is the service's: datasets are opened through `pipeline.open_dataset`, so the default
spatial split (`training.datasets.splits`: blocks sized from the receivers, a buffer, drawn from
the dataset id) decides train, val and test. POWDER is imported without its importer's pins for
that, and each seed's import has its own dataset id, so each seed holds out other blocks.

Size: one scenario's run from its dataset to its report, step by step (train, score the
model, the baselines and the oracle, log).
"""

from __future__ import annotations

import logging
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from foundation.train_config import TrainConfig
from training.bench.fitting import train_for_bench
from training.evaluation import BaselineSetup, predict
from foundation.logs import log_event
from foundation.settings import Settings

log = logging.getLogger(__name__)
POWDER_VARIANTS = {"powder-all": "all", "powder-seven": "seven"}
# POWDER: a 3 km campus; RSS -101 dB is the "not heard" floor of its receivers.
BENCH_SEEDS = (0, 1, 2)
SYNTH_SEED_STRIDE = 1000  # seed k generates from the scenario's own seed + k · stride
POWDER_BASELINES = BaselineSetup(noise_floor_dbm=-101.0, detection_margin_db=0.5, grid_step_m=20.0, grid_margin_m=300.0)


@dataclass
class BenchRun:
    scenario: str
    seed: int
    sessions: dict[str, int]
    rows: dict[str, dict] = field(default_factory=dict)  # method -> metrics
    errors: dict[str, np.ndarray] = field(default_factory=dict)
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    model_prediction: tuple[np.ndarray, np.ndarray] | None = None  # positions, covariances on the test split
    test_power: tuple[np.ndarray, np.ndarray] | None = None  # capture dBm and online mask on the test split
    compared: dict = field(default_factory=dict)  # the paired comparisons its report wrote (`report.comparisons`)


def scenario_names() -> list[str]:
    from training.bench.scenarios import SCENARIOS

    return [*SCENARIOS, *POWDER_VARIANTS]


def bench_sessions(name: str, quick: bool, sessions: int | None) -> int | None:
    """A synthetic scenario's session count: `sessions`, else `QUICK_SESSIONS` with --quick, else None
    (the scenario's own). None for POWDER, whose sessions are the measurements'."""
    from training.bench.scenarios import QUICK_SESSIONS

    return None if name in POWDER_VARIANTS else sessions or (QUICK_SESSIONS if quick else None)


def scenario_label(name: str, quick: bool, sessions: int | None) -> str:
    """The report folder's and the summary row's name: `nw-italy-2m`, or `nw-italy-2m-3000` with another
    session count (`--quick`: `nw-italy-2m-600`, beside the full run's report, not over it)."""
    count = bench_sessions(name, quick, sessions)
    return name if count is None else f"{name}-{count}"


def bench_config(quick: bool, preset: str | None = None) -> TrainConfig:
    """The service's default model (or `preset`), the same on every scenario; --quick trades accuracy for
    minutes (fewer sessions, and fewer epochs for a net trained by gradient descent)."""
    return TrainConfig(**({"epochs": 8} if quick else {}), **({"preset": preset} if preset else {}))


@dataclass
class ScenarioRuns:
    """One scenario over every seed."""

    scenario: str
    runs: list[BenchRun]
    wall_s: float
    revision: str  # the commit measured (`source_revision`)


def prepare_dataset(settings: Settings, name: str, quick: bool, sessions: int | None = None,
                    seed: int = 0) -> tuple[str, object | None]:
    """The scenario's dataset URI for `seed` (generated once, then reused) and its generator config (None for POWDER)."""
    from training.bench.scenarios import scenario
    from training.datasets.synth import synthesize_dataset

    root = settings.state_dir / "bench" / ("quick" if quick else "full")
    if name in POWDER_VARIANTS:
        from training.datasets.powder import import_powder

        dataset_id = f"{name}-seed{seed}"  # not the pinned imports' ids (`<name>`, `<name>-split<k>`) of old
        uri = f"{root}/{dataset_id}/v1"
        if not Path(uri, "dataset.json").is_file():
            import_powder(str(root), variant=POWDER_VARIANTS[name], dataset_id=dataset_id, samples_per_capture=256,
                          seed=seed, pin_splits=False)
        return uri, None
    cfg = scenario(name, sessions=bench_sessions(name, quick, sessions))
    dataset_id = f"{name}-{cfg.sessions}" + ("" if seed == 0 else f"-seed{seed}")
    cfg = replace(cfg, seed=cfg.seed + SYNTH_SEED_STRIDE * seed, dataset_id=dataset_id)
    uri = f"{root}/{dataset_id}/v1"
    if not Path(uri, "dataset.json").is_file():
        synthesize_dataset(cfg, str(root))
    return uri, cfg


def score_model(run: BenchRun, net, data, test_idx, true) -> None:
    from training.calibration import calibration_report, reliability_curve
    from training.metrics import localization_errors_m, localization_metrics

    started = time.monotonic()
    pred, cov = predict(net, data, test_idx)
    run.timings["eval_s"] = time.monotonic() - started
    run.rows["model"] = {**localization_metrics(pred, cov, true), **calibration_report(pred, cov, true)}
    run.errors["model"] = localization_errors_m(pred, true)
    run.curves["model"] = reliability_curve(pred, cov, true)
    run.model_prediction = (pred, cov)


def true_channel(cfg):
    """The generator's own channel as the ML grid search's model: exponent, σ (static field as iid) and offsets."""
    from training.datasets.synth import receiver_calibration_db, total_shadowing_sigma_db
    from training.path_loss import PathLossFit

    return PathLossFit(exponent=cfg.path_loss_exponent, residual_sigma_db=total_shadowing_sigma_db(cfg),
                       calibration_db=receiver_calibration_db(cfg), sessions_used=0, measurements_used=0,
                       censored_used=0, converged=True)


def score_baselines(run: BenchRun, data, test_idx, true, setup, cfg=None) -> None:
    from training.evaluation import score_baselines as score

    known = None if cfg is None else {"ml_true_params": true_channel(cfg)}
    baselines = score(data, test_idx, true, setup, known)
    run.rows.update(baselines.metrics)
    run.errors.update(baselines.errors)
    run.test_power = baselines.test_power
    fitted, knn = baselines.path_loss, baselines.knn
    run.notes.append(f"ML grid search: channel fitted on {fitted.sessions_used} training sessions by censored "
                     f"maximum likelihood: n = {fitted.exponent:.2f}, σ = {fitted.residual_sigma_db:.1f} dB, "
                     f"calibration offsets {np.array2string(fitted.calibration_db, precision=1)} dB.")
    run.notes.append(f"kNN tuned on the validation split (median {baselines.knn_val_median_m:.0f} m there): "
                     f"k = {knn.k}, {knn.weights} weights, {knn.metric} dB distance, offline receivers {knn.offline}.")
    if cfg is not None:
        run.notes.append("ml_true_params: the ML grid search under the generator's true n, σ and offsets "
                         "(separates the estimator from the fit).")


def score_oracle(run: BenchRun, cfg, true) -> None:
    from training.calibration import calibration_report, reliability_curve
    from training.bench.oracle import ChannelModel, crb_m, oracle_metrics, oracle_posterior
    from training.datasets.synth import receivers_for, transmitter_area

    power, online = run.test_power
    model = ChannelModel.from_synth(cfg)
    started = time.monotonic()
    result = oracle_posterior(power, online, model, area=transmitter_area(receivers_for(cfg), cfg.area_margin_m))
    run.timings["oracle_s"] = time.monotonic() - started
    bound = crb_m(true, online, model)
    run.rows["oracle"] = {**oracle_metrics(result, true, crb_m=bound),
                          **calibration_report(result.mean_latlon, result.cov_m2, true)}
    run.errors["oracle"] = result.errors_m(true)
    run.curves["oracle"] = reliability_curve(result.mean_latlon, result.cov_m2, true)
    # a bound on each session's RMSE over unbiased estimators, not an error: named so, and kept out of the error table
    run.rows["cramer_rao"] = {"crb_rmse_median_m": float(np.median(bound)),
                              "crb_rmse_p90_m": float(np.percentile(bound, 90)),
                              "crb_rmse_rms_m": float(np.sqrt(np.mean(np.square(bound))))}
    if cfg.static_shadowing_sigma_db > 0:
        run.notes.append("static-shadowing: the oracle knows only the iid part of the generating model "
                         f"(σ_total = {np.hypot(cfg.shadowing_sigma_db, cfg.static_shadowing_sigma_db):.1f} dB as iid); "
                         "a model may beat it here only by learning the fixed per-receiver field.")
    if cfg.antenna_front_to_back_db > 0:
        run.notes.append(f"directional: the oracle knows each receiver's antenna pattern ({cfg.antenna_front_to_back_db:g} dB "
                         "front to back, its boresight); the Cramér-Rao bound ignores it.")


def run_scenario(settings: Settings, name: str, *, quick: bool, out_dir: Path, config: TrainConfig | None = None,
                 sessions: int | None = None, seeds: tuple[int, ...] = BENCH_SEEDS) -> ScenarioRuns:
    """Every seed of one scenario, each reported in `<out_dir>/<label>/seed-<k>/`, plus the scenario's
    report across seeds (`scenario_label`: the name, with the session count when not the scenario's own).
    `config`, `sessions` and `seeds` shrink it for tests."""
    from training.bench.report import write_scenario_report

    started = time.monotonic()
    runs = [run_seed(settings, name, seed, quick=quick, out_dir=out_dir, config=config, sessions=sessions)
            for seed in seeds]
    label = scenario_label(name, quick, sessions)
    result = ScenarioRuns(label, runs, time.monotonic() - started, source_revision())
    write_scenario_report(result, out_dir / label)
    return result


SOURCE_PATHSPECS = (":/cli", ":/foundation", ":/messages", ":/service", ":/training")  # the code a report measures


def source_revision(checkout: Path = Path(__file__).parent) -> str:
    """The checkout's short commit, `-dirty` when the code differs from it (the reports the bench writes
    do not count); "unknown" outside a git checkout."""
    def git(*args) -> str:
        return subprocess.run(["git", *args], cwd=checkout, capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", *SOURCE_PATHSPECS,
                      ":/pyproject.toml")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if changed else "")


def run_seed(settings: Settings, name: str, seed: int, *, quick: bool, out_dir: Path,
             config: TrainConfig | None = None, sessions: int | None = None) -> BenchRun:
    """Prepare, train, score and report one scenario at one seed."""
    from training.bench.report import write_report
    from training.pipeline import open_dataset

    started = time.monotonic()
    uri, cfg = prepare_dataset(settings, name, quick, sessions, seed)
    config = (config or bench_config(quick)).model_copy(update={"seed": seed})
    data = open_dataset(settings, config, uri)
    test_idx = data.indices("test")
    true = data.emitter[test_idx, :2].astype(np.float64)
    label = scenario_label(name, quick, sessions)
    run = BenchRun(label, seed, {**{s: int(len(data.indices(s))) for s in ("train", "val", "test")},
                                 "buffered": int(data.split.buffered.sum())})
    run.timings["prepare_s"] = time.monotonic() - started
    workdir = out_dir / label / f"seed-{seed}"
    workdir.mkdir(parents=True, exist_ok=True)
    log_event(log, "bench scenario", scenario=name, seed=seed, sessions=run.sessions)
    net, tracking, fit_info = train_for_bench(settings, data, config, f"{label}-seed{seed}", workdir)
    run.timings.update({k: v for k, v in fit_info.items() if k.endswith("_s")})
    run.notes.append(split_note(data.split.facts()))
    run.notes.append(f"Model: preset {config.preset}, {fit_info['epochs']} epochs run, post-hoc covariance scale "
                     f"{fit_info['covariance_scale']:.3f} (fitted on {run.sessions['val']} validation sessions).")
    score_model(run, net, data, test_idx, true)
    if cfg is not None and cfg.drift_db:
        from training.bench.drift import score_post_drift_only
        score_post_drift_only(run, settings, data, cfg, config, workdir, test_idx, true)
    if cfg is None:
        score_baselines(run, data, test_idx, true, POWDER_BASELINES)
    else:
        setup = replace(BaselineSetup.for_dataset(data), grid_margin_m=cfg.area_margin_m)  # the oracle's area
        score_baselines(run, data, test_idx, true, setup, cfg)
        score_oracle(run, cfg, true)
    run.timings["total_s"] = time.monotonic() - started
    run.timings["train_sessions_per_s"] = run.sessions["train"] * fit_info["epochs"] / max(fit_info["fit_s"], 1e-9)
    run.timings["eval_sessions_per_s"] = run.sessions["test"] / max(run.timings["eval_s"], 1e-9)
    paths = write_report(run, data, workdir)
    log_to_mlflow(tracking, run, paths)
    return run


def split_note(facts: dict) -> str:
    """One line of the report on how the sessions were split (`DatasetSplit.facts`)."""
    return (f"Split: the service's default, {facts['method']} of {facts['block_m']:g} m with a "
            f"{facts['buffer_m']:g} m buffer ({facts['pinned_sessions']} sessions pinned by the dataset).")


def log_to_mlflow(tracking, run: BenchRun, paths: list[Path]) -> None:
    tracking.log_metrics({**{f"{method}_{key}": float(value) for method, metrics in run.rows.items()
                             for key, value in metrics.items() if np.isfinite(value)},
                          **{f"timing_{key}": float(value) for key, value in run.timings.items()}})
    for path in paths:
        tracking.log_artifact(path, "bench")
    tracking.finish("FINISHED")
