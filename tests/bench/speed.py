"""Benchmark: fast where users wait (issue 10). Job start, work after `fit`, data loading, inference.

    .venv/bin/python -m tests.bench.speed [--jobs 5] [--datasets .heimdall/bench-speed] [--out reports/speed.md]
    .venv/bin/python -m tests.bench.speed --part serve --part steps   # only the tiny-job parts

`--part` (repeatable: serve, steps, rss, rates, inference, areas) runs only those parts and prints what
they measured as JSON; `reports/speed.md` is written only by a run of every part.

Measures, side by side in one run, and writes `reports/speed.md`:
- peak RSS of the real `train` child at 10,000 and 50,000 synthetic sessions (`speed_data`);
- loader against model sessions/s with the job's defaults (`speed_data`);
- the served default model (the radio map) fitted at two training-set sizes and exported as a job
  does: ONNX Runtime at batch 1 and 64 beside PyTorch eager, file size, cells (`speed_inference`);
- the same on a 300 × 300 km deployment (2 km cells, coarse to fine) and a 3 × 3 km campus (`areas`);
- the tiny job through `serve` (`service_latency`): `dataset.ready` → `model.registered`
  minus `trainer.fit`, and the child's start, with the warm spare on and off;
- the seconds of each step of the tiny `train --json` job, from the "ts" of its stage lines.
Times are medians of at least 5 runs; the goals are ratios, because this machine is shared, but
issue 22's for inference, which are milliseconds and megabytes.
Synthetic datasets are written once below `--datasets` and reused by later runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

from foundation.settings import Settings
from tests.bench.service_latency import run_jobs, servers, tiny_datasets
from tests.bench.speed_data import clean_env, peak_rss_rows, rate_rows
from tests.bench.speed_inference import inference_rows
from tests.bench.speed_report import write_report
from tests.support.service_stack import TINY_TRAINING

# The job's stage lines, in order; each step is the time from the previous line to this one.
STAGE_LINES = ("dataset verified", "started", "fitted", "calibrated", "exported", "evaluated", "registered")


def warm_spare_setting() -> bool:
    """Whether this service has the warm spare (HEIMDALL_WARM_SPARE); an unknown variable would stop `serve`."""
    return "warm_spare" in Settings.model_fields


def service_rows(tmp: Path, s3, url: str, postgres, uris: list[str]) -> dict[str, list[dict]]:
    """The tiny jobs through `serve`, one at a time: with the warm spare and without it (when it exists)."""
    modes = {"warm": {"HEIMDALL_WARM_SPARE": "true"}, "cold": {"HEIMDALL_WARM_SPARE": "false"}} \
        if warm_spare_setting() else {"cold": {}}
    return {mode: run_jobs(tmp / f"stack-{mode}", s3, url, postgres, uris, env) for mode, env in modes.items()}


def profile_env(state_dir: Path, s3, url: str) -> dict[str, str]:
    """A `train` child against the benchmark's servers, as the service's child runs (models in S3, mlflow server)."""
    name = f"speed-{uuid.uuid4().hex[:6]}"
    return {**clean_env(state_dir), "HEIMDALL_MLFLOW_TRACKING_URI": url, "HEIMDALL_MODEL_NAME": name,
            "HEIMDALL_MODELS_URI": f"s3://heimdall-models/{name}", "HEIMDALL_S3__ENDPOINT_URL": s3.endpoint_url,
            "HEIMDALL_S3__ACCESS_KEY_ID": s3.access_key_id, "HEIMDALL_S3__SECRET_ACCESS_KEY": s3.secret_access_key}


def stage_times(stderr: str) -> dict[str, float]:
    """Epoch seconds of each stage line in a job's JSON log (stderr of `train --json`)."""
    times = {}
    for line in stderr.splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("msg") in STAGE_LINES and entry["msg"] not in times:
                times[entry["msg"]] = datetime.fromisoformat(entry["ts"].replace("Z", "+00:00")).timestamp()
    return times


