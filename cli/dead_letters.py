"""`heimdall-training dead-letters list|redrive`: the dead-letter queues, for an operator
(the work itself is in `service/dead_letters.py`)."""

from __future__ import annotations

from cli.action_parsers import add_action, add_actions
from foundation.exit_codes import EXIT_FAILED
from foundation.logs import printable


def add_dead_letters(sub) -> None:
    actions = add_actions(sub, "dead-letters", help="list or re-drive the dead-letter queues",
                          listing="per dead-letter queue: message id, original routing key, reason, age, detail")
    redrive = add_action(
        actions, "redrive", help="back to the work queue they came from, each once",
        description="Re-drive the dead letters that match every filter given (all of them with none) to the\n"
                    "work queue they came from, each once; the others stay where they are. Run it as the ops\n"
                    "user to keep an ops message's user_id (RabbitMQ accepts no other).",
        epilog="examples:\n  heimdall-training dead-letters redrive --reason dataset-not-allowed\n"
               "  heimdall-training dead-letters redrive --id 5f0c7c1e-7d8c-4a7e-9d55-2b8d2f6f3c11")
    redrive.add_argument("--reason", help="x-heimdall-reason (e.g. unknown-dataset) or RabbitMQ's x-death reason "
                         "(delivery_limit, expired, rejected, maxlen)")
    redrive.add_argument("--id", dest="message_id", help="the message id (the event id)")


def run_dead_letters(args, settings) -> int:
    import asyncio

    from foundation.logs import configure_logging
    from service import dead_letters
    from service.jobs.tables import utcnow

    configure_logging(None)
    if args.action == "list":
        print(dead_letters.dead_letters_table(asyncio.run(dead_letters.list_dead_letters(settings)), utcnow()))
        return 0

    def say(letter) -> None:
        print(f"redriven {printable(letter.message_id or '-')} ({letter.reason}) to {letter.queue.name} "
              f"as {letter.routing_key}")

    counts = asyncio.run(dead_letters.redrive(settings, args.reason, args.message_id, on_redriven=say))
    print(f"redriven {counts.redriven}, not matched {counts.kept}, not confirmed {counts.failed} (left in place)")
    return EXIT_FAILED if counts.failed else 0
