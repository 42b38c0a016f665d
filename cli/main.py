"""`heimdall-training`: the command line of the training service.

  synth   write a synthetic dataset version (local folder or s3://)
  train   run the training job: data, model, fit, export, register
  bench   score a model against the Bayesian oracle and classical baselines, per scenario
  serve   the event-driven service: consume triggers, run jobs, publish events
  ops     publish a manual training.requested or training.cancel
  jobs    list the jobs, or show one job's timeline
  dead-letters  list the dead letters with their reasons, or re-drive them to their work queue

On a terminal, synth, train and bench show their stages and a progress bar; elsewhere (or
with --log-format json) they write JSON log lines on stderr. Results go to stdout.
"""

# Imports of the heavy libraries stay inside the commands: `--help` and the service's own
# commands never pay for torch.

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path

from foundation.child_protocol import Failure
from foundation.errors import HeimdallError, JobInterrupted
from foundation.exit_codes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, die_with_parent, exit_now
from foundation.logs import log_event, printable
from cli.dead_letters import add_dead_letters, run_dead_letters


def add_log_format(parser) -> None:
    parser.add_argument("--log-format", dest="log_format", choices=("auto", "human", "json"), default="auto",
                        help="auto (the default): stage lines and a progress bar on a terminal, JSON lines otherwise")


def setup_logging(args, job_id: str | None) -> None:
    from foundation.logs import configure_logging

    human = args.log_format == "human" or (
        args.log_format == "auto" and sys.stderr.isatty() and not getattr(args, "json", False))
    configure_logging(job_id, human=human)


def add_synth(sub) -> None:
    p = sub.add_parser("synth", help="write a seeded synthetic dataset version")
    add_log_format(p)
    p.add_argument("--out", required=True, help="dataset root: a folder, file:// or s3://bucket/prefix")
    p.add_argument("--dataset_id", default="synth-nw-italy")
    p.add_argument("--version", type=int, default=1)
    p.add_argument("--sessions", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples_per_capture", type=int, default=1024)
    p.add_argument("--path_loss_exponent", type=float, default=3.0)
    p.add_argument("--shadowing_sigma_db", type=float, default=6.0)
    p.add_argument("--offline_probability", type=float, default=0.05)
    p.add_argument("--shard_size", type=int, default=1000)


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train, export, check and register a model")
    add_log_format(p)
    job = p.add_mutually_exclusive_group(required=True)
    job.add_argument("--data_dir", help="dataset version: folder, file:// or s3://.../<id>/v<k>/")
    job.add_argument("--spec", type=Path, help="a whole job specification (JSON, foundation.child_protocol.JobSpec) "
                     "instead of the flags")
    add_config_flags(p)
    p.add_argument("--checkpoint_dir", type=Path)
    p.add_argument("--experiment_name", default="heimdall-localization")
    p.add_argument("--run_name_prefix", default="train")
    p.add_argument("--export_only", action="store_true", help="skip training; export --checkpoint")
    p.add_argument("--checkpoint", type=Path, help="a Lightning checkpoint to export or resume from")
    p.add_argument("--resume_training", action="store_true",
                   help="resume epoch, optimizer and scheduler from --checkpoint (default: <checkpoint_dir>/last.ckpt)")
    p.add_argument("--job_id", default=None)
    p.add_argument("--json", action="store_true",
                   help="print one JSON object instead of the summary (and, with --log-format auto, JSON logs)")


def add_bench(sub) -> None:
    p = sub.add_parser("bench", help="model vs the Bayesian oracle, the Cramér-Rao bound and classical baselines")
    add_log_format(p)
    p.add_argument("--scenario", action="append", help="a scenario name (repeatable); default: all of them")
    p.add_argument("--quick", action="store_true", help="synthetic scenarios at 600 sessions (and 8 epochs for a preset trained by "
                   "gradient), reported as <scenario>-600: minutes for a smoke run; POWDER is the same data either way")
    p.add_argument("--sessions", type=int, help="synthetic scenarios only: this many sessions instead of 6,000 "
                   "(the sample-efficiency checks use 3,000 and 20,000); reported as <scenario>-<N>")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per scenario (default 3)")
    p.add_argument("--out", type=Path, default=Path("reports/bench"), help="report folder")


def add_service(sub) -> None:
    p = sub.add_parser("serve", help="run the event-driven service")
    p.add_argument("--check", action="store_true", help="probe a running service's /healthz; exit 0 when healthy")
    ops = sub.add_parser("ops", help="manual triggers").add_subparsers(dest="action", required=True)
    request = ops.add_parser("request", help="publish training.requested")
    request.add_argument("--dataset_id", required=True)
    request.add_argument("--version", default="latest", help='a version number or "latest"')
    request.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                         help="a training parameter, e.g. epochs=50 (repeatable)")
    request.add_argument("--export_only", action="store_true")
    request.add_argument("--checkpoint_uri")
    request.add_argument("--resume_job_id")
    request.add_argument("--reason", required=True)
    cancel = ops.add_parser("cancel", help="publish training.cancel")
    cancel.add_argument("job_id")
    cancel.add_argument("--reason", required=True)
    jobs = sub.add_parser("jobs", help="follow the jobs").add_subparsers(dest="action", required=True)
    listing = jobs.add_parser("list", help="newest first: state, dataset, attempt, progress, age")
    listing.add_argument("--status", choices=("queued", "running", "succeeded", "failed", "cancelled"))
    listing.add_argument("--limit", type=int, default=50, help="at most this many jobs (default 50)")
    jobs.add_parser("show", help="one job's timeline, its model and its MLflow run").add_argument("job_id")


