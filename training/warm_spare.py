"""The warm spare's entry point: `python -m training.warm_spare`.

It imports the training stack (torch, Lightning, MLflow, ONNX) once, while no job waits for it,
says so on stderr (`SPARE_READY`, which the service turns into its `warm_spare_ready` gauge),
then reads one line on stdin, the job's `heimdall-training` arguments as a JSON list, and runs
exactly what `python -m cli.main <arguments>` would run, in this process. Started with
arguments of its own (Lightning's DDP launcher re-executes `sys.argv` for the other ranks), it
runs them at once. An empty stdin (the service went away) ends it without doing anything.
"""

from __future__ import annotations

import json
import sys


def preload() -> None:
    """What every job imports or builds once per process, done before the job arrives: the
    training stack, the exporter's (onnxscript, onnx_ir), S3's service model (boto3 loads it
    with the first client) and the SigMF schema's validator."""
    import boto3
    import mlflow  # noqa: F401
    import onnx  # noqa: F401
    import onnx_ir  # noqa: F401
    import onnxruntime  # noqa: F401
    import onnxscript  # noqa: F401
    import pytorch_lightning  # noqa: F401
    import torch  # noqa: F401

    from training.datasets.checks import sigmf_validator
    from training import (  # noqa: F401
        calibration, card, checkpoint_sync, evaluation, export, export_cache, fit, pipeline, plots, registry,
    )

    boto3.client("s3", region_name="us-east-1", endpoint_url="http://127.0.0.1:9")  # no request is made
    sigmf_validator()


def main() -> int:
    from cli.main import main as cli_main
    from service.runner.child_process import SPARE_READY

    if len(sys.argv) > 1:
        return cli_main(sys.argv[1:])
    preload()
    sys.stderr.write(SPARE_READY + "\n")
    sys.stderr.flush()
    line = sys.stdin.readline()
    if not line.strip():
        return 0
    arguments = json.loads(line)
    sys.argv = [sys.argv[0], *arguments]  # what a DDP launcher re-executes for the other ranks
    return cli_main(arguments)


if __name__ == "__main__":
    from cli.main import exit_now

    exit_now(main())
