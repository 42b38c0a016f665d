"""The chaos report: real `serve` processes under injected faults, and whether every promise held.

    .venv/bin/python -m tests.chaos [--seed 1] [--trials-scale 1.0] [--fault kill-9 --fault fuzz ...]

Starts its own SeaweedFS, `mlflow server` and PostgreSQL databases (so that stopping them
disturbs nothing else), a throwaway RabbitMQ vhost per trial, and runs the faults of
`tests/chaos/table.py` (issue 8's and issue 20's) against `heimdall-training serve`. Each trial is audited alike:
every accepted job must end exactly once (`model.registered`, a final `training.failed` or
`training.cancelled`, counted by CloudEvent id since delivery is at least once), one model
version per idempotency key, one `model.registered` per job, no outbox event missing from the
bus, no job left queued or running. Writes `reports/chaos.md`; a failing row names the trial's
seed, so `--fault NAME --seed S` replays it. A harness, not a test: it restarts shared RabbitMQ.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import subprocess
import sys
import statistics
import tempfile
import time
import traceback
from contextlib import ExitStack
from pathlib import Path

from tests.chaos.lab import Lab, Skip, Trial, audit, settle
from tests.chaos.table import FAULTS


def run_trial(lab: Lab, fault, index: int, seed: int) -> Trial:
    trial = Trial(fault.name, f"{seed}-{fault.name}-{index}")
    started = time.monotonic()
    lab.trial_seed = trial.seed
    try:
        stack = fault.run(lab, random.Random(trial.seed), trial, index)
        settle(stack)
        trial.audit = audit(stack)
    except Skip as exc:
        trial.skipped = str(exc)
    except Exception as exc:
        trial.problems.append(f"harness: {type(exc).__name__}: {exc}")
        traceback.print_exc()
    finally:
        lab.close_stacks()
    trial.wall_s = time.monotonic() - started
    verdict = f"skipped: {trial.skipped}" if trial.skipped else "ok" if trial.ok else "FAIL"
    print(f"{trial.name} #{index}: {verdict} {trial.audit} {trial.problems} "
          f"recovery={trial.recovery_s} wall={trial.wall_s:.0f}s", flush=True)
    return trial


def row(fault, trials: list[Trial], args) -> str:
    total = lambda key: sum(t.audit.get(key, 0) for t in trials)  # noqa: E731
    peak = lambda key: max((t.audit.get(key, 0) for t in trials), default=0)  # noqa: E731
    recovery = [t.recovery_s for t in trials if t.recovery_s is not None]
    rec = f"{statistics.median(recovery):.1f} / {max(recovery):.1f}" if recovery else "–"
    skipped = sorted({t.skipped for t in trials if t.skipped})
    verdict = "**pass**" if trials and all(t.ok for t in trials) else "**FAIL**"
    if skipped and all(t.skipped for t in trials):
        verdict = "**skipped**: " + "; ".join(skipped)
    return (f"| {fault.label} | {fault.trials_label(len(trials), args.trials_scale)} | {total('accepted')} | {total('ended_once')} | "
            f"{peak('versions_per_key')} | {peak('registered_per_job')} | {total('lost')} | {total('stuck')} | "
            f"{rec} | {sum(t.wall_s for t in trials):.0f} | {fault.must_hold} | {verdict} |")


def report(results: list[tuple], args, wall_s: float) -> str:
    lines = ["# Chaos report: every accepted job ends exactly once", "",
             f"`python -m tests.chaos --seed {args.seed} --trials-scale {args.trials_scale}"
             + "".join(f" --fault {f}" for f in args.fault or []) + f"`: wall time **{wall_s / 60:.1f} min** on "
             f"this 2-core machine, {time.strftime('%Y-%m-%d %H:%M')}, commit {git_head()}.", "",
             "Counts are per fault over all its trials; events are counted by CloudEvent id. *Versions per key* and "
             "*model.registered per job* are the maxima over the trials. *Lost*: outbox rows never seen on the bus. "
             "*Stuck*: jobs still queued or running at the end. *Recovery*: from the end of the fault to the next "
             "event about the affected job (median / max, s).", "",
             "| fault | trials | jobs accepted | ended exactly once | versions per key | model.registered per job "
             "| events lost | stuck jobs | recovery s | wall s | must hold | result |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|",
             *[row(fault, trials, args) for fault, trials in results], ""]
    failed = [t for _, trials in results for t in trials if not t.ok]
    if failed:
        lines += ["## Trials that did not hold", "", *[
            f"- `{t.name}` trial seed `{t.seed}` (replay: `python -m tests.chaos --fault {t.name} --seed "
            f"{args.seed}`): {'; '.join(t.problems) or 'audit'}; audit {t.audit}" for t in failed], ""]
    return "\n".join(lines)


def git_head() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--trials-scale", type=float, default=1.0, help="fraction of each fault's trials (≥ 1 each)")
    parser.add_argument("--fault", action="append", choices=[f.name for f in FAULTS], help="only these (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("reports/chaos.md"))
    args = parser.parse_args()
    started = time.monotonic()
    results = []
    workdir = Path(tempfile.mkdtemp(prefix="heimdall-chaos-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a timeout still stops the servers and restores
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with ExitStack() as exits:
        lab = Lab(workdir, exits)
        lab.scale = args.trials_scale
        for fault in FAULTS:
            if args.fault and fault.name not in args.fault:
                continue
            count = max(1, round(fault.trials * args.trials_scale))
            results.append((fault, [run_trial(lab, fault, i, args.seed) for i in range(count)]))
            args.out.write_text(report(results, args, time.monotonic() - started))  # so far, should it be cut short
    text = report(results, args, time.monotonic() - started)
    if all(t.ok for _, trials in results for t in trials):
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"kept for the failing trials' serve logs: {workdir}")
    args.out.write_text(text)
    print(text)
    print(f"wall time {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
