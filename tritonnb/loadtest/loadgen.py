"""Closed-loop HTTP load against one Triton model, run in its own process so it does not share the kernel's GIL.

``python -m tritonnb.loadtest.loadgen [--host H] --port P --model NAME --concurrency C --duration S --body FILE
--header-length N`` prints one JSON line: every request's latency in ms, the error count, a few error
messages, and the elapsed time. With ``--stream`` the body is the JSON of Triton's generate extension, each client
opens one ``/generate_stream`` stream after another, and the latencies are each stream's time to its first response;
the times between responses come as ``between_ms``, and ``responses`` counts them.
Requests go to the server tritonnb started (127.0.0.1 by default); the loop is bounded by ``--duration`` (and
``--max-requests``).
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import re
import sys
import threading
import time
from collections.abc import Callable

__all__ = ["error_message", "main", "read_stream", "run", "run_clients", "run_streams"]


def error_message(payload: bytes) -> str:
    """The telling line of an error response: the served function's exception, not Triton's traceback around it."""
    try:
        text = json.loads(payload)["error"]
    except (ValueError, KeyError, TypeError):
        return payload[:300].decode(errors="replace")
    lines = [line.strip() for line in text.replace("\\n", "\n").splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"^[\w.]+(Error|Exception): ", line)]
    return (raised[-1] if raised else text)[:300]


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
    host: str, port: int, model: str, concurrency: int, duration_s: float, warmup_s: float, body: bytes
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

    def client() -> None:
        nonlocal responses
        connection = http.client.HTTPConnection(host, port, timeout=60)
        while (sent := time.perf_counter()) < stop_at:
            try:
                connection.request("POST", path, body, {"Content-Type": "application/json"})
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
) -> dict:
    """C clients, each on its own keep-alive connection, sending back to back until the time is up."""
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(header_length)}
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
                failed = None if response.status == 200 else f"{response.status} {error_message(payload)}"
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


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run, print the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--body", required=True, help="file with the request body (JSON header + binary tensors)")
    parser.add_argument("--header-length", type=int, default=0)
    parser.add_argument("--max-requests", type=int, default=10_000_000)
    parser.add_argument("--stream", action="store_true", help="open /generate_stream streams (body: generate JSON)")
    args = parser.parse_args(argv)
    with open(args.body, "rb") as f:
        body = f.read()
    if args.stream:
        streamed = run_streams(args.host, args.port, args.model, args.concurrency, args.duration, args.warmup, body)
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
    )
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
