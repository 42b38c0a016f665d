"""Faults aimed at the training child (issue 20): a kill or SIGTERM in the registration window, a child
that stops mid-fit, and a state or cache folder out of space.

The registration window is aimed, not left to timing: once serve has granted the job's registration
permit, MLflow is asked for the job's model version as fast as it answers, and the moment the version
exists the child is frozen (SIGSTOP). A trial may then let it step on, frozen again the moment its
model.json is in the store, or the moment the version is tagged complete (`aim_points`). The version
is read back while the child is frozen (it must be in the state aimed at: a trial that finds it further
on has missed its window, and says so), and only then is the fault's signal sent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from messages import constants as wire
from tests.chaos.lab import Lab, Skip, Trial, query
from tests.chaos.steps import announce, logged, long_training, recovery, training_child, wait_end, wait_until
from tests.support.service_stack import ServiceProcess, Stack, training_requested

PENDING, COMPLETE = "pending", "complete"  # training.registry's `registration` tag
AIMS = ("created", "stored", "completed")  # see `aim_points`


def mlflow_client(stack: Stack):
    from mlflow import MlflowClient

    return MlflowClient(stack.env["HEIMDALL_MLFLOW_TRACKING_URI"])


def freeze_at_version(stack: Stack, service: ServiceProcess, job: str):
    """Wait for the job's model version to exist and freeze serve's training child that moment.
    Returns (child pid, the version as it was at the freeze), or None when the job ended first."""
    client, name = mlflow_client(stack), stack.env["HEIMDALL_MODEL_NAME"]
    if not wait_until(lambda: logged(service, "registration permit", job_id=job), 300, 0.1):
        return None  # the permit comes right before create_model_version: from here on, ask MLflow without pause
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = [v for v in client.search_model_versions(f"name='{name}'") if v.tags.get("job_id") == job]
        if found:
            pid = training_child(service)
            if pid is None:
                return None
            os.kill(pid, signal.SIGSTOP)
            return pid, client.get_model_version(name, found[0].version)
    return None


def step_until(pid: int, reached) -> bool:
    """Let the frozen child go on until `reached()`, and freeze it again; False when it ended first."""
    os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and alive(pid):
        if reached():
            os.kill(pid, signal.SIGSTOP)
            return alive(pid)
    return False


def aim_points(lab: Lab, stack: Stack, version: str) -> dict:
    """Where in the window a trial strikes: the version exists; its model.json is in the store too
    (aliases and the `complete` tag to come); it is complete (the result still to be sent)."""
    bucket, _, prefix = stack.env["HEIMDALL_MODELS_URI"].removeprefix("s3://").partition("/")
    name, s3, client = stack.env["HEIMDALL_MODEL_NAME"], lab.s3.client(), mlflow_client(stack)
    card = f"{prefix}/{name}/{version}/model.json"
    return {"created": (None, PENDING),
            "stored": (lambda: s3.list_objects_v2(Bucket=bucket, Prefix=card).get("KeyCount", 0) > 0, PENDING),
            "completed": (lambda: client.get_model_version(name, version).tags.get("registration") == COMPLETE,
                          COMPLETE)}


def freeze_at_aim(lab: Lab, stack: Stack, service: ServiceProcess, job: str, aim: str, trial: Trial):
    """Freeze serve's training child at `aim` (one of `aim_points`) and read its version back.
    Returns (child pid, the version at the freeze), or None (noted in the trial) when it was not reached."""
    frozen = freeze_at_version(stack, service, job)
    trial.check(frozen is not None, "the job's model version never appeared while its child ran")
    if frozen is None:
        return None
    pid, version = frozen
    reached, expected = aim_points(lab, stack, version.version)[aim]
    if reached is not None:
        trial.check(step_until(pid, reached), f"the child ended before its version was {aim}")
        version = mlflow_client(stack).get_model_version(version.name, version.version)
    state = version.tags.get("registration")
    trial.check(state == expected, f"the window was missed: version {version.version} was {state!r} at the freeze")
    return pid, version


def job_frozen_at_aim(lab: Lab, trial: Trial, index: int):
    """A serve with one job whose child is frozen at the trial's aim (`AIMS`, by trial index):
    (stack, service, job, aim, frozen), frozen as `freeze_at_aim` returns it."""
    stack = lab.stack()
    service = stack.start("a")
    job = announce(lab, stack)
    aim = AIMS[index % len(AIMS)]
    return stack, service, job, aim, freeze_at_aim(lab, stack, service, job, aim, trial)


def register_window(sig: int):
    """`sig` to the training child between create_model_version and its result, at one of `aim_points`
    (by trial index)."""

    def run(lab: Lab, rng, trial: Trial, index: int) -> Stack:
        stack, service, job, aim, frozen = job_frozen_at_aim(lab, trial, index)
        if frozen is None:
            return stack
        pid, version = frozen
        os.kill(pid, sig)
        os.kill(pid, signal.SIGCONT)  # a SIGTERM is delivered now; a SIGKILL has already ended it
        hit = time.monotonic()
        trial.check(wait_end(stack, job), f"the job did not end after {signal.Signals(sig).name} in registration")
        check_one_complete_version(stack, job, trial)
        failed = stack.tap.events(wire.TRAINING_FAILED, job_id=job)
        if sig == signal.SIGKILL:
            trial.check(bool(failed) and failed[0]["data"]["retryable"],
                        f"the killed attempt was not a retryable failure: {[f['data'] for f in failed]}")
        print(f"  {signal.Signals(sig).name} with version {version.version} {aim} (aliases {sorted(version.aliases)}); "
              f"attempts failed: {[(f['data']['attempt'], f['data']['error_type']) for f in failed]}", flush=True)
        trial.recovery_s = recovery(stack, job, hit)
        return stack

    return run


def sigterm_sent(service: ServiceProcess, job: str, pid: int) -> bool:
    """Whether serve has sent the (stopped) child its SIGTERM: pending in its shared set, or, where the
    child ignores SIGTERM (from its registration permit on), serve's own "stopping child" line."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("ShdPnd:") and int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)):
                return True
    except FileNotFoundError:
        return True  # gone: whatever serve sent has arrived
    return any(line.get("event") == "stopping child" and line.get("job_id") == job for line in service.log_lines())


