"""`HTTPTransport`: a healthy replica serves its live state dict over HTTP, as this
library's streams; a recovering one fetches it in parallel parts.

The sender serves ``GET /<token>/<step>/index`` (the tree without its tensors, saved once per
`send_checkpoint`) and ``GET /<token>/<step>/<i>`` (part i: a flat dict of tensors, saved
straight from the live tensors into the response for each request, GPU tensors through the
library's bounded staging ring). The receiver loads everything with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import hmac
import http.client
import io
import logging
import secrets
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import urlsplit

import serializer

from ._common import (
    CheckpointTransport,
    Deadline,
    StepMismatchError,
    T,
    TransportError,
    TransportTimeoutError,
    check_index,
    check_part,
    dest_part,
    join,
    seconds,
    split,
    tensors,
)

__all__ = ["HTTPTransport"]

logger = logging.getLogger(__name__)

_GRACE_S = 5.0  # how long aborted requests get to unwind
_MAX_FETCHES = 16  # parts fetched at once, whatever the index says


@dataclass(frozen=True)
class _Served:
    step: int
    index: bytes
    parts: list[dict[str, Any]]


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], transport: HTTPTransport[Any]) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.transport = transport
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def setup(self) -> None:
        # the socket's timeout, for every read and write
        self.request.settimeout(self.server.transport._timeout)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s: " + format, self.address_string(), *args)

    def _reply(self, status: int, message: str) -> None:
        body = message.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        try:
            self._get()
        except OSError as e:  # the receiver went away, or disallow_checkpoint cut it off
            logger.debug("checkpoint request %s ended early: %s", self.path, e)
        finally:
            self.close_connection = True

    def _get(self) -> None:
        transport = self.server.transport
        fields = urlsplit(self.path).path.strip("/").split("/")
        if len(fields) != 3 or not hmac.compare_digest(
            fields[0].encode(), transport._token.encode()
        ):
            self._reply(403, "unknown checkpoint address")
            return
        try:
            step = int(fields[1])
            what = fields[2]
            if what != "index":
                int(what)
        except ValueError:
            self._reply(404, f"no such checkpoint part: {self.path.split('/', 2)[-1]!r}")
            return
        try:
            served = transport._begin(step, self.connection)
        except _Refused as e:
            self._reply(e.status, str(e))
            return
        try:
            if what == "index":
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(served.index)))
                self.end_headers()
                self.wfile.write(served.index)
                return
            i = int(what)
            if not 0 <= i < len(served.parts):
                self._reply(404, f"step {step} has {len(served.parts)} parts, not part {i}")
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            serializer.save(served.parts[i], self.wfile)
        except OSError:
            raise
        except Exception:  # the receiver sees the stream end early (TruncatedError)
            logger.exception("checkpoint request %s failed", self.path)
        finally:
            transport._end(self.connection)


class HTTPTransport(CheckpointTransport[T]):
    """torchft's `CheckpointTransport` over HTTP, with this library's streams.

    Args:
        timeout: the server's bound on each socket read and write, on how long a request
            waits for `send_checkpoint`, and on how long `disallow_checkpoint` waits for
            requests in flight.
        num_chunks: how many parts a checkpoint is served in, fetched in parallel (0 or 1:
            one part). Tensors sharing a storage stay in one part.
        state_dict: if given, `recv_checkpoint` calls it and loads each part whose every
            path is a tensor of what it returns into those tensors, in place.
        host: the address to bind; 127.0.0.1 by default (only this machine can connect).
        port: the port to bind; 0 picks a free one.
        advertise: the host name peers are told in `metadata()`; default: `host`.
        map_location: where received tensors go when not received in place.
    """

    def __init__(
        self,
        timeout: timedelta,
        num_chunks: int = 0,
        state_dict: Callable[[], T] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        advertise: str | None = None,
        map_location: Any = "cpu",
    ) -> None:
        self._timeout = seconds(timeout)
        self._num_chunks = num_chunks
        self._state_dict = state_dict
        self._map_location = map_location
        self._token = secrets.token_hex(16)
        self._cond = threading.Condition()
        self._served: _Served | None = None
        self._inflight: set[socket.socket] = set()
        self._closed = False
        self._server = _Server((host, port), self)
        bound = self._server.server_address
        name = advertise or str(bound[0])
        if ":" in name:
            name = f"[{name}]"
        self._url = f"http://{name}:{bound[1]}/{self._token}/"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            args=(0.1,),
            name="serializer-http-transport",
            daemon=True,
        )
        self._thread.start()

    # -- sender --------------------------------------------------------------------------

    def metadata(self) -> str:
        """This transport's address: a URL with a random token that peers need to fetch."""
        return self._url

    def send_checkpoint(
        self, dst_ranks: list[int], step: int, state_dict: T, timeout: timedelta
    ) -> None:
        """Serve `state_dict` as step `step` until `disallow_checkpoint`; returns at once.
        The tensors are read by each request: do not change them until then."""
        index, parts = split(state_dict, step, self._num_chunks)
        buf = io.BytesIO()
        serializer.save(index, buf)
        with self._cond:
            if self._closed:
                raise TransportError("send_checkpoint after shutdown")
            self._served = _Served(step, buf.getvalue(), cast(list[dict[str, Any]], parts))
            self._cond.notify_all()

    def disallow_checkpoint(self) -> None:
        """Stop serving: new requests wait for the next `send_checkpoint`, and this waits
        for requests in flight (up to the timeout, then cuts them off)."""
        with self._cond:
            self._served = None
            self._cond.wait_for(lambda: not self._inflight, self._timeout)
            if self._inflight:
                logger.warning(
                    "disallow_checkpoint: %d requests still in flight after %g s; cutting them off",
                    len(self._inflight),
                    self._timeout,
                )
                self._abort_inflight()

    def _abort_inflight(self) -> None:
        for conn in self._inflight:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if not self._cond.wait_for(lambda: not self._inflight, _GRACE_S):
            raise TransportTimeoutError(
                f"{len(self._inflight)} checkpoint requests did not stop within {_GRACE_S} s"
            )

    def _begin(self, step: int, conn: socket.socket) -> _Served:
        """The checkpoint for a request of step `step`. A request for a later step than the
        one served (or while none is) waits for it, up to the timeout; an earlier one is
        refused at once."""

        def ready() -> bool:
            return self._closed or (self._served is not None and self._served.step >= step)

        with self._cond:
            self._cond.wait_for(ready, self._timeout)
            served = self._served
            if self._closed:
                raise _Refused(503, "the checkpoint transport is shut down")
            if served is None:
                raise _Refused(
                    503, f"no checkpoint served within {self._timeout:g} s (asked for {step})"
                )
            if served.step != step:
                raise _Refused(409, f"serving step {served.step}, not step {step}")
            self._inflight.add(conn)
            return served

    def _end(self, conn: socket.socket) -> None:
        with self._cond:
            self._inflight.discard(conn)
            self._cond.notify_all()

    def shutdown(self, wait: bool = True) -> None:
        """Stop serving and close the server; requests in flight are cut off. Never waits
        more than a few seconds."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._served = None
            self._cond.notify_all()
            for conn in self._inflight:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

        def close() -> None:
            self._server.shutdown()
            self._server.server_close()

        if wait:
            close()
            self._thread.join(_GRACE_S)
        else:
            threading.Thread(target=close, daemon=True).start()

    # -- receiver ------------------------------------------------------------------------

    def recv_checkpoint(self, src_rank: int, metadata: str, step: int, timeout: timedelta) -> T:
        """Fetch step `step` from the peer whose `metadata()` is `metadata`: the index,
        then every part in parallel, each loaded with ``weights_only=True`` (in place where
        a `state_dict` callable was given and has the part's tensors)."""
        deadline = Deadline(timeout, f"receiving step {step} from {metadata}")
        fetch = _Fetch(metadata, step, deadline)
        with fetch:
            index = fetch.get("index", serializer.load)
            paths = check_index(index, step, fetch.peer)
            dest = tensors(self._state_dict()) if self._state_dict is not None else {}

            def part(i: int) -> dict[str, Any]:
                into = dest_part(dest, paths[i])
                if into is not None:
                    fetch.get(str(i), lambda f: serializer.load_into(into, f))
                    return into
                loaded = fetch.get(str(i), lambda f: serializer.load(f, self._map_location))
                check_part(loaded, paths[i], fetch.peer)
                return cast(dict[str, Any], loaded)

            with ThreadPoolExecutor(max_workers=min(len(paths), _MAX_FETCHES)) as pool:
                futures = [pool.submit(part, i) for i in range(len(paths))]
                try:
                    parts = [f.result() for f in futures]
                except BaseException:
                    fetch.cancel()
                    raise
            return cast(T, join(index, parts, fetch.peer))


class _Body(io.RawIOBase):
    """A response body whose every read is bounded by what is left of the deadline."""

    def __init__(self, resp: http.client.HTTPResponse, sock: socket.socket, deadline: Deadline):
        self._resp = resp
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self._resp.isclosed():  # the whole body was read
            return 0
        self._sock.settimeout(self._deadline.remaining())
        return self._resp.readinto(b)


class _Fetch:
    """The requests of one `recv_checkpoint`; `cancel` cuts off those still running."""

    def __init__(self, metadata: str, step: int, deadline: Deadline) -> None:
        url = urlsplit(metadata)
        if url.scheme != "http" or not url.hostname or url.port is None:
            raise TransportError(f"not an HTTPTransport address: {metadata!r}")
        self.peer = metadata
        self._host, self._port = url.hostname, url.port
        self._base = f"{url.path.rstrip('/')}/{step}/"
        self._deadline = deadline
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._cancelled = False

    def __enter__(self) -> _Fetch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            for sock in self._socks:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def get(self, what: str, load: Callable[[Any], Any]) -> Any:
        """`load` on the body of ``GET <base>/<what>``; the body must be exactly one stream."""
        conn = http.client.HTTPConnection(
            self._host, self._port, timeout=self._deadline.remaining()
        )
        sock: socket.socket | None = None
        try:
            conn.connect()
            sock = conn.sock  # getresponse drops it where the server closes after the body
            assert sock is not None
            with self._lock:
                if self._cancelled:
                    raise TransportError(f"receiving from {self.peer} was cancelled")
                self._socks.add(sock)
            conn.request("GET", self._base + what)
            resp = conn.getresponse()
            if resp.status != 200:
                message = resp.read(4096).decode("utf-8", "replace").strip()
                if resp.status == 409:
                    raise StepMismatchError(f"{self.peer}: {message}")
                raise TransportError(f"{self.peer} refused part {what}: {resp.status} {message}")
            body = _Body(resp, sock, self._deadline)
            result = load(body)
            if body.read(1):
                raise TransportError(f"{self.peer} sent bytes after the stream of part {what}")
            return result
        except TimeoutError as e:
            if isinstance(e, TransportTimeoutError):
                raise
            raise self._deadline.error() from e
        except (OSError, http.client.HTTPException) as e:
            if self._deadline.left() <= 0:
                raise self._deadline.error() from e
            raise TransportError(f"fetching part {what} from {self.peer} failed: {e}") from e
        finally:
            with self._lock:
                if sock is not None:
                    self._socks.discard(sock)
            conn.close()
            if sock is not None:
                sock.close()
