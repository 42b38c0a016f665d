"""`heimdall-training` (`python -m cli`) as a user runs it: one process per command, no HEIMDALL_*
setting from the developer's shell."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "cli"]
TINY_FLAGS = ["--preset", "tiny", "--epochs", "3", "--batch_size", "32"]


def run_cli(args: list[str], state: Path, timeout_s: float = 300, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HEIMDALL_")}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout_s,
                          env={**clean, "HEIMDALL_STATE_DIR": str(state), **env})
