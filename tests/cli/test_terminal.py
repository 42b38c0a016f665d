"""What a person at a terminal sees: stage lines and a progress bar on a TTY, JSON elsewhere,
no known noise, user-facing help, and an MLflow UI command that works as printed.

The terminal is a real pseudo-terminal (`pty`): the CLI sees `isatty()` true, as under tmux.
"""

from __future__ import annotations

import json
import logging
import os
import pty
import re
import shlex
import shutil
import subprocess
import threading
import urllib.request
import warnings
from io import StringIO
from pathlib import Path

import pytest

from foundation.logs import NOISY_LOG_LINES, HumanHandler, configure_logging, progress_text
from tests.support.cli import CLI, run_cli
from tests.support.servers import free_port, running, wait_until

TINY_FLAGS = ["--preset", "tiny", "--epochs", "2", "--batch_size", "32"]


def run_on_tty(args: list[str], state: Path) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal; return (exit code, stdout, what the terminal got)."""
    master, slave = pty.openpty()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HEIMDALL_")}, "HEIMDALL_STATE_DIR": str(state)}
    proc = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=slave, env=env, text=True)
    os.close(slave)
    chunks: list[bytes] = []

    def drain():
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    stdout, _ = proc.communicate(timeout=600)
    reader.join(timeout=30)
    os.close(master)
    return proc.returncode, stdout, b"".join(chunks).decode(errors="replace")


def run_piped(args: list[str], state: Path) -> subprocess.CompletedProcess:
    return run_cli(args, state, timeout_s=600)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("datasets")
    done = run_piped(["synth", "--out", str(root), "--sessions", "200", "--samples_per_capture", "256",
                      "--dataset_id", "tty-tiny", "--seed", "5"], root)
    assert done.returncode == 0, done.stderr
    return root / "tty-tiny" / "v1"


@pytest.fixture(scope="module")
def trained_on_tty(dataset, tmp_path_factory) -> tuple[Path, str, str]:
    state = tmp_path_factory.mktemp("state")
    code, stdout, terminal = run_on_tty(["train", "--data_dir", str(dataset), *TINY_FLAGS], state)
    assert code == 0, terminal[-3000:]
    return state, stdout, terminal


def test_train_on_a_terminal_shows_stage_lines_a_progress_bar_and_no_json(trained_on_tty):
    _, stdout, terminal = trained_on_tty
    lines = [line.strip() for line in re.split(r"[\r\n]+", terminal) if line.strip()]
    for stage in ("verifying dataset", "training", "evaluating", "exporting", "registering"):
        assert any(line.startswith(stage) for line in lines), (stage, lines)
    assert "\r\x1b[K  epoch 1/2 [" in terminal and "  epoch 2/2 [" in terminal  # one bar, redrawn in place
    assert not [line for line in lines if line.startswith("{")], "JSON log lines on a terminal"
    assert "version 1 registered" in stdout and "model.onnx" in stdout


def test_known_noise_does_not_reach_the_terminal(trained_on_tty):
    _, _, terminal = trained_on_tty
    for noise in ("torchvision is not installed", "LeafSpec", "GPU available", "exists and is not empty"):
        assert noise not in terminal


def test_the_printed_mlflow_ui_command_works_without_the_venv_on_path(trained_on_tty, tmp_path):
    state, stdout, _ = trained_on_tty
    command = re.search(r"open the MLflow UI:\s+(.+)", stdout).group(1)
    port = free_port()
    url = f"http://127.0.0.1:{port}/api/2.0/mlflow/registered-models/get?name=heimdall-localization"
    found = {}

    def model_is_there() -> bool:
        with urllib.request.urlopen(url, timeout=5) as reply:
            found.update(json.load(reply)["registered_model"])
        return True

    with running([*shlex.split(command), "--port", str(port)], {"PATH": "/usr/bin:/bin"},
                 tmp_path / "ui.log") as proc:
        wait_until(model_is_there, "mlflow ui", 420, proc, tmp_path / "ui.log")
    assert found["name"] == "heimdall-localization"
    assert {a["alias"] for a in found["aliases"]} == {"candidate", "champion"}
    assert str(state) in found["latest_versions"][0]["source"]


def test_synth_shows_a_bar_on_a_terminal_and_json_lines_through_a_pipe(tmp_path):
    args = ["synth", "--out", str(tmp_path / "d"), "--sessions", "100", "--samples_per_capture", "256"]
    code, stdout, terminal = run_on_tty(args, tmp_path)
    assert code == 0 and stdout.startswith("file://")
    assert "\r\x1b[K  sessions 100/100 [" in terminal and "{" not in terminal
    piped = run_piped([*args[:2], str(tmp_path / "e"), *args[3:]], tmp_path)
    progress = [json.loads(line) for line in piped.stderr.splitlines() if '"progress"' in line]
    assert [(p["done"], p["total"]) for p in progress] == [(n, 100) for n in range(2, 101, 2)]


def test_log_format_json_wins_over_a_terminal(tmp_path):
    code, _, terminal = run_on_tty(["synth", "--log-format", "json", "--out", str(tmp_path), "--sessions", "20",
                                    "--samples_per_capture", "256"], tmp_path)
    lines = [line for line in terminal.splitlines() if line.strip()]
    assert code == 0 and lines and all(json.loads(line)["logger"].startswith(("cli.", "training.", "foundation.")) for line in lines)


def test_help_speaks_to_users():
    done = subprocess.run([*CLI, "--help"], capture_output=True, text=True, check=True)
    assert "Imports stay lazy" not in done.stdout and "progress bar" in done.stdout
    train = subprocess.run([*CLI, "train", "--help"], capture_output=True, text=True, check=True)
    assert "--log-format {auto,human,json}" in train.stdout


@pytest.fixture
def root_logging():
    """configure_logging replaces the root handlers: put pytest's back afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    with warnings.catch_warnings():
        yield
    root.handlers[:], level = saved
    root.setLevel(level)
    logging.captureWarnings(False)


