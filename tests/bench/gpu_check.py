"""Benchmark: the learned radio map's fit on a GPU against the same fit on the CPU (issue 22).

    .venv/bin/python -m tests.bench.gpu_check [--sessions 100000] [--area-km 300] [--out reports/gpu.md]
    bash deploy/gpu-check.sh          # the same, from a fresh machine with a GPU

One synthetic deployment (a random layout of 12 receivers over `--area-km` square, 2 m band, 12 dB
directional antennas so there is something to learn) is written once below `--datasets`. The family's
fit (`radio-map-learned`: the closed form, then the Lightning fit of its corrections) runs on the CPU,
on one GPU, and with DDP on two GPUs when there are two, each for `--epochs` epochs without early
stopping. `reports/gpu.md` gets, per run: wall time of the fit, training sessions per second through the
Lightning epochs, and, sampled by `nvidia-smi` every 0.5 s, the GPU utilisation and memory.

Lightning re-runs this module in each extra DDP process; those fit and write nothing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from foundation.settings import Settings
from foundation.train_config import TrainConfig
from training.datasets.synth import SynthConfig, synthesize_dataset
from training.family import FitRun
from training.pipeline import open_dataset
from training.radio_map import learned_builder
from training.tracking import TrackingRun


def deployment(sessions: int, area_km: float) -> SynthConfig:
    return SynthConfig(sessions=sessions, seed=22, dataset_id=f"gpu-check-{sessions}-{area_km:g}km",
                       samples_per_capture=256, receiver_layout="random", random_receivers_min=12,
                       random_receivers_max=12, random_area_m=area_km * 1000.0, antenna_front_to_back_db=12.0)


@dataclass
class GpuSamples:
    """`nvidia-smi` read every 0.5 s while a fit runs: utilisation % and memory MiB of every GPU."""

    utilisation: list[float] = field(default_factory=list)
    memory_mib: list[float] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.wait(0.5):
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, check=False).stdout
            for line in out.strip().splitlines():
                busy, memory = (float(v) for v in line.split(","))
                self.utilisation.append(busy)
                self.memory_mib.append(memory)


def timed_fit(settings: Settings, uri: str, config: TrainConfig, name: str) -> dict | None:
    data = open_dataset(settings, config, uri)
    tracking = TrackingRun.start(settings.mlflow_tracking_uri, "gpu-check", settings.mlflow_artifacts_uri,
                                 run_name=name, tags={})
    samples = GpuSamples()
    sampler = threading.Thread(target=samples.run, daemon=True)
    if config.accelerator == "gpu":
        sampler.start()
    started = time.monotonic()
    fitted = learned_builder.fit(data, config, FitRun(settings.state_dir / "gpu-check" / name, None, tracking))
    wall = time.monotonic() - started
    samples.stop.set()
    if not fitted.is_global_zero:
        return None
    busy = sorted(samples.utilisation) or [float("nan")]
    return {"run": name, "train_sessions": int(len(data.indices("train"))), "epochs": fitted.epochs_run,
            "wall_s": wall, "lightning_s": fitted.fit_s,
            "sessions_per_s": len(data.indices("train")) * fitted.epochs_run / max(fitted.fit_s, 1e-9),
            "gpu_util_median": busy[len(busy) // 2], "gpu_util_max": busy[-1],
            "gpu_memory_max_mib": max(samples.memory_mib, default=float("nan"))}


def write_report(rows: list[dict], cfg: SynthConfig, out: Path) -> None:
    lines = [f"# The learned radio map's fit: GPU against CPU ({time.strftime('%Y-%m-%d %H:%M')})", "",
             f"`python -m tests.bench.gpu_check --sessions {cfg.sessions} --area-km {cfg.random_area_m / 1000:g}`: "
             f"{cfg.sessions} synthetic sessions, 12 random receivers over {cfg.random_area_m / 1000:g} km, "
             f"{torch.cuda.device_count()} GPU(s): {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}.",
             "", "| run | train sessions | epochs | fit wall s | Lightning s | sessions/s | GPU util median / max % | GPU memory max MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gpu = ("– | –" if r["run"] == "cpu" else
               f"{r['gpu_util_median']:.0f} / {r['gpu_util_max']:.0f} | {r['gpu_memory_max_mib']:.0f}")
        lines.append(f"| {r['run']} | {r['train_sessions']} | {r['epochs']} | {r['wall_s']:.1f} | {r['lightning_s']:.1f} | "
                     f"{r['sessions_per_s']:.0f} | {gpu} |")
    cpu = next((r for r in rows if r["run"] == "cpu"), None)
    for r in rows:
        if cpu and r is not cpu:
            lines.append(f"\n{r['run']}: {r['sessions_per_s'] / cpu['sessions_per_s']:.1f}× the CPU's sessions per second.")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--area-km", type=float, default=300.0)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--datasets", type=Path, default=Path(".heimdall/gpu-check"))
    parser.add_argument("--out", type=Path, default=Path("reports/gpu.md"))
    args = parser.parse_args()
    cfg = deployment(args.sessions, args.area_km)
    uri = str(args.datasets / cfg.dataset_id / "v1")
    if not Path(uri, "dataset.json").is_file() and os.environ.get("LOCAL_RANK") is None:
        synthesize_dataset(cfg, str(args.datasets))
    settings = Settings()
    base = TrainConfig(preset="radio-map-learned", epochs=args.epochs, patience=args.epochs + 1,
                       batch_size=args.batch_size)
    child = os.environ.get("LOCAL_RANK") is not None  # an extra DDP process Lightning started: the DDP run only
    gpus = torch.cuda.device_count()
    runs = [] if child else [("cpu", "cpu", "1")] + [("gpu", "gpu", "1")] * (gpus >= 1)
    runs += [("gpu-ddp-2", "gpu", "2")] * (gpus >= 2)
    rows = [row for name, accelerator, devices in runs
            if (row := timed_fit(settings, uri, base.model_copy(update={"accelerator": accelerator, "devices": devices}),
                                 name)) is not None]
    if not child:
        write_report(rows, cfg, args.out)
        print(args.out.read_text())


if __name__ == "__main__":
    main()
