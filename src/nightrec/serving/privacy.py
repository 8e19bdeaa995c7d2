"""Opt-out and erasure requests, as the service and the CLI take them (docs/privacy.md).

A request takes effect in Redis at once: the user is marked (`<p>:optout:{id}`, sharing the user's
hash tag, so the lookup reads the mark in the MGET it already makes, and the event script checks
it in the same call), and their consumed items and lists are deleted from every version held. The
request is appended to the `{p}:privacy` stream, which the nightly privacy stage drains into the
`privacy/requests` table and carries out: an erasure deletes the user's rows everywhere and then
removes the mark, so Redis keeps nothing of them either.
"""

from __future__ import annotations

import datetime as dt
import json

from nightrec.serving.audit import entry
from nightrec.serving.layout import Keys

KINDS = ("opt_out", "erasure")
COLUMNS = ("at", "kind", "user_id", "requester")


def request_fields(kind: str, user_id: int, requester: str) -> dict[str, str]:
    if kind not in KINDS:
        raise ValueError(f"unknown privacy request kind {kind!r}")
    return {"at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"), "kind": kind,
            "user_id": str(int(user_id)), "requester": requester}


def version_keys(keys: Keys, version: str, variants, user_id: int) -> list[str]:
    """A user's keys in one version: their list and their lists of the experiment's variants."""
    return [keys.user(version, user_id), *(keys.variant_user(version, name, user_id) for name in variants)]


def user_keys(client, keys: Keys, user_id: int) -> list[str]:
    """Every key of this user in the versions Redis holds, and their consumed items: all share the
    hash tag {user_id}, so one DEL removes them, on a cluster too."""
    names = [keys.consumed(user_id)]
    for raw in client.zrange(keys.versions, 0, -1):
        version = raw.decode()
        experiment = json.loads(client.hget(keys.meta(version), "experiment") or "{}")
        names += version_keys(keys, version, experiment.get("variants", {}), user_id)
    return names


def request(client, keys: Keys, kind: str, user_ids: list[int], requester: str, actor: str) -> list[str]:
    """Record the requests, mark the users and delete their keys; returns the request ids (stream ids).
    The mark names the latest request (`<kind>:<request id>`): the night removes an erasure's mark
    only while it still names that erasure, so a request that came later is never lost."""
    ids = []
    for user_id in user_ids:
        request_id = client.xadd(keys.privacy, request_fields(kind, user_id, requester)).decode()
        client.set(keys.opted_out(user_id), f"{kind}:{request_id}")
        client.delete(*user_keys(client, keys, user_id))
        client.xadd(keys.audit, entry("opt_out" if kind == "opt_out" else "erasure_requested", actor, user_id,
                                      request=request_id))
        ids.append(request_id)
    return ids


def pending_users(client, keys: Keys) -> set[int]:
    """Users whose requests the nightly privacy stage has not drained yet."""
    start = client.get(keys.privacy_drained)
    entries = client.xrange(keys.privacy, min=b"(" + start if start else b"-")
    return {int(fields[b"user_id"]) for _, fields in entries}


def sweep(client, keys: Keys, version: str, variants, user_ids: set[int]) -> int:
    """Delete these users' lists from a version being loaded (requests that came in during the night);
    returns how many keys went."""
    return sum(client.delete(*version_keys(keys, version, variants, u)) for u in sorted(user_ids))
