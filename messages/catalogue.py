"""Every event of the contract, by direction and by CloudEvents `type`: what `parse_event` looks up
and what the JSON Schemas and the AsyncAPI document are generated from."""

from messages.model_events import ModelChampionChanged, ModelPromote, ModelRegistered
from messages.payloads import (DatasetReady, EventData, TrainingAccepted, TrainingCancel, TrainingCancelled,
                               TrainingFailed, TrainingProgress, TrainingRequested, TrainingStarted)

CONSUMED: tuple[type[EventData], ...] = (DatasetReady, TrainingRequested, TrainingCancel, ModelPromote)
PUBLISHED: tuple[type[EventData], ...] = (
    TrainingAccepted, TrainingStarted, TrainingProgress, TrainingFailed, TrainingCancelled, ModelRegistered,
    ModelChampionChanged,
)
BY_TYPE: dict[str, type[EventData]] = {model.TYPE: model for model in CONSUMED + PUBLISHED}