def test_noise_is_filtered_by_its_exact_message_only(root_logging, monkeypatch):
    out = StringIO()
    configure_logging("job-1", stream=out)
    onnx_registration = logging.getLogger(next(iter(NOISY_LOG_LINES)))
    # torch's logging set-up (on an earlier export) gives the `torch` loggers handlers of their own
    # and stops propagation there; the filter acts either way, but this test reads the root's stream
    name = onnx_registration.name
    for ancestor in [name.rsplit(".", depth)[0] for depth in range(name.count(".") + 1)]:
        for attribute, value in (("propagate", True), ("disabled", False), ("handlers", [])):
            monkeypatch.setattr(logging.getLogger(ancestor), attribute, value)
    monkeypatch.setattr(onnx_registration, "level", logging.NOTSET)
    onnx_registration.warning("torchvision is not installed. Skipping torchvision::%s", "nms")
    onnx_registration.warning("torchvision is not installed. Skipping torchvision::nms, and something else")
    warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use something else", FutureWarning)
    warnings.warn("a real deprecation", FutureWarning)
    lines = [json.loads(line)["msg"] for line in out.getvalue().splitlines()]
    assert len(lines) == 2, lines
    assert "something else" in lines[0] and "a real deprecation" in lines[1]


def test_human_lines_go_one_per_line_when_the_stream_is_not_a_terminal(root_logging):
    out = StringIO()
    configure_logging("job-1", stream=out, human=True)
    log = logging.getLogger("training.fit")
    log.info("progress", extra={"fields": {"event": "progress", "epoch": 3, "max_epochs": 6, "eta_s": 65,
                                           "metrics": {"val_median_error_m": 1234.0}}})
    logging.getLogger("pytorch_lightning").info("GPU available: False")
    log.warning("disk almost full")
    width = min(shutil.get_terminal_size().columns, 100)
    assert out.getvalue().splitlines() == [progress_text({"epoch": 3, "max_epochs": 6, "eta_s": 65,
                                                          "metrics": {"val_median_error_m": 1234.0}}, width),
                                           "warning: disk almost full"]
    assert "val error 1.23 km  ETA 1:05" in out.getvalue() and isinstance(logging.getLogger().handlers[0],
                                                                           HumanHandler)
