"""``tritonnb.client``, the load generator of ``%triton_perf`` and the card's Python snippet send tensors as binary
data (Triton's binary tensor extension) and get binary answers; bytes tensors round-trip exactly.

What goes over the wire is read by a real loopback HTTP proxy in front of a real tritonserver: it forwards every
request, records the inference ones with their answers, and can cut the last byte off every answer."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import http.server
import json
import socket
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator

import numpy as np
import pytest
from helpers import free_ports, infer_json

import tritonnb
from tritonnb.loadtest.loadgen import answer_problem, requested_outputs
from tritonnb.loadtest.perf import request_body, run_perf
from tritonnb.model_client import ModelClient
from tritonnb.ui.card import python_snippet

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length"}
TEXTS = [b"hello", b"\xff\x00z", b""]  # not UTF-8, a NUL, empty: JSON could not carry them as they are


@dataclasses.dataclass
class Exchange:
    """One inference request as it went to Triton, and Triton's answer as it came back."""

    headers: dict[str, str]
    body: bytes
    status: int
    answer_headers: dict[str, str]
    answer: bytes

    def request_header(self) -> dict:
        """The request's JSON header (the whole body when it has no binary part)."""
        return json.loads(self.body[: int(self.headers.get("inference-header-content-length", len(self.body)))])

    def answer_header(self) -> dict:
        """The answer's JSON header (the whole body when it has no binary part)."""
        return json.loads(
            self.answer[: int(self.answer_headers.get("inference-header-content-length", len(self.answer)))]
        )


class RecordingProxy:
    """A loopback HTTP/1.1 proxy in front of a Triton server that records each ``/infer`` exchange; with
    ``truncate`` it cuts the last byte off each inference answer (an answer that lies about its tensors)."""

    def __init__(self, upstream: str) -> None:
        parts = urllib.parse.urlsplit(upstream)
        self.exchanges: list[Exchange] = []
        self.truncate = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._upstreams: list[http.client.HTTPConnection] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                self.upstream = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
                with proxy._lock:
                    proxy._sockets.append(self.connection)
                    proxy._upstreams.append(self.upstream)

            def log_message(self, format: str, *args: object) -> None:
                pass

            def forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                self.upstream.request(self.command, self.path, body or None, headers)
                response = self.upstream.getresponse()
                answer = response.read()
                answer_headers = {k.lower(): v for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP}
                if self.path.endswith("/infer"):
                    if proxy.truncate and response.status == 200:
                        answer = answer[:-1]
                    recorded = {k.lower(): v for k, v in self.headers.items()}
                    with proxy._lock:
                        proxy.exchanges.append(Exchange(recorded, body, response.status, answer_headers, answer))
                self.send_response(response.status)
                for key, value in answer_headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_GET = do_POST = forward

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", free_ports(1)[0]), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def take(self) -> list[Exchange]:
        """The exchanges recorded so far, forgetting them."""
        with self._lock:
            taken, self.exchanges = self.exchanges, []
        return taken

    def close(self) -> None:
        """Stop listening and close every connection, both sides (tritonserver's stop waits for open ones)."""
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):  # the client closed it already
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            for upstream in self._upstreams:
                upstream.close()


def mixed(x, text):
    """A float input doubled, and a bytes input upper-cased byte for byte."""
    return {"y": x * 2, "loud": np.array([[t.upper()] for t in text.reshape(-1)], dtype=object)}


@pytest.fixture(scope="module")
def proxy(triton) -> Iterator[RecordingProxy]:
    """The model ``mixed`` (float32 and bytes, in and out) on the module's server, and a recording proxy to it."""
    tritonnb.bind(mixed, "mixed", inputs=["x:float32[4]", "text:bytes[1]"], outputs=["y:float32[4]", "loud:bytes[1]"])
    recorder = RecordingProxy(triton.http_url)
    yield recorder
    recorder.close()


def assert_binary(exchange: Exchange, outputs: list[str]) -> None:
    """The request carried its tensors as binary data and asked for ``outputs`` as binary; the answer did so too."""
    assert exchange.status == 200, exchange.answer[:300]
    request = exchange.request_header()
    assert "inference-header-content-length" in exchange.headers
    assert request["inputs"] and all(
        "data" not in i and i["parameters"]["binary_data_size"] > 0 for i in request["inputs"]
    )
    header_length = int(exchange.headers["inference-header-content-length"])
    assert sum(i["parameters"]["binary_data_size"] for i in request["inputs"]) == len(exchange.body) - header_length
    asked = {o["name"]: o.get("parameters", {}).get("binary_data") for o in request.get("outputs", [])}
    assert asked == dict.fromkeys(outputs, True) or request.get("parameters", {}).get("binary_data_output") is True
    answer = exchange.answer_header()
    assert "inference-header-content-length" in exchange.answer_headers
    assert sorted(o["name"] for o in answer["outputs"]) == sorted(outputs)
    assert all("data" not in o and "binary_data_size" in o["parameters"] for o in answer["outputs"])


