"""The registration fence between the service and its training child, both sides of it.

Before it creates a model version, a child started with `--registration_permit` logs one line with
`"event": PERMIT_REQUEST` on stderr and reads one line from stdin: `PERMIT_GRANTED` only while the
service still holds the job's lease (renewed in the same step). Anything else means another
replica may own the job now, and the child must not register.
"""

from __future__ import annotations

import sys

PERMIT_REQUEST = "registration-permit-requested"
PERMIT_GRANTED, PERMIT_DENIED = "granted", "denied"


def ask_for_permit(log_event, log) -> bool:
    """The child's side: ask on stderr, wait for the answer on stdin."""
    log_event(log, PERMIT_REQUEST, stage="register")
    return sys.stdin.readline().strip() == PERMIT_GRANTED
