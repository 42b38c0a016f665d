"""`heimdall-training`: the command line of the training service.

  synth   write a synthetic dataset version (local folder or s3://)
  train   run the training job: data, model, fit, export, register

Imports stay lazy: `--help` and the service's own commands never pay for torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import uuid
from pathlib import Path

from service.errors import HeimdallError, JobInterrupted
from service.logs import log_event

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 3


def add_synth(sub) -> None:
    p = sub.add_parser("synth", help="write a seeded synthetic dataset version")
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
    p.add_argument("--data_dir", required=True, help="dataset version: folder, file:// or s3://.../<id>/v<k>/")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch_size", type=int)
    p.add_argument("--learning_rate", type=float)
    p.add_argument("--validation_split", type=float)
    p.add_argument("--num_workers", type=int)
    p.add_argument("--accelerator", help="auto (GPU when there is one), cpu, gpu")
    p.add_argument("--devices", help="auto, or a number of devices")
    p.add_argument("--preset", choices=("tiny", "small", "large"))
    p.add_argument("--seed", type=int)
    p.add_argument("--checkpoint_dir", type=Path)
    p.add_argument("--experiment_name", default="heimdall-localization")
    p.add_argument("--run_name_prefix", default="train")
    p.add_argument("--export_only", action="store_true", help="skip training; export --checkpoint")
    p.add_argument("--checkpoint", type=Path, help="a Lightning checkpoint to export or resume from")
    p.add_argument("--resume_training", action="store_true",
                   help="resume epoch, optimizer and scheduler from --checkpoint (default: <checkpoint_dir>/last.ckpt)")
    p.add_argument("--job_id", default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")


CONFIG_FLAGS = ("epochs", "batch_size", "learning_rate", "validation_split", "num_workers", "accelerator",
                "devices", "preset", "seed")


def run_synth(args, settings) -> int:
    from service.synth import SynthConfig, synthesize_dataset

    cfg = SynthConfig(sessions=args.sessions, seed=args.seed, dataset_id=args.dataset_id,
                      samples_per_capture=args.samples_per_capture, path_loss_exponent=args.path_loss_exponent,
                      shadowing_sigma_db=args.shadowing_sigma_db, offline_probability=args.offline_probability,
                      shard_size=args.shard_size)
    uri = synthesize_dataset(cfg, args.out, version=args.version, credentials=settings.s3.credentials())
    print(uri)
    return 0


def run_train(args, settings) -> int:
    from service.config import TrainConfig
    from service.logs import configure_logging
    from service.pipeline import JobOptions, run_job
    from service.summary import format_summary

    config = TrainConfig(**{k: getattr(args, k) for k in CONFIG_FLAGS if getattr(args, k) is not None})
    options = JobOptions(data_uri=args.data_dir, job_id=args.job_id or str(uuid.uuid4()),
                         checkpoint_dir=args.checkpoint_dir, experiment_name=args.experiment_name,
                         run_name_prefix=args.run_name_prefix, export_only=args.export_only,
                         checkpoint=args.checkpoint, resume_training=args.resume_training)
    configure_logging(options.job_id)
    result = run_job(settings, config, options)
    if result is not None:
        print(json.dumps(result) if args.json else format_summary(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="heimdall-training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add_synth(sub)
    add_train(sub)
    args = parser.parse_args(argv)
    from pydantic import ValidationError

    from service.settings import load_settings

    try:
        settings = load_settings()
        return {"synth": run_synth, "train": run_train}[args.command](args, settings)
    except (ValueError, ValidationError) as exc:
        print(f"heimdall-training {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except JobInterrupted as exc:
        log_event(logging.getLogger("service.cli"), "interrupted", stage=exc.stage, message=exc.message)
        return EXIT_INTERRUPTED
    except HeimdallError as exc:
        log_event(logging.getLogger("service.cli"), "failed", stage=exc.stage, error_type=type(exc).__name__,
                  message=exc.message, retryable=exc.retryable)
        print(f"heimdall-training {args.command}: {exc.stage} failed"
              f"{' (retryable)' if exc.retryable else ''}: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # a bug, not a bad input: keep the traceback for whoever fixes it
        logging.getLogger("service.cli").exception(
            "failed", extra={"fields": {"event": "failed", "stage": "train", "error_type": type(exc).__name__,
                                        "message": str(exc), "retryable": False}})
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