def profile_job(uri: str, env: dict[str, str], seed: int) -> dict[str, float]:
    """One tiny `train --json` child: seconds from its spawn to each stage line's predecessor.

    A new seed per job makes a new configuration, so each job trains and registers a version.
    Raises RuntimeError when the job fails.
    """
    flags = [f"--{key}={value}" for key, value in {**TINY_TRAINING, "seed": seed}.items()]
    spawned = time.time()
    done = subprocess.run([sys.executable, "-m", "cli", "train", "--data_dir", uri, *flags, "--json"],
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"tiny train exited {done.returncode}:\n{done.stderr[-3000:]}")
    times = stage_times(done.stderr)
    missing = [line for line in STAGE_LINES if line not in times]
    if missing:
        raise RuntimeError(f"tiny train logged no {missing} line")
    previous, steps = spawned, {}
    for line in STAGE_LINES:
        steps[line], previous = times[line] - previous, times[line]
    return {**steps, "total": previous - spawned}


def profile_rows(tmp: Path, s3, url: str, uri: str, jobs: int) -> list[dict]:
    env = profile_env(tmp / "profile-state", s3, url)
    return [profile_job(uri, env, seed) for seed in range(jobs)]


def timed(what: str, run, walls: dict[str, float], partial: Path):
    """Run one part, note its wall time, and keep what is measured so far (`partial`, JSON) for a look mid-run."""
    started = time.monotonic()
    print(f"[bench_speed] {what} ...", flush=True)
    result = run()
    walls[what] = time.monotonic() - started
    print(f"[bench_speed] {what}: {walls[what]:.0f} s", flush=True)
    with open(partial, "a") as out:
        out.write(json.dumps({"part": what, "wall_s": walls[what], "result": result}) + "\n")
    return result


PARTS = ("serve", "steps", "rss", "rates", "inference", "areas")


def run_parts(parts: list[str], root: Path, jobs: int, walls: dict[str, float]) -> dict:
    """The chosen parts, in the order of PARTS; each part's wall time goes in `walls`."""
    results, partial = {}, root / "partial-results.jsonl"
    partial.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if {"serve", "steps"} & set(parts):
            with servers(tmp / "servers") as (s3, url, postgres):
                uris = tiny_datasets(s3, jobs)
                if "serve" in parts:
                    results["service"] = timed("tiny jobs through serve",
                                               lambda: service_rows(tmp, s3, url, postgres, uris), walls, partial)
                if "steps" in parts:
                    results["profile"] = timed("tiny job steps", lambda: profile_rows(tmp, s3, url, uris[0], jobs),
                                               walls, partial)
        if "rss" in parts:
            results["rss"] = timed("peak RSS at 10k and 50k sessions", lambda: peak_rss_rows(root, tmp / "rss"),
                                   walls, partial)
        if "rates" in parts:
            results["rates"] = timed("loader and model rates", lambda: rate_rows(root, tmp / "rates"), walls, partial)
        if "inference" in parts:
            results["inference"] = timed("the served model's inference at two training-set sizes",
                                         lambda: inference_rows(root, tmp / "inference"), walls, partial)
        if "areas" in parts:
            results["areas"] = timed("the served model's inference on a 300 km and a 3 km deployment",
                                     lambda: inference_rows(root, tmp / "areas", areas=True), walls, partial)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=5, help="tiny jobs per service mode and in the profile (>= 5)")
    parser.add_argument("--datasets", type=Path, default=Path(".heimdall/bench-speed"),
                        help="where the synthetic datasets are written once and reused")
    parser.add_argument("--out", type=Path, default=Path("reports/speed.md"))
    parser.add_argument("--part", action="append", choices=PARTS,
                        help="run only this part (repeatable); the report is written only when every part runs")
    args = parser.parse_args()
    parts = args.part or list(PARTS)
    started, walls = time.monotonic(), {}
    root = args.datasets.resolve()
    root.mkdir(parents=True, exist_ok=True)
    results = run_parts(parts, root, args.jobs, walls)
    walls["total"] = time.monotonic() - started
    if set(parts) == set(PARTS):
        print(write_report(results, walls, args.out, cores=os.cpu_count()))
        print(f"[bench_speed] wall time {walls['total']:.0f} s; report {args.out}")
    else:
        print(json.dumps({"results": results, "wall_s": walls}, indent=1))
        print(f"[bench_speed] parts {parts}: wall time {walls['total']:.0f} s; {args.out} left as it is")


if __name__ == "__main__":
    main()
