"""`heimdall-training`: the command line of the training service.

  synth   write a synthetic dataset version (local folder or s3://)
  train   run the training job: data, model, fit, export, register
  bench   score a model against the Bayesian oracle and classical baselines, per scenario
  serve   the event-driven service: consume triggers, run jobs, publish events
  ops     publish a manual training.requested, training.cancel or model.promote
  jobs    list the jobs, or show one job's timeline
  dead-letters  list the dead letters with their reasons, or re-drive them to their work queue
  models  the registered model's versions: list, show one, compare two on the same sessions

On a terminal, synth, train and bench show their stages and a progress bar; elsewhere (or
with --log-format json) they write JSON log lines on stderr. Results go to stdout.

The commands live beside this dispatcher, by the side they run: `training_commands.py` (the
training stack, imported when the command runs), `service_commands.py`, `dead_letters.py`, `models.py`.
"""

# Imports of the heavy libraries stay inside the commands: `--help` and the service's own
# commands never pay for torch.

from __future__ import annotations

import argparse
import logging
import sys

from foundation.child_protocol import Failure
from foundation.errors import HeimdallError, JobInterrupted
from foundation.exit_codes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, exit_now
from foundation.logs import log_event, printable
from cli.dead_letters import add_dead_letters, run_dead_letters
from cli.models import add_models, run_models
from cli.service_commands import SERVICE_COMMANDS, add_service
from cli.training_commands import TRAINING_COMMANDS, add_training_commands

COMMANDS = {**TRAINING_COMMANDS, **SERVICE_COMMANDS, "dead-letters": run_dead_letters, "models": run_models}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="heimdall-training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add_training_commands(sub)
    add_service(sub)
    add_dead_letters(sub)
    add_models(sub)
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
