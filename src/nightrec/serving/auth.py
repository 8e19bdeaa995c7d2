"""API keys with scopes, and rate limits per key, for the lookup service (docs/security.md).

A key is `nrk_<id>_<secret>`: the id names its record in the Redis hash `{p}:keys`, which holds a
random salt and the SHA-256 of salt + secret, never the secret itself (it is shown once, at
creation). The secret is 256 random bits, so a fast hash is safe here and costs the hot path
about a microsecond; slow password hashes exist for guessable secrets.

Each worker re-reads the key records at most every `auth.refresh_seconds` (one HVALS), so a
request costs no Redis command for its key, and a revoked key stops working on every worker
within that time. Rate limits are token buckets in Redis shared by all workers; a worker takes
tokens in slices sized to its share of the key's traffic (up to LEASE_SECONDS of the key's rate)
and gives back what it did not spend within LEASE_SECONDS, so a busy key costs one Redis call per
slice, not one per request, and never gets more than its limit (docs/security.md).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import logging
import math
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import orjson
from redis.exceptions import RedisError

from nightrec.serving.audit import entry
from nightrec.serving.layout import Keys
from nightrec.settings import AuthSettings, RateLimit

SCOPES = ("read", "events", "admin")
LEASE_SECONDS = 0.05  # a worker's slice of a key's bucket: this much of its rate, used within this time
TOKEN = re.compile(rb"^(?i:Bearer) nrk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")  # HTTP's schemes ignore case
KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
KEY_ID = re.compile(r"^[0-9a-f]{12}$")
# A key's token bucket: refill by elapsed time (Redis's clock, so every worker agrees) and by the
# ARGV[4] tokens a worker gives back unspent, take up to ARGV[3]; returns {tokens granted, seconds
# until one is available when none was}.
TAKE_SCRIPT = """
local rate, burst, wanted = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = burst
if state[1] then tokens = tonumber(state[1]) + math.max(0, now - tonumber(state[2])) * rate end
tokens = math.min(burst, tokens + tonumber(ARGV[4]))
local granted = math.min(wanted, math.floor(tokens))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(1000 * burst / rate) + 1000)
if granted > 0 then return {granted, '0'} end
return {0, tostring((1 - tokens) / rate)}
"""
log = logging.getLogger("nightrec.serving")


class KeyCommandError(ValueError):
    """A key command that cannot be done: an invalid name or scope, a name in use, no such key."""


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    scope: str
    salt: str
    sha256: str
    created_at: str
    created_by: str
    revoked_at: str | None = None
    revoked_by: str | None = None

    def allows(self, scope: str) -> bool:
        return self.scope == scope or self.scope == "admin"

    def matches(self, secret: bytes) -> bool:
        return hmac.compare_digest(digest(self.salt, secret), self.sha256)


def digest(salt: str, secret: bytes) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret).hexdigest()


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def required_scope(method: str) -> str:
    """DELETE (erasure) needs admin, POST (events, opt-outs) events, anything else read; admin may all."""
    return {"DELETE": "admin", "POST": "events"}.get(method, "read")


# --- key management (the CLI; synchronous Redis client) --------------------------------------------


def create_key(client, keys: Keys, name: str, scope: str, actor: str) -> tuple[str, ApiKey]:
    """A new key: (the token, shown once; its stored record). Names are unique among live keys."""
    if not KEY_NAME.match(name) or KEY_ID.match(name):
        raise KeyCommandError(f"invalid key name {name!r}: 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit, "
                              "and not 12 hex digits (that is how ids look)")
    if scope not in SCOPES:
        raise KeyCommandError(f"unknown scope {scope!r}: use one of {', '.join(SCOPES)}")
    if any(k.name == name for k in list_keys(client, keys) if k.revoked_at is None):
        raise KeyCommandError(f"a live key is already named {name!r}: revoke it first, or choose another name")
    key_id, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_hex(16)
    record = ApiKey(key_id, name, scope, salt, digest(salt, secret.encode()), now_iso(), actor)
    pipe = client.pipeline(transaction=False)
    pipe.hset(keys.api_keys, key_id, json.dumps(asdict(record)))
    pipe.xadd(keys.audit, entry("key_created", actor, name, id=key_id, scope=scope))
    pipe.execute()
    return f"nrk_{key_id}_{secret}", record


def list_keys(client, keys: Keys) -> list[ApiKey]:
    """Every key ever created (revoked ones too), oldest first."""
    records = [ApiKey(**json.loads(value)) for value in client.hvals(keys.api_keys)]
    return sorted(records, key=lambda k: (k.created_at, k.id))


def revoke_key(client, keys: Keys, id_or_name: str, actor: str) -> list[ApiKey]:
    """Revoke the live key with this id (or every live key with this name); every worker refuses it
    within auth.refresh_seconds."""
    live = [k for k in list_keys(client, keys) if k.revoked_at is None]
    matches = [k for k in live if k.id == id_or_name] or [k for k in live if k.name == id_or_name]
    if not matches:
        raise KeyCommandError(f"no live key has the id or name {id_or_name!r} (nightrec keys list)")
    revoked = [ApiKey(**{**asdict(k), "revoked_at": now_iso(), "revoked_by": actor}) for k in matches]
    pipe = client.pipeline(transaction=False)
    for record in revoked:
        pipe.hset(keys.api_keys, record.id, json.dumps(asdict(record)))
        pipe.delete(keys.rate(record.id))
        pipe.xadd(keys.audit, entry("key_revoked", actor, record.name, id=record.id, scope=record.scope))
    pipe.execute()
    return revoked


# --- the service (asynchronous Redis client) ---------------------------------------------------------


class Keyring:
    """The live keys, as one worker knows them: re-read at most every `refresh_seconds`."""

    def __init__(self, redis, keys: Keys, refresh_seconds: float):
        self.redis, self.hash_key, self.refresh_seconds = redis, keys.api_keys, refresh_seconds
        self.live: dict[str, ApiKey] = {}
        self.read_at = -math.inf
        self.reading: asyncio.Future | None = None

    async def find(self, authorization: bytes | None) -> ApiKey | None:
        """The live key this Authorization header carries, else None."""
        if time.monotonic() - self.read_at >= self.refresh_seconds:
            if self.reading is None:  # one read for all the requests that find the keys stale
                self.reading = asyncio.ensure_future(self._read())
            await asyncio.shield(self.reading)
        match = TOKEN.match(authorization or b"")
        key = self.live.get(match[1].decode()) if match else None
        return key if key is not None and key.matches(match[2]) else None

    async def _read(self) -> None:
        started = time.monotonic()  # what is read is at least this old: revocation stays within refresh_seconds
        try:
            live = {}
            for value in await self.redis.hvals(self.hash_key):
                try:
                    key = ApiKey(**json.loads(value))
                except (ValueError, TypeError) as error:  # one bad record must not lock everyone out
                    log.error("%s holds an unreadable key record, skipped: %r", self.hash_key, error)
                    continue
                if key.revoked_at is None:
                    live[key.id] = key
            self.live, self.read_at = live, started
        finally:
            self.reading = None


@dataclass
class Lease:
    tokens: int      # left to spend
    expires: float   # monotonic time after which they go back to the bucket
    size: int        # what was taken: the next slice doubles when this one ran out, halves when it did not


class RateLimiter:
    """Per-key token buckets in Redis, taken a slice at a time (see the module's docstring)."""

    def __init__(self, redis, keys: Keys, limits: dict[str, RateLimit]):
        self.take = redis.register_script(TAKE_SCRIPT)
        self.keys, self.limits = keys, limits
        self.leases: dict[str, Lease] = {}
        self.blocked: dict[str, float] = {}  # key id -> until when this worker turns it away without asking
        self.locks: dict[str, asyncio.Lock] = {}

    def max_slice(self, scope: str) -> int:
        limit = self.limits[scope]
        return max(1, min(limit.burst, int(limit.per_second * LEASE_SECONDS)))

    def _spend(self, key: ApiKey, now: float) -> bool:
        lease = self.leases.get(key.id)
        if lease is not None and lease.tokens > 0 and now < lease.expires:
            lease.tokens -= 1
            return True
        return False

    async def wait(self, key: ApiKey) -> float:
        """0 when the request may go on, else the seconds until the key's bucket holds a token again."""
        now = time.monotonic()
        if self._spend(key, now):
            return 0.0
        if now < self.blocked.get(key.id, 0.0):
            return self.blocked[key.id] - now
        async with self.locks.setdefault(key.id, asyncio.Lock()):  # one Redis call per slice, not per request
            now = time.monotonic()
            if self._spend(key, now):
                return 0.0
            # A slice follows this worker's share of the traffic: a busy worker asks for more, a quiet
            # one for less, and gives back what it did not spend, so other workers can have it.
            old = self.leases.pop(key.id, None)
            size = 1 if old is None else min(self.max_slice(key.scope), old.size * 2) if old.tokens == 0 \
                else max(1, old.size // 2)
            limit = self.limits[key.scope]
            granted, wait = await self.take(keys=[self.keys.rate(key.id)], args=[
                limit.per_second, limit.burst, size, old.tokens if old else 0])
            if int(granted) == 0:
                wait = float(wait)
                self.blocked[key.id] = now + min(wait, LEASE_SECONDS)
                return max(wait, 0.001)
            self.leases[key.id] = Lease(int(granted) - 1, now + LEASE_SECONDS, size)
            return 0.0


class Guard:
    """The service's outermost ASGI layer when auth is on: every request but the open paths needs a
    live key (401), of a scope that allows it (403), within the key's rate limit (429). What passes
    carries its key in scope["nightrec.key"] (the requester of opt-outs and erasures)."""

    def __init__(self, app, auth: AuthSettings, keys: Keys, redis_of: Callable[[], object],
                 count: Callable[[str], None]):
        self.app, self.auth, self.keys, self.redis_of, self.count = app, auth, keys, redis_of, count
        self.open_paths = frozenset(auth.open_paths)
        self.keyring: Keyring | None = None
        self.limiter: RateLimiter | None = None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            return await self.app(scope, receive, send)
        if self.keyring is None:  # the Redis client exists once the app has started
            self.keyring = Keyring(self.redis_of(), self.keys, self.auth.refresh_seconds)
            self.limiter = RateLimiter(self.redis_of(), self.keys, self.auth.rate_limits)
        authorization = next((value for name, value in scope["headers"] if name == b"authorization"), None)
        try:
            key = await self.keyring.find(authorization)
            if key is None:  # a header of another scheme (Basic, a bare key) presents no API key at all
                bearer = authorization is not None and authorization[:7].lower() == b"bearer "
                return await self.refuse(send, "unknown" if bearer else "missing")
            needed = required_scope(scope["method"])
            if not key.allows(needed):
                return await self.refuse(send, "scope", f"key {key.name!r} has scope {key.scope}; "
                                                        f"{scope['method']} {scope['path']} needs {needed}")
            wait = await self.limiter.wait(key)
        except RedisError as error:
            log.warning("redis error checking a key on %s: %r", scope["path"], error)
            return await respond(send, 503, {"detail": "key store unavailable"})
        if wait:
            limit = self.auth.rate_limits[key.scope]
            return await self.refuse(send, "rate", f"key {key.name!r} is over its rate limit ({limit.per_second:g}/s, "
                                                   f"burst {limit.burst})", wait)
        scope["nightrec.key"] = key
        return await self.app(scope, receive, send)

    async def refuse(self, send, reason: str, detail: str = "", wait: float = 0.0) -> None:
        self.count(reason)
        if reason == "missing":
            await respond(send, 401, {"detail": "an API key is needed: send Authorization: Bearer <key>"},
                          [(b"www-authenticate", b'Bearer realm="nightrec"')])
        elif reason == "unknown":
            await respond(send, 401, {"detail": "unknown or revoked API key"},
                          [(b"www-authenticate", b'Bearer realm="nightrec", error="invalid_token"')])
        elif reason == "scope":
            await respond(send, 403, {"detail": detail})
        else:  # HTTP wants whole seconds in Retry-After; the body has the exact wait
            await respond(send, 429, {"detail": detail, "retry_after_seconds": round(wait, 3)},
                          [(b"retry-after", str(max(1, math.ceil(wait))).encode())])


async def respond(send, status: int, body: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    payload = orjson.dumps(body)
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()), *headers]})
    await send({"type": "http.response.body", "body": payload})


def exposure_warning(host: str, auth: AuthSettings) -> str | None:
    """The warning `nightrec serve` logs when anyone on the network could call it without a key."""
    if auth.enabled or host in ("127.0.0.1", "localhost", "::1"):
        return None
    return (f"auth is off ([auth] enabled = false) and the service listens on {host}: anyone who reaches it can "
            "read and post for any user. Turn it on (NIGHTREC_AUTH__ENABLED=true) and create keys with "
            "`nightrec keys create`; docs/security.md")
