"""The HTTP transport of the remote clients: httpx's interface on aiohttp's connection pool.

Why: httpcore's pool scans every connection and every queued request on each request's entry and exit (and
reads each socket's peer address to test it for expiry), so at 32 connections its bookkeeping cost about
2.5-4 ms of CPU per call on the loopback benchmark, against 0.3 ms for aiohttp's pool: the engine reached only
0.8-0.9 of the ideal call rate on a busy machine. httpx stays the interface (the DashScope SDK takes an
`httpx.AsyncClient`, and both clients classify httpx's exceptions), so only the transport changes: requests
go out through one `aiohttp.ClientSession` per batch (its event loop's), and aiohttp's errors come back as the
httpx errors they correspond to, so a failure reason reads the same whichever transport carried it.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import httpx


@contextmanager
def _as_httpx(request: httpx.Request) -> Iterator[None]:
    """aiohttp's exceptions as the httpx ones the clients classify (timeout, connect, read, protocol)."""
    try:
        yield
    except aiohttp.ConnectionTimeoutError as e:
        raise httpx.ConnectTimeout(str(e) or "connect timeout", request=request) from e
    except (TimeoutError, aiohttp.ServerTimeoutError) as e:
        raise httpx.ReadTimeout(str(e) or "read timeout", request=request) from e
    except aiohttp.ClientConnectorError as e:
        raise httpx.ConnectError(str(e), request=request) from e
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientResponseError) as e:
        raise httpx.RemoteProtocolError(str(e) or type(e).__name__, request=request) from e
    except (aiohttp.ClientError, OSError) as e:
        raise httpx.ReadError(str(e) or type(e).__name__, request=request) from e


class _Body(httpx.AsyncByteStream):
    """A reply's body, read from aiohttp as it arrives (SSE streams stay streams)."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request):
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx(self._request):
            async for chunk in self._response.content.iter_any():
                yield chunk

    async def aclose(self) -> None:
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport over one aiohttp session, created on first use in the running event loop (a batch's
    `asyncio.run`) and closed with the client. `max_connections` bounds the pool as `httpx.Limits` would."""

    def __init__(self, max_connections: int = 100, connect_timeout_s: float | None = 10.0):
        self.max_connections = max(1, int(max_connections))
        self.connect_timeout_s = connect_timeout_s
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # the limit counts connections in use and idle: all of them kept alive, none reopened per call
            connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=self.max_connections,
                                             keepalive_timeout=30.0)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                                  skip_auto_headers=("User-Agent", "Accept-Encoding"))
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout: dict[str, Any] = request.extensions.get("timeout") or {}
        session = self._get_session()
        with _as_httpx(request):
            response = await session.request(
                request.method, str(request.url), headers=request.headers.multi_items(), data=request.content or None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout.get("connect", self.connect_timeout_s),
                                              sock_read=timeout.get("read")))
        return httpx.Response(status_code=response.status, headers=response.raw_headers,
                              stream=_Body(response, request), request=request,
                              extensions={"http_version": b"HTTP/1.1"})

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def async_client(max_connections: int, timeout_s: float, headers: dict[str, str] | None = None,
                 connect_timeout_s: float = 10.0) -> httpx.AsyncClient:
    """An `httpx.AsyncClient` on the aiohttp transport: `max_connections` kept alive, `timeout_s` per read."""
    return httpx.AsyncClient(transport=AiohttpTransport(max_connections, connect_timeout_s), headers=headers,
                             timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s))
