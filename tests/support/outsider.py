"""A RabbitMQ user outside the ops allow-list, of one test's own. `broker.INTRUDER` is one user for
the whole node, which any test session running beside this one may delete when its vhost closes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from tests.support.broker import rabbitmqctl


@contextmanager
def outsider(vhost_name: str) -> Iterator[tuple[str, str]]:
    """(user, password) of a user with every permission on `vhost_name` and on no allow-list; deleted after."""
    user, password = f"heimdall-test-outsider-{uuid.uuid4().hex[:8]}", "outsider-pw"
    rabbitmqctl("add_user", user, password)
    try:
        rabbitmqctl("set_permissions", "-p", vhost_name, user, ".*", ".*", ".*")
        yield user, password
    finally:
        rabbitmqctl("delete_user", user)