def cancel_in_register(lab: Lab, rng, trial: Trial, index: int) -> Stack:
    """`training.cancel` for a job whose child is frozen at one of `aim_points`: serve SIGTERMs it, and
    the job must either register (its version complete) or be cancelled and leave no trace in the
    registry (no version for its key, the champion alias untouched)."""
    stack, service, job, aim, frozen = job_frozen_at_aim(lab, trial, index)
    if frozen is None:
        return stack
    pid, version = frozen
    cancel = {**training_requested("chaos-a", 1), "type": wire.TRAINING_CANCEL_TYPE,
              "data": {"job_id": job, "reason": "chaos: cancelled in registration"}}
    stack.publish(cancel, wire.TRAINING_CANCEL)
    trial.check(wait_until(lambda: sigterm_sent(service, job, pid), 60, 0.1),
                "serve never sent its child SIGTERM on the cancel")
    os.kill(pid, signal.SIGCONT)
    hit = time.monotonic()
    trial.check(wait_end(stack, job), "the job did not end after the cancel")
    if stack.tap.events(wire.MODEL_REGISTERED, job_id=job):
        check_one_complete_version(stack, job, trial)
        outcome = "registered"
    else:
        outcome = "cancelled"
        trace = registry_trace(stack, job)
        trial.check(not trace, f"cancelled, and left in the registry: {trace}")
    print(f"  cancel with version {version.version} {aim}: {outcome}; registry {registry_trace(stack, job)}",
          flush=True)
    trial.recovery_s = recovery(stack, job, hit)
    return stack


def registry_trace(stack: Stack, job: str) -> dict:
    """The job's versions in MLflow, each with its registration state and aliases."""
    client, name = mlflow_client(stack), stack.env["HEIMDALL_MODEL_NAME"]
    return {int(v.version): (v.tags.get("registration"), sorted(client.get_model_version(name, v.version).aliases))
            for v in client.search_model_versions(f"name='{name}'") if v.tags.get("job_id") == job}


