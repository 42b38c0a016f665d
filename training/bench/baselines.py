"""`python -m training.bench.baselines --scenario powder-all`: the classical baselines alone, over seeds.

The same datasets, splits and baselines as `heimdall-training bench` (`runner.prepare_dataset`,
`evaluation.score_baselines`), without training a model: minutes where the full bench takes
hours on a busy CPU. Prints one Markdown row per scenario, each cell the median over seeds
(min–max), and the tuned kNN settings and fitted channel of every seed.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np

from training.bench.runner import BENCH_SEEDS, POWDER_BASELINES, prepare_dataset, scenario_names, true_channel
from foundation.train_config import TrainConfig
from foundation.settings import Settings

METHODS = ("weighted_centroid", "ml_grid_search", "ml_true_params", "knn")


def score_seed(settings: Settings, name: str, seed: int, quick: bool) -> tuple[dict[str, float], str]:
    """Median error (m) per baseline on the test split of `name` at `seed`, and a line saying what was fitted."""
    from training.evaluation import BaselineSetup, score_baselines
    from training.pipeline import open_dataset

    uri, cfg = prepare_dataset(settings, name, quick, seed=seed)
    data = open_dataset(settings, TrainConfig(), uri)
    test = data.indices("test")
    if cfg is None:
        setup, known = POWDER_BASELINES, None
    else:
        setup = replace(BaselineSetup.for_dataset(data), grid_margin_m=cfg.area_margin_m)
        known = {"ml_true_params": true_channel(cfg)}
    scored = score_baselines(data, test, data.emitter[test, :2].astype(np.float64), setup, known)
    fit, knn = scored.path_loss, scored.knn
    note = (f"{name} seed {seed}: n = {fit.exponent:.2f}, σ = {fit.residual_sigma_db:.1f} dB; kNN k = {knn.k}, "
            f"{knn.weights}, {knn.metric}, offline {knn.offline}; test sessions {len(test)}")
    return {method: row["median_error_m"] for method, row in scored.metrics.items()}, note


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", action="append", choices=scenario_names(), required=True)
    parser.add_argument("--quick", action="store_true", help="the --quick datasets (synthetic: 600 sessions)")
    args = parser.parse_args(argv)
    settings = Settings()
    print("| scenario | " + " | ".join(METHODS) + " | wall time |\n" + "|---" * (len(METHODS) + 2) + "|")
    notes = []
    for name in args.scenario:
        started = time.monotonic()
        medians = []
        for seed in BENCH_SEEDS:
            row, note = score_seed(settings, name, seed, args.quick)
            medians.append(row)
            notes.append(note)
        cells = []
        for method in METHODS:
            values = [row[method] for row in medians if method in row]
            cells.append("–" if not values else
                         f"{np.median(values):.0f} m ({min(values):.0f}–{max(values):.0f})")
        print(f"| {name} | " + " | ".join(cells) + f" | {(time.monotonic() - started) / 60:.1f} min |", flush=True)
    print("\n" + "\n".join(f"- {note}" for note in notes))


if __name__ == "__main__":
    main()
