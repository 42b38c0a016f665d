"""Data loading for `python -m tests.bench.speed`: peak RSS against dataset size, loader against model.

Peak RSS is the real `heimdall-training train` child's, from `os.wait4` (the largest resident set
of it and the DataLoader workers it waited for). Rates are measured in this process with the
job's own loader (`training.fit.build_loaders`) and a train step of the job's module.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RSS_SIZES = (10_000, 50_000)  # sessions
RSS_SAMPLES = 128  # samples per capture: small, so that writing 50,000 sessions stays fast
RATE_SESSIONS = 3000  # the demo's dataset: 7 receivers x 1024 samples
STEPS = 7  # timed train steps or loader passes; the median of the last 5 (two warm up)


def clean_env(state_dir: Path) -> dict[str, str]:
    """This environment without the developer's HEIMDALL_* settings; the embedded mode in `state_dir`."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("HEIMDALL_")},
            "HEIMDALL_STATE_DIR": str(state_dir)}


def dataset(root: Path, dataset_id: str, sessions: int, samples: int) -> str:
    """A synthetic dataset version below `root` (`heimdall-training synth`), written once and reused."""
    version = root / dataset_id / "v1"
    if not (version / "dataset.json").is_file():
        done = subprocess.run([sys.executable, "-m", "cli", "synth", "--out", str(root), "--dataset_id",
                               dataset_id, "--sessions", str(sessions), "--samples_per_capture", str(samples),
                               "--shard_size", "5000", "--log-format", "json"], env=clean_env(root), capture_output=True)
        if done.returncode != 0:
            raise RuntimeError(f"synth {dataset_id} exited {done.returncode}:\n{done.stderr.decode()[-3000:]}")
    return str(version)


def train_peak_rss(data_uri: str, state_dir: Path, *, epochs: int = 2, batch_size: int = 512) -> dict:
    """Run a tiny training job as a child process; its peak RSS (MB) and wall time (s).

    Raises RuntimeError when the job fails (its stderr tail in the message).
    """
    cmd = [sys.executable, "-m", "cli", "train", "--data_dir", data_uri, "--preset", "tiny",
           "--epochs", str(epochs), "--batch_size", str(batch_size), "--json"]
    log = state_dir / f"train-{Path(data_uri).parent.name}.log"
    state_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, env=clean_env(state_dir), stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
    return {"peak_rss_mb": usage.ru_maxrss / 1024, "wall_s": time.monotonic() - started}


def peak_rss_rows(root: Path, state_dir: Path) -> list[dict]:
    rows = []
    for sessions in RSS_SIZES:
        uri = dataset(root, f"speed-rss-{sessions // 1000}k", sessions, RSS_SAMPLES)
        rows.append({"sessions": sessions, **train_peak_rss(uri, state_dir)})
    return rows


def _median_rate(sessions: int, seconds: list[float]) -> float:
    return sessions / statistics.median(seconds[2:])


def loader_rate(loader) -> float:
    """Sessions/s of the DataLoader alone: median over passes of the first 10 batches of an epoch."""
    times, sessions = [], 0
    for _ in range(STEPS):
        started = time.perf_counter()
        batches = iter(loader)
        sessions = sum(len(next(batches)["iq"]) for _ in range(10))
        times.append(time.perf_counter() - started)
    return _median_rate(sessions, times)


def model_rate(module, batch: dict, device: str) -> float:
    """Sessions/s of the job's train step (receiver dropout, β-NLL, backward, clipping, AdamW)."""
    import torch

    from training.fit import drop_receivers

    module = module.to(device).train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=module.hparams.learning_rate)
    batch = {k: v.to(device) for k, v in batch.items()}
    times = []
    for _ in range(STEPS):
        started = time.perf_counter()
        step = {**batch, "rx_online": drop_receivers(batch["rx_online"], module.hparams.receiver_dropout)}
        loss = module._nll(step, module.hparams.beta)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return _median_rate(len(batch["iq"]), times)


def rate_rows(root: Path, state_dir: Path) -> list[dict]:
    """Loader and model sessions/s with the job's defaults (`small` on this CPU; `large` too on a GPU)."""
    import torch

    from foundation.train_config import TrainConfig
    from foundation.settings import Settings
    from training.fit import build_loaders
    from training.neural.builder import new_module
    from training.pipeline import open_dataset

    uri = dataset(root, "speed-rates-3k", RATE_SESSIONS, 1024)
    rows = []
    presets = [("small", "cpu")] + ([("large", "cuda")] if torch.cuda.is_available() else [])
    for preset, device in presets:
        config = TrainConfig(preset=preset)
        data = open_dataset(Settings(state_dir=state_dir), config, uri)
        train, _ = build_loaders(data, config)
        loader = loader_rate(train)
        model = model_rate(new_module(data, config), next(iter(train)), device)
        rows.append({"preset": preset, "device": device, "batch_size": config.batch_size,
                     "num_workers": config.num_workers, "loader_per_s": loader, "model_per_s": model})
    return rows
