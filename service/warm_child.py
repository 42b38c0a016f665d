"""The warm spare's entry point: `python -m service.warm_child`.

It imports the training stack (torch, Lightning, MLflow, ONNX) once, while no job waits for it,
then reads one line on stdin, the job's `heimdall-training` arguments as a JSON list, and runs
exactly what `python -m service.cli <arguments>` would run, in this process. Started with
arguments of its own (Lightning's DDP launcher re-executes `sys.argv` for the other ranks), it
runs them at once. An empty stdin (the service went away) ends it without doing anything.
"""

from __future__ import annotations

import json
import sys


def preload() -> None:
    import mlflow  # noqa: F401
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    import pytorch_lightning  # noqa: F401
    import torch  # noqa: F401

    from service.training import evaluation, export, fit, pipeline, registry  # noqa: F401


def main() -> int:
    from service.cli import main as cli_main

    if len(sys.argv) > 1:
        return cli_main(sys.argv[1:])
    preload()
    line = sys.stdin.readline()
    if not line.strip():
        return 0
    arguments = json.loads(line)
    sys.argv = [sys.argv[0], *arguments]  # what a DDP launcher re-executes for the other ranks
    return cli_main(arguments)


if __name__ == "__main__":
    sys.exit(main())
