"""The job store's record of ops moves of the champion (`model.promote`), events that make no job.

One transaction per promote: the event as processed and the `model.champion-changed` it caused, in
the outbox, together or not at all, once per event id; the relay publishes it like every other
event. These writes sit beside `JobStore` (whose module is full) and use its transaction, its clock
and its tables; nothing else writes a promote's rows.
"""

from __future__ import annotations

import sqlalchemy as sa

from service.jobs.store import JobStore, OutboxMessage
from service.jobs.tables import outbox, outbox_values, processed_events


def promote_recorded(store: JobStore, event_id: str) -> bool:
    """Whether this promote was recorded already. Raises JobStoreUnavailable."""
    with store.transaction(write=False) as conn:
        return _recorded(conn, event_id)


def record_promote(store: JobStore, event_id: str, message: OutboxMessage | None) -> bool:
    """Record the promote as processed, with its `model.champion-changed` when it moved the alias.
    False, and nothing added, when it was recorded before (by another replica, say). Raises JobStoreUnavailable."""
    try:
        with store.transaction(write=True) as conn:
            if _recorded(conn, event_id):
                return False
            now = store.db.clock(conn)
            conn.execute(sa.insert(processed_events).values(event_id=event_id, job_id=None, received_at=now))
            if message is not None:
                conn.execute(sa.insert(outbox).values(outbox_values(message, None, now)))
            return True
    except sa.exc.IntegrityError:  # another replica recorded it between the check and the insert
        return False


def _recorded(conn, event_id: str) -> bool:
    return conn.execute(sa.select(processed_events.c.event_id)
                        .where(processed_events.c.event_id == event_id)).first() is not None
