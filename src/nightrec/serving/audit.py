"""The audit trail of admin actions: one entry per action in the Redis stream `{p}:audit`, which the
nightly drain moves into the `audit/log` Delta table (`nightrec audit` reads both).

Everything that acts (the CLI, the lookup service, the nightly run) can reach Redis, so every
action is recorded the same way, at once, and by installs without the pipeline's libraries too.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import logging
import socket

from redis.exceptions import RedisError

from nightrec.serving.client import connect
from nightrec.serving.layout import Keys

ACTIONS = ("key_created", "key_revoked", "opt_out", "erasure_requested", "erasure_done", "rollback",
           "experiment_started", "experiment_stopped")
COLUMNS = ("at", "action", "actor", "target", "detail")
log = logging.getLogger("nightrec.audit")


def entry(action: str, actor: str, target: str, **detail) -> dict[str, str]:
    """Stream fields of one action; `detail` holds what else says what happened (JSON)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    return {"at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"), "action": action,
            "actor": actor, "target": str(target), "detail": json.dumps(detail, sort_keys=True, default=str)}


def record(settings, action: str, actor: str, target: str, **detail) -> None:
    """Append one action to the audit stream (its own connection: for callers without a client).
    Best effort, after the action: a Redis error is logged, never raised, so a retry of the caller
    does not do the action (a rollback, say) twice."""
    try:
        client = connect(settings.redis.url, settings.redis.cluster)
        try:
            client.xadd(Keys(settings.redis.prefix).audit, entry(action, actor, target, **detail))
        finally:
            client.close()
    except RedisError as error:
        log.error("audit entry %s %s by %s not recorded: %r (detail %s)", action, target, actor, error, detail)


def cli_actor() -> str:
    """Who runs a command: the operating-system user and host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (containers)
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


def key_actor(name: str) -> str:
    """Who calls the service: the API key's name (`-` when auth is off)."""
    return f"key:{name}"


def night_actor(ds: str) -> str:
    return f"night:{ds}"


def as_row(fields: dict, columns: tuple[str, ...] = COLUMNS) -> dict[str, str]:
    """A stream entry's fields (bytes) as a row of the audit table (or of another ledger's columns)."""
    return {name: fields.get(name.encode(), b"").decode() for name in columns}
