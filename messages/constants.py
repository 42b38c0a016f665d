"""Every wire-level name of the event contract (`shared/contracts/events.md`), in one place."""

EXCHANGE = "heimdall.events"  # one durable topic exchange; the routing key is the event's short name
EXCHANGE_TYPE = "topic"
SPECVERSION = "1.0"  # CloudEvents 1.0, structured JSON mode
CONTENT_TYPE = "application/json"
DELIVERY_MODE_PERSISTENT = 2  # AMQP delivery_mode of every message
MAX_BODY_BYTES = 1_048_576  # 1 MiB: a larger body is refused before it is even parsed
SOURCE_TRAINING = "heimdall/training"  # CloudEvents `source` of everything this service publishes

# Routing keys. Consumed by the training service:
DATASET_READY = "dataset.ready"
TRAINING_REQUESTED = "training.requested"
TRAINING_CANCEL = "training.cancel"
MODEL_PROMOTE = "model.promote"
# Published by the training service:
TRAINING_ACCEPTED = "training.accepted"
TRAINING_STARTED = "training.started"
TRAINING_PROGRESS = "training.progress"
TRAINING_FAILED = "training.failed"
TRAINING_CANCELLED = "training.cancelled"
MODEL_REGISTERED = "model.registered"
MODEL_CHAMPION_CHANGED = "model.champion-changed"

# CloudEvents `type`: "heimdall.<routing key>.v<major>". A breaking change is a new type
# (…v2), which consumers of v1 refuse as unknown rather than misread.
DATASET_READY_TYPE = "heimdall.dataset.ready.v1"
TRAINING_REQUESTED_TYPE = "heimdall.training.requested.v1"
TRAINING_CANCEL_TYPE = "heimdall.training.cancel.v1"
MODEL_PROMOTE_TYPE = "heimdall.model.promote.v1"
TRAINING_ACCEPTED_TYPE = "heimdall.training.accepted.v1"
TRAINING_STARTED_TYPE = "heimdall.training.started.v1"
TRAINING_PROGRESS_TYPE = "heimdall.training.progress.v1"
TRAINING_FAILED_TYPE = "heimdall.training.failed.v1"
TRAINING_CANCELLED_TYPE = "heimdall.training.cancelled.v1"
MODEL_REGISTERED_TYPE = "heimdall.model.registered.v1"
MODEL_CHAMPION_CHANGED_TYPE = "heimdall.model.champion-changed.v1"
