"""Heimdall's event contract as pydantic models: depends on pydantic and nothing else.

    from messages import DatasetReady, Event, make_event, parse_event, InvalidMessage
"""

from messages.errors import REASONS, InvalidMessage, Reason
from messages.envelope import AnyEvent, ConsumedEvent, Event, PublishedEvent, make_event, parse_event
from messages.catalogue import BY_TYPE, CONSUMED, PUBLISHED
from messages.model_events import (DatasetRef, EvaluationMetrics, ModelChampionChanged, ModelPromote, ModelRegistered,
                                   OnnxArtifact)
from messages.payloads import (
    DatasetReady,
    EventData,
    ProgressMetrics,
    TrainingAccepted,
    TrainingCancel,
    TrainingCancelled,
    TrainingFailed,
    TrainingOverrides,
    TrainingProgress,
    TrainingRequested,
    TrainingStarted,
)

__version__ = "0.2.0"

__all__ = [
    "BY_TYPE", "CONSUMED", "PUBLISHED", "REASONS", "AnyEvent", "ConsumedEvent", "DatasetReady", "DatasetRef",
    "EvaluationMetrics", "Event", "EventData", "InvalidMessage", "ModelChampionChanged", "ModelPromote",
    "ModelRegistered", "OnnxArtifact",
    "ProgressMetrics", "PublishedEvent", "Reason", "TrainingAccepted", "TrainingCancel", "TrainingCancelled",
    "TrainingFailed", "TrainingOverrides", "TrainingProgress", "TrainingRequested", "TrainingStarted",
    "make_event", "parse_event", "__version__",
]