def check_one_complete_version(stack: Stack, job: str, trial: Trial) -> None:
    """The job's idempotency key has exactly one model version, complete, and it is the one announced."""
    key = query(stack, "select idempotency_key from jobs where id = :job", job=job)[0][0]
    name = stack.env["HEIMDALL_MODEL_NAME"]
    versions = mlflow_client(stack).search_model_versions(f"name='{name}' and tags.idempotency_key='{key}'")
    states = {int(v.version): v.tags.get("registration") for v in versions}
    trial.check(list(states.values()) == [COMPLETE], f"versions for the key: {states}, not one complete")
    registered = [e["data"]["model_version"] for e in stack.tap.events(wire.MODEL_REGISTERED, job_id=job)]
    trial.check(registered and set(registered) <= set(states),
                f"model.registered names {registered}, MLflow has {states}")


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def child_stopped(lab: Lab, rng, trial: Trial, index: int) -> Stack:
    """SIGSTOP the child mid-fit: silent past HEIMDALL_CHILD_SILENCE_S, it must be killed and the job retried.
    Cold children: a warm spare imports before it beats, and a spare handed a job while still importing
    (the retry takes one at once) is silent longer than 8 s on a loaded machine, and killed for it."""
    silence_s = 8.0
    stack = lab.stack(HEIMDALL_DEFAULT_TRAINING=long_training(12), HEIMDALL_CHILD_SILENCE_S=str(silence_s),
                      HEIMDALL_WARM_SPARE="false")
    service = stack.start("a")
    job = announce(lab, stack)
    trial.check(wait_until(lambda: bool(stack.tap.events(wire.TRAINING_PROGRESS, job_id=job)), 180, 0.2),
                "the job never reported progress")
    time.sleep(rng.uniform(0, 2))
    pid = training_child(service)
    trial.check(pid is not None, "no training child to stop")
    if pid is None:
        return stack
    os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    trial.check(wait_until(lambda: not alive(pid), silence_s + 60, 0.2), "the stopped child was never killed")
    waited = time.monotonic() - stopped
    trial.check(waited >= silence_s - 1.5,
                f"killed {waited:.1f} s after it stopped, before {silence_s:.0f} s of silence")
    failed = stack.tap.wait_for(wire.TRAINING_FAILED, job_id=job, timeout_s=60)[0]["data"]
    trial.check((failed["error_type"], failed["retryable"]) == ("ChildSilent", True), f"the first failure: {failed}")
    trial.check(wait_end(stack, job), "the retried job did not end")
    trial.check(bool(stack.tap.events(wire.MODEL_REGISTERED, job_id=job)), "no model after the retry")
    print(f"  stopped child killed after {waited:.1f} s", flush=True)
    trial.recovery_s = recovery(stack, job, stopped)
    return stack


def small_disk(lab: Lab, path: Path, size: str) -> None:
    """A tmpfs of `size` at `path`, unmounted after the trial; Skip when this machine cannot mount one."""
    path.mkdir(parents=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True,
                       capture_output=True, text=True, timeout=30)
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        raise Skip(f"cannot mount a tmpfs here ({getattr(exc, 'stderr', '') or exc}); a full disk is covered by "
                   "tests/foundation/test_child_protocol.py (/dev/full)") from exc
    lab.cleanups.append(lambda: subprocess.run(["umount", "-l", str(path)], check=True, timeout=30))


def disk_full(lab: Lab, rng, trial: Trial, index: int) -> Stack:
    """Even trials: the cache folder on a 64 KiB tmpfs; odd trials: the whole state folder. The first
    attempt must fail retryable (StorageFull); space comes back before the retry, which must succeed."""
    folder = "cache" if index % 2 == 0 else "state"
    stack = lab.stack(HEIMDALL_RETRY_BACKOFF_S="15")  # the retry waits 12-18 s: time to give the space back
    disk = stack.tmp / ("cache-disk" if folder == "cache" else "state-a")
    small_disk(lab, disk, "64k")
    if folder == "cache":
        stack.env["HEIMDALL_CACHE_DIR"] = str(disk)
    service = stack.start("a")
    job = announce(lab, stack)
    failed = stack.tap.wait_for(wire.TRAINING_FAILED, job_id=job, timeout_s=240)[0]["data"]
    subprocess.run(["mount", "-o", "remount,size=1g", str(disk)], check=True, timeout=30)
    freed = time.monotonic()
    trial.check((failed["error_type"], failed["retryable"]) == ("StorageFull", True) and failed["stage"] != "train",
                f"{folder} folder full: the first failure was {failed}, not a retryable StorageFull")
    trial.check(wait_end(stack, job), "the job did not end once space came back")
    trial.check(bool(stack.tap.events(wire.MODEL_REGISTERED, job_id=job)), "no model once space came back")
    print(f"  {folder} full: {failed['stage']}/{failed['error_type']} retryable={failed['retryable']}: "
          f"{failed['message'][:160]}", flush=True)
    trial.check(service.proc.poll() is None, "serve exited with the disk full")
    trial.recovery_s = recovery(stack, job, freed)
    return stack
