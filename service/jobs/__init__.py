"""The job store (async side): tables, database, named state transitions, queries, the outbox
messages a transition writes, and the timeline that `jobs show` reads."""
