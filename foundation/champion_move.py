"""What the champion-moving child (`python -m training.promote`) answers the service (`service.champion`):
one `ChampionMove` as a JSON line on its stdout. Both sides import this module, so neither imports the other.
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict


class MoveOutcome(str, Enum):
    #: The alias names `version` because of this promote: moved now, or by an earlier try of the same
    #: event whose record was lost. The service announces it (model.champion-changed).
    MOVED = "moved"
    #: `version` was already champion, by another move: nothing moved, nothing to announce.
    UNCHANGED = "unchanged"
    #: An earlier try of this promote moved the alias and it has moved on since: moving it back now
    #: would undo a later move, and announcing it now would put the moves out of order.
    SUPERSEDED = "superseded"
    #: Never obeyable (`reason`: unknown-model, unknown-version, incomplete-version, registry-refused).
    REFUSED = "refused"
    #: MLflow or the object store did not answer: another try may succeed.
    FAILED = "failed"


class ChampionMove(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    outcome: MoveOutcome
    version: int
    previous_version: int | None = None  # MOVED: the champion it replaced (None: there was none)
    onnx: dict | None = None  # MOVED: the version's model.onnx (uri, sha256, bytes), as model.registered names it
    card_uri: str | None = None  # MOVED: its model.json
    reason: str = ""  # REFUSED: the dead-letter reason
    detail: str = ""  # REFUSED, FAILED: a sentence for the operator
