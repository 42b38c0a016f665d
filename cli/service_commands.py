"""The service-side commands: `serve`, `ops`, `jobs`. None of them imports the training stack."""

from __future__ import annotations

import sys

from cli.models import add_promote
from foundation.exit_codes import EXIT_FAILED


def add_service(sub) -> None:
    p = sub.add_parser("serve", help="run the event-driven service")
    p.add_argument("--check", action="store_true", help="probe a running service's /healthz; exit 0 when healthy")
    ops = sub.add_parser("ops", help="manual triggers").add_subparsers(dest="action", required=True)
    request = ops.add_parser("request", help="publish training.requested")
    request.add_argument("--dataset_id", required=True)
    request.add_argument("--version", default="latest", help='a version number or "latest"')
    request.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                         help="a training parameter, e.g. epochs=50 (repeatable)")
    request.add_argument("--export_only", action="store_true")
    request.add_argument("--checkpoint_uri")
    request.add_argument("--resume_job_id")
    request.add_argument("--reason", required=True)
    cancel = ops.add_parser("cancel", help="publish training.cancel")
    cancel.add_argument("job_id")
    cancel.add_argument("--reason", required=True)
    add_promote(ops)
    jobs = sub.add_parser("jobs", help="follow the jobs").add_subparsers(dest="action", required=True)
    listing = jobs.add_parser("list", help="newest first: state, dataset, attempt, progress, age")
    listing.add_argument("--status", choices=("queued", "running", "succeeded", "failed", "cancelled"))
    listing.add_argument("--limit", type=int, default=50, help="at most this many jobs (default 50)")
    jobs.add_parser("show", help="one job's timeline, its model and its MLflow run").add_argument("job_id")


def run_serve(args, settings) -> int:
    if args.check:
        from service.probes import check

        return check(settings.http_port)
    import asyncio

    from service.app import serve
    from foundation.logs import configure_logging

    configure_logging(None)
    return asyncio.run(serve(settings))  # 1 when a background task died: the supervisor restarts us


def run_ops(args, settings) -> int:
    from service import ops_commands

    if args.action == "request":
        event_id = ops_commands.request_training(
            settings, dataset_id=args.dataset_id, version=args.version, overrides=args.override, reason=args.reason,
            export_only=args.export_only, checkpoint_uri=args.checkpoint_uri, resume_job_id=args.resume_job_id)
    elif args.action == "promote":
        event_id = ops_commands.promote_model(settings, model_name=args.model_name, version=args.version,
                                              reason=args.reason)
    else:
        event_id = ops_commands.cancel_job(settings, job_id=args.job_id, reason=args.reason)
    print(event_id)
    return 0


def run_jobs(args, settings) -> int:
    from service import ops_commands

    shown = ops_commands.list_jobs(settings, args.status, args.limit) if args.action == "list" \
        else ops_commands.show_job(settings, args.job_id)
    if shown is None:
        print(f"no job {args.job_id}", file=sys.stderr)
        return EXIT_FAILED
    print(shown)
    return 0


SERVICE_COMMANDS = {"serve": run_serve, "ops": run_ops, "jobs": run_jobs}
