"""The HTTP protocol `nightrec serve` runs uvicorn with: its httptools protocol, minus trailers.

httptools reports a chunked body's trailer fields through the same callback as headers, and uvicorn
appends them to the request's header list, the very list the app was handed. A trailer that arrives
with the body would then pass for a header, an Authorization one included (docs/security.md).
The service reads nothing from trailers, so they are dropped.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeadersOnly(HttpToolsProtocol):
    def on_header(self, name: bytes, value: bytes) -> None:
        if "method" not in self.scope:  # on_headers_complete sets it: whatever comes after is a trailer
            super().on_header(name, value)
