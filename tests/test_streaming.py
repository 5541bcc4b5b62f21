"""Streams on a real tritonserver: generators served as decoupled models, checked end to end over gRPC and SSE.

The generators here wait for the test to say it received each response before they yield the next: a response
held back until the stream ends would leave them waiting, so "each response arrives when it is yielded" is
checked without timing anything.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse

import numpy as np
import pytest
from helpers import wait_until
from tritonclient.utils import InferenceServerException

import tritonnb

WAIT_S = 30.0  # a generator waits at most this long for the test: far longer than any hop takes


def _sse_events(http_url: str, model: str, body: dict, on_event=None) -> list[dict]:
    """POST to ``/generate_stream`` and read its server-sent events as they arrive."""
    parts = urllib.parse.urlsplit(http_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.request("POST", f"/v2/models/{model}/generate_stream", json.dumps(body))
        response = connection.getresponse()
        assert response.status == 200
        events = []
        for raw in response:
            if raw.startswith(b"data:"):
                events.append(json.loads(raw[len(b"data:") :]))
                if on_event is not None:
                    on_event(events[-1])
        return events
    finally:
        connection.close()


class Paced:
    """A generator function that yields ``count`` responses, each only once the test has received the one before."""

    def __init__(self, value: float = 1.0) -> None:
        self.value = value
        self.received = threading.Semaphore(0)
        self.waited_too_long = False

    def __call__(self, x):
        for i in range(int(x[0])):
            yield x * 0 + self.value + i
            if i + 1 < int(x[0]) and not self.received.acquire(timeout=WAIT_S):
                self.waited_too_long = True
                return


def test_a_generator_is_served_as_a_stream_and_each_yield_arrives_as_it_is_yielded(triton):
    paced = Paced(10.0)
    card = tritonnb.bind(paced, "paced")  # a callable object whose __call__ is a generator
    assert card.spec.stream and card.spec.max_batch_size == 0
    assert "/generate_stream" in card.curl and "async_stream_infer" in card.python

    received = []
    for outputs in tritonnb.client("paced").stream(np.array([4], np.float32)):  # over a gRPC stream
        received.append(outputs["output"].tolist())
        paced.received.release()
    assert received == [[10.0], [11.0], [12.0], [13.0]]

    paced.received = threading.Semaphore(0)  # the last response is not waited for: start counting afresh
    events = _sse_events(triton.http_url, "paced", {"x": [3]}, on_event=lambda _: paced.received.release())
    assert [e["output"] for e in events] == [10.0, 11.0, 12.0]
    assert not paced.waited_too_long, "a response was held back until the stream ended"


def test_async_generator_and_a_function_returning_an_iterator_with_stream_true(triton):
    async def counting(x):
        import asyncio

        for i in range(3):
            await asyncio.sleep(0.01)
            yield x + i

    tritonnb.bind(counting, "async_counting")
    assert [o["output"].item() for o in tritonnb.client("async_counting").stream([1.0])] == [1.0, 2.0, 3.0]

    def returns_iterator(x):
        return iter([x, x * 2])

    tritonnb.bind(returns_iterator, "returns_iterator", stream=True)
    assert [o["output"].item() for o in tritonnb.client("returns_iterator").stream([3.0])] == [3.0, 6.0]

    def returns_once(x):
        return x

    tritonnb.bind(returns_once, "forced", stream=True)
    with pytest.raises(InferenceServerException, match="not a generator: yield each response"):
        list(tritonnb.client("forced").stream([1.0]))


def test_eight_concurrent_streams_run_side_by_side(triton):
    together = threading.Barrier(8, timeout=WAIT_S)  # passes only when all 8 generators run at once

    def side_by_side(x):
        yield x
        together.wait()
        yield x + 1

    tritonnb.bind(side_by_side, "side_by_side")
    results: dict[int, list] = {}

    def one(i: int) -> None:
        results[i] = [o["output"].item() for o in tritonnb.client("side_by_side").stream([float(i)])]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == {i: [float(i), float(i) + 1] for i in range(8)}
    assert not together.broken


def test_an_exception_mid_stream_reaches_the_client_after_the_responses_sent(triton):
    def fails_third(x):
        yield x
        yield x + 1
        raise ValueError("boom at step 3")

    tritonnb.bind(fails_third, "fails_third")
    tritonnb.bind(lambda x: x * 2, "still_serving", max_batch_size=0)
    received = []
    with pytest.raises(InferenceServerException, match=r"ValueError after 2 responses: boom at step 3"):
        for outputs in tritonnb.client("fails_third").stream([1.0]):
            received.append(outputs["output"].item())
    assert received == [1.0, 2.0]
    events = _sse_events(triton.http_url, "fails_third", {"x": [5]})
    assert [e.get("output") for e in events[:2]] == [5.0, 6.0]
    assert "boom at step 3" in events[2]["error"]
    assert tritonnb.client("still_serving")([2.0])["output"].tolist() == [4.0]
    again = tritonnb.client("fails_third").stream([0.0])  # the model itself still serves streams
    assert [next(again)["output"].item(), next(again)["output"].item()] == [0.0, 1.0]
    with pytest.raises(InferenceServerException, match="boom"):
        next(again)


def _counting_model(name: str) -> dict:
    counts = {"started": 0, "closed": 0}

    def counting(x):
        counts["started"] += 1
        try:
            while True:
                time.sleep(0.05)
                yield x
        finally:
            counts["closed"] += 1

    tritonnb.bind(counting, name)
    return counts


def _generator_stopped(counts: dict) -> bool:
    """Whether the stream's generator was closed: the one that started has ended, and a closed generator runs no
    further step."""
    wait_until(lambda: counts["closed"], WAIT_S, "the generator was closed")
    return counts["started"] == counts["closed"] == 1


def test_a_grpc_client_leaving_the_stream_stops_the_generator(triton):
    counts = _counting_model("counting_grpc")
    for index, _ in enumerate(tritonnb.client("counting_grpc").stream([1.0])):
        if index == 2:
            break  # the loop's end closes the stream: the request is cancelled
    assert _generator_stopped(counts)
    assert tritonnb.server().models["counting_grpc"].stream_stats.figures().cancelled == 1


def test_an_sse_client_that_disconnects_stops_the_generator(triton):
    counts = _counting_model("counting_sse")
    parts = urllib.parse.urlsplit(triton.http_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    connection.request("POST", "/v2/models/counting_sse/generate_stream", json.dumps({"x": [1]}))
    response = connection.getresponse()
    events = 0
    for raw in response:
        events += raw.startswith(b"data:")
        if events == 3:
            break
    connection.close()
    assert _generator_stopped(counts)


def test_unbind_ends_open_streams_with_an_error_and_closes_their_generators(triton):
    counts = _counting_model("unbound_stream")
    stream = tritonnb.client("unbound_stream").stream([1.0])
    next(stream)
    tritonnb.unbind("unbound_stream")
    with pytest.raises(InferenceServerException, match="stopped serving while this stream was open"):
        for _ in stream:
            pass
    assert _generator_stopped(counts)


def _open_streams(name: str, count: int, length: int) -> tuple[list[threading.Thread], dict[int, list]]:
    results: dict[int, list] = {}

    def one(i: int) -> None:
        try:
            results[i] = [o["output"].tolist() for o in tritonnb.client(name).stream(np.array([length], np.int64))]
        except Exception as error:  # a broken stream: recorded, and the test fails on it
            results[i] = [repr(error)]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    return threads, results


def _generation(value: int, started: threading.Semaphore, go_on: threading.Event):
    def gen(x):
        started.release()
        for _ in range(int(x[0])):
            yield x * 0 + value
            go_on.wait(WAIT_S)

    return gen


def _wait_started(started: threading.Semaphore, count: int) -> None:
    for _ in range(count):
        assert started.acquire(timeout=WAIT_S)


@pytest.mark.parametrize("change", ["same signature", "signature change"])
def test_streams_in_flight_finish_on_the_old_code_through_a_swap(triton, change):
    name = "swapped" if change == "same signature" else "reloaded"
    started, go_on = threading.Semaphore(0), threading.Event()
    spec = {"inputs": ["x:int64[1]"], "outputs": ["output:int64[1]"]}
    tritonnb.bind(_generation(1, started, go_on), name, **spec)
    threads, results = _open_streams(name, 3, 4)
    _wait_started(started, 3)  # three streams in flight on the first generation

    new_spec = spec if change == "same signature" else {"inputs": ["x:int64[1]"], "outputs": ["output:int64[-1]"]}
    card = tritonnb.bind(_generation(2, threading.Semaphore(0), threading.Event()), name, **new_spec)
    assert card.result.action == ("swapped" if change == "same signature" else "reloaded")
    go_on.set()
    for thread in threads:
        thread.join(60)
    assert results == {i: [[1]] * 4 for i in range(3)}  # 0 broken: every old stream ended whole, on the old code
    new = [o["output"].tolist() for o in tritonnb.client(name).stream(np.array([1], np.int64))]
    assert new == [[2]]


def test_a_stream_is_not_batched_and_bad_options_are_named(triton):
    def gen(x):
        yield x

    with pytest.raises(tritonnb.errors.SpecError, match="a stream is not batched"):
        tritonnb.bind(gen, "batched_stream", max_batch_size=8)
    with pytest.raises(tritonnb.errors.SpecError, match="streams: a timeout applies"):
        tritonnb.bind(gen, "timed_stream", timeout_s=1.0)
    assert "batched_stream" not in triton.models and "timed_stream" not in triton.models


def test_every_model_the_generate_extension_serves_shows_its_curl(triton):
    import subprocess

    card = tritonnb.bind(lambda x: x * 2, "generate_me")
    command = card.generate_curl
    assert "/v2/models/generate_me/generate " in command
    answer = json.loads(subprocess.run(command, shell=True, capture_output=True, text=True, check=True).stdout)
    assert answer["output"] == 2.0  # a one-element output comes back as a plain value
    matrix = tritonnb.bind(lambda x: x, "matrix", inputs=["x:float32[2,2]"], outputs=["output:float32[2,2]"])
    assert matrix.generate_curl is None  # the extension cannot shape a 2-d input


def test_perf_measures_first_response_and_between_responses_and_the_panel_shows_streams(triton):
    from tritonnb.loadtest.perf import run_perf
    from tritonnb.observe.monitor import Monitor, target_for
    from tritonnb.ui.render import models_html, strip_html

    def five(x):
        for i in range(5):
            time.sleep(0.005)
            yield x + i

    tritonnb.bind(five, "five")
    result = run_perf(triton, "five", [1, 2], duration_s=1.0, warmup_s=0.2)
    assert result.streaming and [row["concurrency"] for row in result.rows] == [1, 2]
    for row in result.rows:
        assert row["errors"] == 0 and row["requests"] > 0
        assert 0 < row["p50_ms"] <= row["p95_ms"] and 0 < row["between_p50_ms"] <= row["between_p95_ms"]
        assert row["throughput"] > row["streams_per_s"] > 0  # five responses per stream
    assert "time to the first response" in result._repr_html_() and "between_p95_ms" in repr(result)

    def endless(x):
        while True:
            time.sleep(0.005)
            yield x

    tritonnb.bind(endless, "endless")
    endless_result = run_perf(triton, "endless", [2], duration_s=1.0, warmup_s=0.2)  # streams cut when time is up
    assert endless_result.rows[0]["throughput"] > 0 and endless_result.rows[0]["errors"] == 0

    snapshot = Monitor(target_for(server=triton)).poll()
    figures = snapshot.models["five"].stream
    assert figures is not None and figures.streams >= sum(row["requests"] for row in result.rows)
    assert figures.first_response_ms is not None and figures.between_responses_ms is not None
    assert 'class="tnb-streams"' in models_html(snapshot) and "active streams" in strip_html("five", snapshot)
    assert snapshot.models["five"].batching.startswith("stream")
