"""The training-side commands: `synth`, `train`, `bench`. Each imports the training stack only
when it runs, so `--help` never pays for torch.

On a terminal they show their stages and a progress bar; elsewhere (or with --log-format json)
they write JSON log lines on stderr. Results go to stdout.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

from foundation.exit_codes import die_with_parent


def add_training_commands(sub) -> None:
    add_synth(sub)
    add_train(sub)
    add_bench(sub)


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
    p.add_argument("--preset", choices=field_choices("preset"), help="the model to train (default: the service's default, "
                   "TrainConfig.preset); give another preset its own --out")
    p.add_argument("--out", type=Path, default=Path("reports/bench"), help="report folder")


def field_choices(name: str) -> tuple[str, ...] | None:
    """A TrainConfig field's allowed values when its type is a Literal, else None."""
    from typing import Literal, get_args, get_origin

    from foundation.train_config import TrainConfig

    kind = TrainConfig.model_fields[name].annotation
    return get_args(kind) if get_origin(kind) is Literal else None


def add_config_flags(parser) -> None:
    """One flag per TrainConfig field (--epochs, --batch_size, ...): the configuration is declared once."""
    from foundation.train_config import TrainConfig

    for name, field in TrainConfig.model_fields.items():
        choices = field_choices(name)
        parser.add_argument(f"--{name}", type=str if choices else field.annotation, choices=choices,
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
    from training.bench.runner import POWDER_VARIANTS, bench_config, run_scenario, scenario_names
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
                         seeds=tuple(range(args.seeds)), config=bench_config(args.quick, args.preset))
    print(write_summary(args.out).read_text())
    return 0


TRAINING_COMMANDS = {"synth": run_synth, "train": run_train, "bench": run_bench}