def test_client_sends_binary_tensors_both_ways_and_bytes_round_trip(proxy):
    proxy.take()
    client = ModelClient("mixed", proxy.url)
    try:
        x = np.arange(12, dtype=np.float32).reshape(3, 4)
        text = np.array([[t] for t in TEXTS], dtype=object)
        out = client(x, text)
    finally:
        client.close()
    assert out["y"].dtype == np.float32 and out["y"].tolist() == (x * 2).tolist()
    assert out["loud"].reshape(-1).tolist() == [b"HELLO", b"\xff\x00Z", b""]
    (exchange,) = proxy.take()
    assert_binary(exchange, ["y", "loud"])
    assert [i["datatype"] for i in exchange.request_header()["inputs"]] == ["FP32", "BYTES"]


def test_card_python_snippet_runs_as_shown_and_sends_binary_tensors(proxy, triton, tmp_path):
    proxy.take()
    snippet = python_snippet(proxy.url, triton.models["mixed"].spec)
    assert "binary_data=True" in snippet
    (tmp_path / "text.bin").write_bytes(b"hello")  # the snippet sends a bytes input's file
    run = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, check=True, cwd=tmp_path)
    printed = run.stdout
    assert printed.splitlines() == ["y [[2. 2. 2. 2.]]", "loud [[b'HELLO']]"]
    (exchange,) = proxy.take()
    assert_binary(exchange, ["y", "loud"])


def test_load_generator_sends_binary_tensors_and_every_answer_checks_out(proxy, triton):
    proxy.take()
    data = {"x": np.ones((2, 4), np.float32), "text": np.array([[TEXTS[1]], [TEXTS[2]]], dtype=object)}
    result = run_perf(None, "mixed", [2], 1.0, input_data=data, warmup_s=0, url=proxy.url, token=triton.access_token)
    (row,) = result.rows
    assert row["errors"] == 0 and row["requests"] >= 5, result.error_samples
    exchanges = proxy.take()
    assert len(exchanges) >= row["requests"]
    for exchange in exchanges:
        assert_binary(exchange, ["y", "loud"])
    assert (
        answer_problem(exchanges[0].answer, exchanges[0].answer_headers["inference-header-content-length"], None)
        is None
    )


def test_load_generator_counts_answers_that_lie_about_their_tensors_as_errors(proxy, triton):
    proxy.truncate = True
    try:
        result = run_perf(None, "mixed", [1], 0.5, warmup_s=0, url=proxy.url, token=triton.access_token)
    finally:
        proxy.truncate = False
    (row,) = result.rows
    assert row["requests"] >= 3 and row["errors"] == row["requests"]
    assert "bytes" in result.error_samples[0], result.error_samples


def test_answer_check_reads_real_answers(proxy, triton):
    """Real answers from the server pass, binary and JSON; one that names other outputs, or whose header length or
    values do not add up, is caught."""
    spec = triton.models["mixed"].spec
    arrays = {"x": np.ones((1, 4), np.float32), "text": np.array([[b"a\x00"]], dtype=object)}
    body, header_length = request_body(spec, arrays)
    assert requested_outputs(body, header_length) == ["y", "loud"]
    connection = http.client.HTTPConnection("127.0.0.1", urllib.parse.urlsplit(triton.http_url).port, timeout=10)
    headers = {"Inference-Header-Content-Length": str(header_length), "Content-Type": "application/octet-stream"}
    connection.request("POST", "/v2/models/mixed/infer", body, headers)
    response = connection.getresponse()
    answer, length = response.read(), response.getheader("Inference-Header-Content-Length")
    connection.close()
    assert response.status == 200 and length is not None
    assert answer_problem(answer, length, ["y", "loud"]) is None
    assert "outputs ['y', 'loud']; asked for ['y', 'z']" in answer_problem(answer, length, ["y", "z"])
    assert "bytes of tensors" in answer_problem(answer + b"\x00", length, None)
    assert "has 15 bytes for FP32[1, 4]" in answer_problem(
        answer.replace(b'"binary_data_size":16', b'"binary_data_size":15'), length, None
    )
    assert answer_problem(answer, str(int(length) - 1), None).startswith("not an inference answer")

    status, parsed = infer_json(
        triton.http_url,
        "mixed",
        [
            {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
            {"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": ["hi"]},
        ],
    )
    assert status == 200
    assert answer_problem(json.dumps(parsed).encode(), None, None) is None
    parsed["outputs"][0]["data"].pop()
    assert "3 values for shape [1, 4]" in answer_problem(json.dumps(parsed).encode(), None, None)
