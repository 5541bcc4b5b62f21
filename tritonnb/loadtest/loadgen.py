"""Closed-loop HTTP load against one Triton model, run in its own process so it does not share the kernel's GIL.

``python -m tritonnb.loadtest.loadgen [--host H] --port P --model NAME --concurrency C --duration S --body FILE
--header-length N`` prints one JSON line: every request's latency in ms, the error count, a few error
messages, and the elapsed time. The body is a request in Triton's binary tensor extension (a JSON header of N bytes,
then the raw tensors, asking for binary outputs: ``tritonnb.loadtest.perf.request_body`` builds it). On loopback
that was as fast as JSON for a float32[64] request and 20 times faster for a float32[3,224,224] one; gRPC was up to
20 % slower for the small one and 3-14 % faster for the large one, so it stays HTTP. Each answer is checked: status
200, the outputs asked for, each holding as many values as its shape says, binary outputs filling the body exactly;
anything else counts as an error (the check takes about 4 us an answer).
With ``--stream`` the body is the JSON of Triton's generate extension, each client opens one ``/generate_stream``
stream after another, and the latencies are each stream's time to its first response; the times between responses
come as ``between_ms``, and ``responses`` counts them.
Requests go to the server tritonnb started (127.0.0.1 by default); the loop is bounded by ``--duration`` (and
``--max-requests``). ``--header NAME:VALUE`` (repeatable) adds a header to every request, e.g. the access token a
private server needs; ``--header-env NAME=VAR`` adds header NAME with the value of environment variable VAR, which
keeps a token off the command line (other users of the machine can read command lines, as ``ps`` does).
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping

__all__ = [
    "answer_problem",
    "error_message",
    "extra_headers",
    "main",
    "read_stream",
    "requested_outputs",
    "run",
    "run_clients",
    "run_streams",
]

# bytes per element of each fixed-size Triton datatype (BYTES elements are each a 4-byte length, then the bytes)
ITEM_SIZE = {
    "BOOL": 1,
    "INT8": 1,
    "UINT8": 1,
    "INT16": 2,
    "UINT16": 2,
    "FP16": 2,
    "BF16": 2,
    "INT32": 4,
    "UINT32": 4,
    "FP32": 4,
    "INT64": 8,
    "UINT64": 8,
    "FP64": 8,
}


def error_message(payload: bytes) -> str:
    """The telling line of an error response: the served function's exception, not Triton's traceback around it."""
    try:
        text = json.loads(payload)["error"]
    except (ValueError, KeyError, TypeError):
        return payload[:300].decode(errors="replace")
    lines = [line.strip() for line in text.replace("\\n", "\n").splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"^[\w.]+(Error|Exception): ", line)]
    return (raised[-1] if raised else text)[:300]


def requested_outputs(body: bytes, header_length: int) -> list[str] | None:
    """The output names a request's JSON header asks for; None when it asks for none by name (Triton then answers
    with every output) or is not JSON."""
    try:
        header = json.loads(body[:header_length])
        return [output["name"] for output in header["outputs"]] or None
    except (ValueError, KeyError, TypeError):
        return None


def _bytes_elements_fit(data: bytes, start: int, end: int, count: int) -> bool:
    """Whether ``data[start:end]`` holds exactly ``count`` BYTES elements (each a little-endian 4-byte length, then
    that many bytes)."""
    position = start
    for _ in range(count):
        if position + 4 > end:
            return False
        position += 4 + int.from_bytes(data[position : position + 4], "little")
    return position == end


def answer_problem(payload: bytes, header_length: str | None, expected: list[str] | None) -> str | None:
    """Why a 200 answer is not a whole inference answer, or None when it is. ``header_length`` is the answer's
    ``Inference-Header-Content-Length`` (None: the body is all JSON); ``expected`` the output names asked for."""
    try:
        length = len(payload) if header_length is None else int(header_length)
        outputs = json.loads(payload[:length])["outputs"]
        names = [output["name"] for output in outputs]
        if not names or (expected is not None and sorted(names) != sorted(expected)):
            return f"the answer holds outputs {names}; asked for {expected or 'any'}"
        offset = length
        for output in outputs:
            count = math.prod(output["shape"])
            size = (output.get("parameters") or {}).get("binary_data_size")
            if size is None:  # a JSON output: a flat list of values
                if len(output["data"]) != count:
                    return f"output {output['name']!r} holds {len(output['data'])} values for shape {output['shape']}"
                continue
            item = ITEM_SIZE.get(output["datatype"])
            fits = size == count * item if item else _bytes_elements_fit(payload, offset, offset + size, count)
            if not fits:
                return f"output {output['name']!r} has {size} bytes for {output['datatype']}{output['shape']}"
            offset += size
    except (ValueError, KeyError, TypeError) as error:
        return f"not an inference answer ({error!r}): {payload[:200].decode(errors='replace')}"
    if offset != len(payload):
        return f"the answer carries {len(payload) - length} bytes of tensors, its header accounts for {offset - length}"
    return None


def read_stream(response: http.client.HTTPResponse, stop_at: float) -> tuple[list[float], str | None, bool]:
    """The arrival times (``time.perf_counter()``) of a server-sent-events stream's responses until ``stop_at``, its
    error if any, and whether it was read to its end (a stream still going at ``stop_at`` is left: its connection
    cannot carry another)."""
    arrivals: list[float] = []
    failed = None
    for raw in response:
        now = time.perf_counter()
        if now > stop_at:
            return arrivals, failed, False
        line = raw.strip()
        if not line.startswith(b"data:") or failed is not None:
            continue
        try:
            event = json.loads(line[len(b"data:") :])
        except ValueError:
            failed = f"not JSON: {line[:200].decode(errors='replace')}"
            continue
        if isinstance(event, dict) and "error" in event and "model_name" not in event:
            failed = error_message(line[len(b"data:") :])
        else:
            arrivals.append(now)
    return arrivals, failed, True


def run_clients(client: Callable[[], None], concurrency: int, start_at: float, stop_at: float) -> float:
    """Run ``client`` on ``concurrency`` threads until each returns; the seconds of the window they were measured in."""
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return min(time.perf_counter(), stop_at) - start_at


def run_streams(
    host: str,
    port: int,
    model: str,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    body: bytes,
    headers: Mapping[str, str] | None = None,
) -> dict:
    """C clients, each opening one SSE stream after another on its own connection until the time is up. Responses
    count from the end of the warm-up on (also those of a stream opened before it); times to first response count
    for streams opened after it."""
    path = f"/v2/models/{model}/generate_stream"
    first: list[float] = []
    between: list[float] = []
    responses = 0
    errors: list[str] = []
    lock = threading.Lock()
    start_at = time.perf_counter() + warmup_s
    stop_at = start_at + duration_s
    sent_headers = {"Content-Type": "application/json", **(headers or {})}

    def client() -> None:
        nonlocal responses
        connection = http.client.HTTPConnection(host, port, timeout=60)
        while (sent := time.perf_counter()) < stop_at:
            try:
                connection.request("POST", path, body, sent_headers)
                response = connection.getresponse()
                if response.status != 200:
                    arrivals, failed = [], f"{response.status} {error_message(response.read())}"
                else:
                    arrivals, failed, whole = read_stream(response, stop_at)
                    if not whole:  # the time is up mid-stream: what arrived so far counts
                        connection.close()
                    elif not arrivals and failed is None:
                        failed = "the stream ended without a response"
            except (OSError, http.client.HTTPException) as error:
                arrivals, failed = [], repr(error)
                connection.close()
                connection = http.client.HTTPConnection(host, port, timeout=60)
            with lock:
                if sent >= start_at:
                    if failed is not None:
                        errors.append(failed)
                    if arrivals:
                        first.append((arrivals[0] - sent) * 1000)
                between.extend((b - a) * 1000 for a, b in itertools.pairwise(arrivals) if b >= start_at)
                responses += sum(1 for t in arrivals if t >= start_at)

    elapsed = run_clients(client, concurrency, start_at, stop_at)
    return {
        "latencies_ms": first,
        "between_ms": between,
        "responses": responses,
        "errors": len(errors),
        "error_samples": errors[:5],
        "elapsed_s": elapsed,
    }


def run(
    host: str,
    port: int,
    model: str,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    body: bytes,
    header_length: int,
    max_requests: int,
    headers: Mapping[str, str] | None = None,
) -> dict:
    """C clients, each on its own keep-alive connection, sending back to back until the time is up; an answer that
    is not a 200 carrying the outputs asked for (see ``answer_problem``) counts as an error."""
    expected = requested_outputs(body, header_length or len(body))
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(header_length),
        **(headers or {}),
    }
    path = f"/v2/models/{model}/infer"
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start_at = time.perf_counter() + warmup_s
    stop_at = start_at + duration_s

    def client() -> None:
        connection = http.client.HTTPConnection(host, port, timeout=60)
        while True:
            sent = time.perf_counter()
            if sent >= stop_at or len(latencies) + len(errors) >= max_requests:
                return
            try:
                connection.request("POST", path, body, headers)
                response = connection.getresponse()
                payload = response.read()
                if response.status != 200:
                    failed = f"{response.status} {error_message(payload)}"
                else:
                    header = response.getheader("Inference-Header-Content-Length")
                    failed = answer_problem(payload, header, expected)
            except (OSError, http.client.HTTPException) as error:
                failed = repr(error)
                connection.close()
                connection = http.client.HTTPConnection(host, port, timeout=60)
            if sent < start_at:  # warm-up: not counted
                continue
            with lock:
                if failed is None:
                    latencies.append((time.perf_counter() - sent) * 1000)
                else:
                    errors.append(failed)

    elapsed = run_clients(client, concurrency, start_at, stop_at)
    return {"latencies_ms": latencies, "errors": len(errors), "error_samples": errors[:5], "elapsed_s": elapsed}


def extra_headers(given: list[str], from_env: list[str]) -> dict[str, str]:
    """The headers of ``--header NAME:VALUE`` and ``--header-env NAME=VAR``; ValueError naming a bad one."""
    headers: dict[str, str] = {}
    for text in given:
        name, colon, value = text.partition(":")
        if not colon or not name.strip():
            raise ValueError(f"--header {text!r}: expected NAME:VALUE")
        headers[name.strip()] = value.strip()
    for text in from_env:
        name, equals, variable = text.partition("=")
        if not equals or not name.strip() or not variable:
            raise ValueError(f"--header-env {text!r}: expected NAME=VARIABLE")
        if variable not in os.environ:
            raise ValueError(f"--header-env {text!r}: environment variable {variable} is not set")
        headers[name.strip()] = os.environ[variable]
    return headers


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run, print the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--version", type=int, help="this version of the model (default: the newest)")
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--body", required=True, help="file with the request body (JSON header + binary tensors)")
    parser.add_argument("--header-length", type=int, default=0)
    parser.add_argument("--max-requests", type=int, default=10_000_000)
    parser.add_argument("--stream", action="store_true", help="open /generate_stream streams (body: generate JSON)")
    parser.add_argument("--header", action="append", default=[], metavar="NAME:VALUE", help="send this header too")
    parser.add_argument(
        "--header-env",
        action="append",
        default=[],
        metavar="NAME=VAR",
        help="send header NAME with the value of environment variable VAR (keeps a token off the command line)",
    )
    args = parser.parse_args(argv)
    try:
        headers = extra_headers(args.header, args.header_env)
    except ValueError as error:
        parser.error(str(error))
    with open(args.body, "rb") as f:
        body = f.read()
    if args.version is not None:  # the model's URL path names the version: /v2/models/NAME/versions/N/...
        args.model = f"{args.model}/versions/{args.version}"
    if args.stream:
        streamed = run_streams(
            args.host, args.port, args.model, args.concurrency, args.duration, args.warmup, body, headers
        )
        json.dump(streamed, sys.stdout)
        return 0
    result = run(
        args.host,
        args.port,
        args.model,
        args.concurrency,
        args.duration,
        args.warmup,
        body,
        args.header_length,
        args.max_requests,
        headers,
    )
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
