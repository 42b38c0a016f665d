"""`python -m training.promote --version N --event-id ID --reason TEXT`: move the `champion` alias of
the service's model to version N for one `model.promote`. The service's short child (`service.champion`),
so that the async service never imports MLflow; runnable by hand with the service's settings.

It answers with one `ChampionMove` JSON line on stdout (`foundation.champion_move`); logs go to stderr.

One move per promote event, however often it is tried: before the alias moves, the version is
tagged with the event's id, the champion it replaces and the reason; once it has moved, with the
event's id again (`promote_moved`). A try whose answer was lost (the service died after the move)
is recognised by those tags: it moves nothing again and reports the same move.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys

from foundation.champion_move import ChampionMove, MoveOutcome
from foundation.errors import HeimdallError
from foundation.exit_codes import EXIT_OK
from foundation.logs import configure_logging, log_event
from foundation.object_store import open_store
from foundation.settings import load_settings
from training.mlflow_model import CARD_FILE, ONNX_FILE
from training.mlflow_calls import mlflow_errors
from training.registry import CHAMPION, PENDING, STATE, ModelRegistry

log = logging.getLogger(__name__)
# The version's tags that make a promote idempotent (and that `models show` reports).
PROMOTE_EVENT, PROMOTE_REPLACES, PROMOTE_REASON, PROMOTE_MOVED = (
    "promote_event", "promote_replaces_version", "promote_reason", "promote_moved")
MAX_TAG_CHARS = 500  # MLflow caps tag values; the event itself keeps the whole reason


class PromoteRefused(Exception):
    """A promote that no retry can make work; `reason` is the dead-letter reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def version_to_promote(registry: ModelRegistry, version: int):
    """The MLflow model version, complete. Raises PromoteRefused, RegistryError."""
    name = registry.model_name
    with mlflow_errors("read the version to promote"):
        if found_or_none(lambda: registry.client.get_registered_model(name)) is None:
            raise PromoteRefused("unknown-model", f"no registered model {name} (no job has registered one yet)")
        found = found_or_none(lambda: registry.client.get_model_version(name, str(version)))
    if found is None:
        raise PromoteRefused("unknown-version", f"{name} has no version {version}")
    if found.tags.get(STATE) == PENDING:
        raise PromoteRefused("incomplete-version", f"{name} version {version} is still being registered by its job")
    return found


def found_or_none(read):
    """What `read` returns; None when MLflow answers that it does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return read()
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def artifacts_of(registry: ModelRegistry, version: int) -> tuple[dict, str]:
    """The version's model.onnx (uri, sha256, bytes) and model.json URI, from its card in the store."""
    prefix = f"{registry.model_name}/{version}"
    try:
        card = json.loads(registry.store.read_bytes(f"{prefix}/{CARD_FILE}"))
    except FileNotFoundError as exc:
        raise PromoteRefused("incomplete-version", f"{prefix}/{CARD_FILE} is not in the models store") from exc
    onnx = {"uri": registry.store.uri_of(f"{prefix}/{ONNX_FILE}"), "sha256": card["onnx"]["sha256"],
            "bytes": card["onnx"]["bytes"]}
    return onnx, registry.store.uri_of(f"{prefix}/{CARD_FILE}")


def move_champion(registry: ModelRegistry, version: int, event_id: str, reason: str,
                  running_jobs: frozenset[str] = frozenset()) -> ChampionMove:
    """`running_jobs`: the service's jobs whose end is not recorded yet. Raises PromoteRefused,
    RegistryError, StorageUnavailable."""
    target = version_to_promote(registry, version)
    onnx, card_uri = artifacts_of(registry, version)
    champion = registry._champion()
    now = int(champion.version) if champion is not None else None
    tags = target.tags
    if tags.get(PROMOTE_MOVED) == event_id or (tags.get(PROMOTE_EVENT) == event_id and now == version):
        if now != version:  # moved by this event, then moved on by a later one
            return ChampionMove(outcome=MoveOutcome.SUPERSEDED, version=version, detail=f"the champion is {now} now")
        replaced = tags.get(PROMOTE_REPLACES)
        return ChampionMove(outcome=MoveOutcome.MOVED, version=version, onnx=onnx, card_uri=card_uri,
                            previous_version=int(replaced) if replaced else None)
    if now == version:
        return ChampionMove(outcome=MoveOutcome.UNCHANGED, version=version, detail=f"version {version} is champion")
    if champion is not None and champion.tags.get("job_id") in running_jobs:
        # its job's gate moved the alias and the service has not recorded that move yet (a second,
        # usually): moving now would be announced first, and the gate's older move would look the latest
        return ChampionMove(outcome=MoveOutcome.FAILED, version=version, detail=(
            f"version {now} became champion by job {champion.tags['job_id']}, whose move is not announced yet"))
    for key, value in ((PROMOTE_EVENT, event_id), (PROMOTE_REPLACES, str(now or "")),
                       (PROMOTE_REASON, reason[:MAX_TAG_CHARS])):
        registry._call("tag version", registry.client.set_model_version_tag, registry.model_name, str(version),
                       key, value)
    registry._set_alias(CHAMPION, version)
    registry._call("tag version", registry.client.set_model_version_tag, registry.model_name, str(version),
                   PROMOTE_MOVED, event_id)
    log_event(log, "champion moved", stage="register", model_version=version, previous_version=now,
              event_id=event_id)
    return ChampionMove(outcome=MoveOutcome.MOVED, version=version, previous_version=now, onnx=onnx,
                        card_uri=card_uri)


def answer(version: int, event_id: str, reason: str, running_jobs: frozenset[str]) -> ChampionMove:
    settings = load_settings()
    registry = ModelRegistry(settings.mlflow_tracking_uri, settings.model_name,
                             open_store(settings.models_uri, settings.s3.credentials()))
    try:
        return move_champion(registry, version, event_id, reason, running_jobs)
    except PromoteRefused as exc:
        return ChampionMove(outcome=MoveOutcome.REFUSED, version=version, reason=exc.reason, detail=exc.detail)
    except HeimdallError as exc:
        if not exc.retryable:  # MLflow said no (permissions, say): no retry helps
            return ChampionMove(outcome=MoveOutcome.REFUSED, version=version, reason="registry-refused",
                                detail=exc.message)
        return ChampionMove(outcome=MoveOutcome.FAILED, version=version, detail=exc.message)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.promote", description=__doc__.splitlines()[0])
    parser.add_argument("--version", type=int, required=True, help="the model version to make champion")
    parser.add_argument("--event-id", required=True, help="the model.promote's id: one move per id")
    parser.add_argument("--reason", required=True)
    parser.add_argument("--running-job", action="append", default=[], metavar="JOB_ID",
                        help="a job whose end the service has not recorded (repeatable): a champion it made waits")
    args = parser.parse_args(argv)
    configure_logging(None)
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the answer alone (MLflow prints links)
        move = answer(args.version, args.event_id, args.reason, frozenset(args.running_job))
    print(move.model_dump_json(), flush=True)
    return EXIT_OK


if __name__ == "__main__":
    from foundation.exit_codes import exit_now

    exit_now(main())