def add_config_flags(parser) -> None:
    """One flag per TrainConfig field (--epochs, --batch_size, ...): the configuration is declared once."""
    from typing import Literal, get_args, get_origin

    from foundation.train_config import TrainConfig

    for name, field in TrainConfig.model_fields.items():
        kind = field.annotation
        choices = get_args(kind) if get_origin(kind) is Literal else None
        parser.add_argument(f"--{name}", type=str if choices else kind, choices=choices,
                            help=f"default {field.default}")


def run_synth(args, settings) -> int:
    from training.datasets.synth import SynthConfig, synthesize_dataset

    setup_logging(args, None)
    cfg = SynthConfig(sessions=args.sessions, seed=args.seed, dataset_id=args.dataset_id,
                      samples_per_capture=args.samples_per_capture, path_loss_exponent=args.path_loss_exponent,
                      shadowing_sigma_db=args.shadowing_sigma_db, offline_probability=args.offline_probability,
                      shard_size=args.shard_size)
    uri = synthesize_dataset(cfg, args.out, version=args.version, credentials=settings.s3.credentials())
    print(uri)
    return 0


def job_spec_of(args):
    """The job the flags describe (or the one `--spec` names), as the child's JobSpec."""
    from foundation.child_protocol import JobSpec
    from foundation.train_config import TrainConfig

    if args.spec is not None:
        return JobSpec.model_validate_json(args.spec.read_text())
    config = TrainConfig(**{k: getattr(args, k) for k in TrainConfig.model_fields if getattr(args, k) is not None})
    return JobSpec(data_uri=args.data_dir, config=config, checkpoint_dir=args.checkpoint_dir,
                   experiment_name=args.experiment_name, run_name_prefix=args.run_name_prefix,
                   export_only=args.export_only, checkpoint=args.checkpoint, resume_training=args.resume_training,
                   **({"job_id": args.job_id} if args.job_id else {}))


def run_train(args, settings) -> int:
    from training.child import pin_spec
    from training.pipeline import run_job
    from training.summary import format_summary

    spec = job_spec_of(args)
    if os.environ.get("LOCAL_RANK", "0") != "0":  # a DDP rank Lightning started: it dies with rank zero
        die_with_parent()
    setup_logging(args, spec.job_id)
    pin_spec(settings, spec, leading=["train", *(["--json"] if args.json else [])])  # every DDP rank: this job
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the result alone (MLflow prints links)
        result = run_job(settings, spec)
    if result is not None:
        print(json.dumps(result) if args.json else format_summary(result))
    return 0


