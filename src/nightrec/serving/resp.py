"""A small async Redis client for the lookup hot path: one connection per worker process, on which
the commands of all concurrent requests are pipelined (Redis answers in order; the commands of one
event-loop turn go out in one write), replies parsed by hiredis. The per-command cost of redis-py's asyncio
client (a pool checkout, a lock, a reader task)
is most of a lookup; on this machine one raw ASGI worker served ~4.8k lookups/s through redis-py's
pipeline, ~9.4k with valkey-glide and ~18k with this client (docs/serving-benchmarks.md).

Single Redis only (cluster mode uses redis-py's cluster client). URLs as redis-py reads them:
redis://[user:password@]host:port/db, unix:///path.sock, rediss:// for TLS with the query options
ssl_ca_certs, ssl_certfile, ssl_keyfile, ssl_cert_reqs=none (no verification), ssl_check_hostname.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque

import hiredis
from redis.connection import SSLConnection, parse_url
from redis.exceptions import ConnectionError, ResponseError, TimeoutError


class _Protocol(asyncio.Protocol):
    def __init__(self):
        self.reader = hiredis.Reader()
        self.waiting: deque[asyncio.Future] = deque()
        self.unsent: list[bytes] = []  # commands of this event-loop turn, written together (one syscall)
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data: bytes):
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            future = self.waiting.popleft()
            if future.done():  # its caller timed out; the reply still had to be consumed in order
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(ResponseError(str(reply)))
            else:
                future.set_result(reply)

    def connection_lost(self, exc):
        self.lost = ConnectionError(f"connection to redis lost: {exc or 'closed'}")
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(self.lost)

    def call(self, *args) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.waiting.append(future)
        if not self.unsent:
            loop.call_soon(self._flush)
        self.unsent.append(hiredis.pack_command(args))
        return future

    def _flush(self):
        if self.lost is None:
            self.transport.write(b"".join(self.unsent))
        self.unsent.clear()


class MultiplexedRedis:
    def __init__(self, url: str, timeout: float = 1.0):
        self.options = parse_url(url)
        self.timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task | None = None  # one connect attempt, shared by all waiters

    async def execute(self, *args, retry: bool = True):
        """One command within `timeout` (connecting included). A command that may safely run twice
        (retry=True, e.g. MGET) is sent once more on a fresh connection when the connection drops."""
        protocol = self._protocol
        try:
            async with asyncio.timeout(self.timeout):
                if protocol is None or protocol.lost is not None:
                    protocol = await self._connected()
                try:
                    return await protocol.call(*args)
                except ConnectionError:
                    if not retry:
                        raise
                    return await (await self._connected()).call(*args)
        except asyncio.TimeoutError:
            # A silent server (failover, partition) would stall every later reply: start afresh.
            if self._protocol is not None and self._protocol.transport is not None:
                self._protocol.transport.abort()
            raise TimeoutError(f"redis did not answer within {self.timeout} s") from None

    async def mget(self, *keys: str) -> list[bytes | None]:
        return await self.execute("MGET", *keys)

    async def _connected(self) -> _Protocol:
        if self._protocol is not None and self._protocol.lost is None:
            return self._protocol
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._connect())
        # shield: one waiter's timeout must not cancel the attempt the others wait for
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> _Protocol:
        loop, o = asyncio.get_running_loop(), self.options
        try:
            if "path" in o:
                _, protocol = await loop.create_unix_connection(_Protocol, o["path"])
            else:
                _, protocol = await loop.create_connection(_Protocol, o.get("host", "localhost"), o.get("port", 6379),
                                                           ssl=self._tls())
        except OSError as error:
            raise ConnectionError(f"cannot connect to redis: {error!r}") from None
        try:
            if o.get("password"):
                auth = ("AUTH", o["username"], o["password"]) if o.get("username") else ("AUTH", o["password"])
                await protocol.call(*auth)
            if o.get("db"):
                await protocol.call("SELECT", o["db"])
        except BaseException:
            protocol.transport.close()
            raise
        self._protocol = protocol
        return protocol

    def _tls(self) -> ssl.SSLContext | None:
        """TLS for rediss:// URLs, from the same query options redis-py reads."""
        o = self.options
        if o.get("connection_class") is not SSLConnection:
            return None
        context = ssl.create_default_context(cafile=o.get("ssl_ca_certs"))
        if o.get("ssl_certfile"):
            context.load_cert_chain(o["ssl_certfile"], o.get("ssl_keyfile"))
        if str(o.get("ssl_cert_reqs", "required")).lower() in ("none", "cert_none"):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif str(o.get("ssl_check_hostname", "true")).lower() in ("false", "0", "no"):
            context.check_hostname = False
        return context

    async def aclose(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
