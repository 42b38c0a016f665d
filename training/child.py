"""The training child's entry point: `python -m training --spec FILE [--protocol-fd N]`.

A plain command: give it a `JobSpec` file and it runs the recipe (`pipeline.run_job`), reporting to
the service on the protocol pipe when it was given one (`foundation.child_protocol`). With `--warm`
it is a warm spare: it imports the training stack while no job waits, says `SpareReady`, then
reads its `JobSpec` as one line on stdin (an empty stdin, the service gone, ends it).

The job runs from a spec file whatever way it came, and `sys.argv` names that file: Lightning's DDP
launcher re-executes `sys.argv` for the other ranks, so every rank runs the same job (`pin_spec`).
A rank the launcher started has no protocol pipe; only the process the service started reports.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import threading
from pathlib import Path

from foundation.child_protocol import (Failed, Failure, Heartbeat, JobSpec, Result, SpareReady, channel,
                                       open_channel, write_spec)
from foundation.errors import HeimdallError, JobInterrupted
from foundation.exit_codes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, die_with_parent
from foundation.logs import configure_logging, log_event
from foundation.settings import Settings, load_settings

log = logging.getLogger(__name__)
HEARTBEAT_S = 5.0  # the service takes a child that says nothing for `child_silence_s` for stopped or stuck


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--spec", type=Path, help="the job: a JobSpec as JSON")
    source.add_argument("--warm", action="store_true", help="import first, then read the JobSpec as one stdin line")
    parser.add_argument("--protocol-fd", type=int, help="write protocol messages to this inherited pipe")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    die_with_parent()  # the service's child already does (set before exec); a DDP rank dies with rank zero
    settings = load_settings()
    configure_logging(None)
    open_channel(args.protocol_fd)
    if args.warm:
        preload()
        channel().send(SpareReady())
        line = sys.stdin.readline()
        if not line.strip():
            return EXIT_OK
        spec = JobSpec.model_validate_json(line)
    else:
        spec = JobSpec.model_validate_json(args.spec.read_text())
    configure_logging(spec.job_id)
    pin_spec(settings, spec, leading=[])
    return report(settings, spec)


def pin_spec(settings: Settings, spec: JobSpec, *, leading: list[str]) -> Path:
    """Write the spec beside the job's checkpoints and make `sys.argv` run exactly it: what DDP
    re-executes for the other ranks (`leading` is the subcommand, `train` for the command line)."""
    path = write_spec(spec, (spec.checkpoint_dir or settings.job_checkpoint_dir(spec.job_id)) / "job-spec.json")
    sys.argv[1:] = [*leading, "--spec", str(path)]
    return path


def report(settings: Settings, spec: JobSpec) -> int:
    """Run the job and tell the service how it ended: a Result, or a Failed with its stage."""
    try:
        with beating(), contextlib.redirect_stdout(sys.stderr):  # stdout is log text too (MLflow prints links)
            from training.pipeline import run_job  # a cold child's heavy imports: beating already

            result = run_job(settings, spec)
    except JobInterrupted as exc:
        log_event(log, "interrupted", stage=exc.stage, message=exc.message)
        return EXIT_INTERRUPTED
    except HeimdallError as exc:
        failure = Failure.of(exc)
        log_event(log, "failed", **failure.model_dump())
        channel().send(Failed(failure=failure))
        return EXIT_FAILED
    except Exception as exc:  # a bug, not a bad input: keep the traceback for whoever fixes it
        log.exception("failed", extra={"fields": {"event": "failed", "stage": "train"}})
        channel().send(Failed(failure=Failure.of(exc)))
        return EXIT_FAILED
    if result is not None:  # None on the DDP ranks other than zero
        channel().send(Result(result=result))
    return EXIT_OK


@contextlib.contextmanager
def beating():
    """A Heartbeat every HEARTBEAT_S while the job runs: a stopped or frozen process stops beating."""
    stop = threading.Event()

    def beat_until_stopped():
        while not stop.wait(HEARTBEAT_S):
            channel().send(Heartbeat())

    beat = threading.Thread(target=beat_until_stopped, name="heartbeat", daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()


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

    from training import (  # noqa: F401
        calibration, card, checkpoint_sync, evaluation, export, export_cache, families, fit, pipeline, plots, registry,
    )
    from training.datasets.checks import sigmf_validator

    boto3.client("s3", region_name="us-east-1", endpoint_url="http://127.0.0.1:9")  # no request is made
    sigmf_validator()