def run_bench(args, settings) -> int:
    from training.bench.runner import POWDER_VARIANTS, run_scenario, scenario_names
    from training.bench.report import write_summary

    setup_logging(args, None)
    names = args.scenario or scenario_names()
    unknown = sorted(set(names) - set(scenario_names()))
    if unknown:
        raise ValueError(f"unknown scenario(s) {unknown}; known: {scenario_names()}")
    real = sorted(set(names) & set(POWDER_VARIANTS))
    if args.sessions is not None and (real or args.sessions < 100):
        raise ValueError(f"--sessions {args.sessions}: " + (f"{real} are real measurements, whose session count is "
                         "theirs; give synthetic scenarios only" if real else "at least 100 sessions"))
    if args.seeds < 1:
        raise ValueError(f"--seeds {args.seeds}: at least 1")
    with contextlib.redirect_stdout(sys.stderr):
        for name in names:
            run_scenario(settings, name, quick=args.quick, out_dir=args.out, sessions=args.sessions,
                         seeds=tuple(range(args.seeds)))
    print(write_summary(args.out).read_text())
    return 0


def run_serve(args, settings) -> int:
    if args.check:
        from service.probes import check

        return check(settings.http_port)
    import asyncio

    from service.app import serve
    from foundation.logs import configure_logging

    configure_logging(None)
    return asyncio.run(serve(settings))  # 1 when a background task died: the supervisor restarts us


def run_ops(args, settings) -> int:
    from service import ops_commands

    if args.action == "request":
        event_id = ops_commands.request_training(
            settings, dataset_id=args.dataset_id, version=args.version, overrides=args.override, reason=args.reason,
            export_only=args.export_only, checkpoint_uri=args.checkpoint_uri, resume_job_id=args.resume_job_id)
    else:
        event_id = ops_commands.cancel_job(settings, job_id=args.job_id, reason=args.reason)
    print(event_id)
    return 0


def run_jobs(args, settings) -> int:
    from service import ops_commands

    shown = ops_commands.list_jobs(settings, args.status, args.limit) if args.action == "list" \
        else ops_commands.show_job(settings, args.job_id)
    if shown is None:
        print(f"no job {args.job_id}", file=sys.stderr)
        return EXIT_FAILED
    print(shown)
    return 0


COMMANDS = {"synth": run_synth, "train": run_train, "bench": run_bench, "serve": run_serve, "ops": run_ops,
            "jobs": run_jobs, "dead-letters": run_dead_letters}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="heimdall-training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add_synth(sub)
    add_train(sub)
    add_bench(sub)
    add_service(sub)
    add_dead_letters(sub)
    args = parser.parse_args(argv)
    from pydantic import ValidationError

    from foundation.settings import load_settings

    try:
        settings = load_settings()
        return COMMANDS[args.command](args, settings)
    except (ValueError, ValidationError) as exc:
        print(f"heimdall-training {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except JobInterrupted as exc:
        log_event(logging.getLogger("cli.main"), "interrupted", stage=exc.stage, message=exc.message)
        return EXIT_INTERRUPTED
    except HeimdallError as exc:
        log_event(logging.getLogger("cli.main"), "failed", **Failure.of(exc).model_dump())
        print(f"heimdall-training {args.command}: {exc.stage} failed"
              f"{' (retryable)' if exc.retryable else ''}: {printable(exc.message)}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # a bug, not a bad input: keep the traceback for whoever fixes it
        logging.getLogger("cli.main").exception(
            "failed", extra={"fields": {"event": "failed", **Failure.of(exc).model_dump()}})
        return EXIT_FAILED


def console_main() -> None:
    """The `heimdall-training` script and `python -m cli.main`."""
    exit_now(main())


if __name__ == "__main__":
    console_main()
