"""The parser shape of the operator commands made of actions (`dead-letters list|redrive`,
`models list|show|compare`, `ops promote`): each action has its own help page, its description
and examples printed as written, so that `--help` reads like a man page. One place builds that
shape, so the commands keep one look."""

from __future__ import annotations

import argparse


def add_actions(sub, command: str, *, help: str, listing: str):
    """`heimdall-training COMMAND ACTION`, its `list` action (help `listing`) already added; returns
    the actions, for the others."""
    actions = sub.add_parser(command, help=help).add_subparsers(dest="action", required=True)
    add_action(actions, "list", help=listing, description=listing.capitalize() + ".",
               epilog=f"example:\n  heimdall-training {command} list")
    return actions


def add_action(actions, name: str, *, help: str, description: str, epilog: str) -> argparse.ArgumentParser:
    """One action, its description and epilog (the examples) kept as written, line breaks included."""
    return actions.add_parser(name, formatter_class=argparse.RawDescriptionHelpFormatter, help=help,
                              description=description, epilog=epilog)
