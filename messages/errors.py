"""The one error of this package.

    Exception
     └── InvalidMessage   the body can never be handled: dead-letter it, never retry
           .reason  one of REASONS, for the dead-letter header
           .detail  a short sentence naming the offending field
"""

from typing import Literal, get_args

Reason = Literal[
    "too-large",  # body over MAX_BODY_BYTES; checked before anything is parsed
    "malformed-json",  # not UTF-8 JSON
    "invalid-envelope",  # not a JSON object, or a CloudEvents attribute missing or of the wrong type
    "unknown-type",  # `type` is not one we know, including a known event at another major version
    "invalid-data",  # `data` misses a field, has a wrong type or value, or names an unknown override
    "routing-key-mismatch",  # `type` does not belong to the routing key it arrived with
]
REASONS: tuple[str, ...] = get_args(Reason)


class InvalidMessage(Exception):
    """A message body that no retry can fix: the caller dead-letters it with `reason` and `detail`."""

    retryable = False

    def __init__(self, reason: Reason, detail: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown InvalidMessage reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self):  # keeps the two-argument constructor picklable across processes
        return (type(self), (self.reason, self.detail))
