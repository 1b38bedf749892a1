"""Random access to a remote stream: only the needed byte ranges, several fetched at once.

A real HTTP server on 127.0.0.1 (the standard library's, answering Range requests) serves a
stream; fsspec's HTTP file system reads it (its `cat_ranges` sends concurrent requests)."""

from __future__ import annotations

import http.server
import io
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import serializer

pytest.importorskip("fsspec")
pytest.importorskip("aiohttp", reason="fsspec's HTTP file system needs aiohttp")

_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


class _Log:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0
        self.served = 0  # bytes of GET bodies


def _handler(data: bytes, log: _Log) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_HEAD(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()

        def do_GET(self) -> None:
            with log.lock:
                log.in_flight += 1
                log.most_in_flight = max(log.most_in_flight, log.in_flight)
            try:
                time.sleep(0.05)  # a remote store's latency, so that overlap shows
                m = _RANGE.fullmatch(self.headers.get("Range", ""))
                if m is None:
                    start, end = 0, len(data)
                    self.send_response(200)
                else:
                    start = int(m.group(1))
                    end = min(int(m.group(2)) + 1 if m.group(2) else len(data), len(data))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
                body = data[start:end]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                with log.lock:  # counted before the client can have it
                    log.served += len(body)
                self.end_headers()
                self.wfile.write(body)
            finally:
                with log.lock:
                    log.in_flight -= 1

    return Handler


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, dict[str, torch.Tensor], _Log]]:
    g = torch.Generator().manual_seed(0)
    state = {f"w{i}": torch.randn(1 << 20, generator=g) for i in range(8)}  # 8 x 4 MiB
    buf = io.BytesIO()
    serializer.save(state, buf)
    log = _Log()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(buf.getvalue(), log))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/s.srlz", state, log
    finally:
        server.shutdown()
        server.server_close()


def test_load_keys_fetches_only_its_records_several_at_once(served: Any) -> None:
    url, state, log = served
    keys = ["w1", "w5", "w6"]
    # a small block cache for the header: the records are fetched as the library asks
    part = serializer.load_keys(url, keys, storage_options={"block_size": 1 << 16})
    for key in keys:
        assert torch.equal(part[key], state[key]), key
    records = 3 * (4 << 20)
    assert log.served < records + (1 << 20), f"{log.served} bytes served for {records}"
    assert log.most_in_flight >= 2, "the records' ranges are fetched concurrently"


def test_open_get_tensor_fetches_a_large_record_in_concurrent_pieces(served: Any) -> None:
    url, state, log = served
    with serializer.open(url, storage_options={"block_size": 1 << 16}) as f:
        served_before = log.served
        assert torch.equal(f.get_tensor("w3"), state["w3"])
        assert log.served - served_before <= (4 << 20) + 64
        assert torch.equal(f.get_slice("w4")[10:20], state["w4"][10:20])
    assert log.most_in_flight >= 1


def test_load_of_a_url_reads_all_records_verified(served: Any) -> None:
    url, state, _ = served
    loaded = serializer.load(url, storage_options={"block_size": 1 << 16})
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
