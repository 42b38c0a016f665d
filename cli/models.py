"""`heimdall-training models list|show|compare`, and the parser of `ops promote`: the registered
model's versions, and moving its `champion` alias by hand. The views read MLflow and the models
store directly (`training.model_views`, imported when a command runs); a promote is a
`model.promote` event (`cli.service_commands` publishes it), which the service obeys and
announces as `model.champion-changed`.
"""

from __future__ import annotations

from cli.action_parsers import add_action, add_actions


def add_models(sub) -> None:
    actions = add_actions(
        sub, "models", help="the registered model's versions: list, show, compare",
        listing="newest first: version, aliases, dataset, test median and p90, created, the champion gate's decision")
    show = add_action(
        actions, "show", help="one version: aliases, description, dataset, test figures, gate decision",
        description="One version: its aliases and description, the dataset and sessions it was trained on, its\n"
                    "test figures beside the baselines', the champion gate's decision with its reason, an ops\n"
                    "promotion, its job and MLflow run, and where model.onnx and model.json are.",
        epilog="example:\n  heimdall-training models show 12")
    show.add_argument("version", type=int, help="a version number (models list shows them)")
    compare = add_action(
        actions, "compare", help="two versions scored in ONNX Runtime on the same held-out sessions",
        description="Score two versions in ONNX Runtime on the same held-out sessions, the test split of the\n"
                    "dataset the newer one was trained on, and print their errors, coverages and NLL side by side.",
        epilog="example (is the champion's predecessor better on today's data?):\n"
               "  heimdall-training models compare 11 12")
    compare.add_argument("first", type=int, metavar="A", help="a version number")
    compare.add_argument("second", type=int, metavar="B", help="another; the newer of the two names the sessions")


def add_promote(ops) -> None:
    promote = add_action(
        ops, "promote", help="publish model.promote: move the champion alias (a rollback when older)",
        description="Publish model.promote. The service (as an allow-listed ops user) moves the `champion` alias\n"
                    "to VERSION, an older one being a rollback, and announces the move as model.champion-changed.\n"
                    "Prints the event id; a refused promote is dead-lettered with its reason (dead-letters list).",
        epilog='example:\n  heimdall-training ops promote heimdall-localization 11 --reason "roll back: v12 misplaces '
               'the Genova repeater"')
    promote.add_argument("model_name", metavar="NAME", help="the registered model (the service's HEIMDALL_MODEL_NAME)")
    promote.add_argument("version", type=int, metavar="VERSION", help="an existing version, to become champion")
    promote.add_argument("--reason", required=True, help="why: it travels in the events and on the version's tags")


def run_models(args, settings) -> int:
    import contextlib
    import sys

    from foundation.logs import configure_logging
    from training import model_views

    configure_logging(None)
    registry = model_views.open_registry(settings)
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the view alone (MLflow prints links)
        if args.action == "list":
            shown = model_views.versions_table(registry)
        elif args.action == "show":
            shown = model_views.version_report(registry, args.version)
        else:
            shown = model_views.comparison(settings, registry, args.first, args.second)
    print(shown)
    return 0
