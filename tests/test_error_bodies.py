"""What a client reads when a request fails: one line naming the model, the error class and its message, with no
traceback and no path of the kernel's, for every kind of failure; the traceback goes to the server's log."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request

import pytest
from helpers import fp32, infer_json

import tritonnb

SPEC = {"inputs": ["x:float32[4]"], "outputs": ["y:float32[4]"]}
ONE = [fp32("x", [1, 4], [1, 2, 3, 4])]
PATH = re.compile(r"/[\w.-]+/")  # a file path such as /tmp/folderXXXX/1/model.py


def boom(x):
    raise ValueError("boom")


def _clean(text: str) -> str:
    assert "Traceback" not in text and "At:" not in text and not PATH.search(text), text
    assert "\n" not in text.strip(), text
    return text


@pytest.fixture(scope="module")
def failing(triton):
    def sleepy(x):
        time.sleep(1)
        return x

    def narrow(x):
        return x[:, :2]

    def picky(x):
        if (x < 0).any():
            raise ValueError("negative")
        return x

    def stream(x):
        yield x
        raise ValueError("mid-stream")

    tritonnb.bind(boom, "batched", **SPEC)
    tritonnb.bind(boom, "unbatched", max_batch_size=0, **SPEC)
    tritonnb.bind(sleepy, "slow", timeout_s=0.2, **SPEC)
    tritonnb.bind(narrow, "narrow", **SPEC)
    tritonnb.bind(picky, "picky", batch_delay_us=300_000, **SPEC)
    tritonnb.bind(stream, "streaming", **SPEC)
    yield triton
    for name in ("batched", "unbatched", "slow", "narrow", "picky", "streaming"):
        tritonnb.unbind(name)


@pytest.mark.parametrize(
    "model, inputs, expected",
    [
        ("batched", ONE, "model 'batched' raised ValueError: boom"),
        ("unbatched", [fp32("x", [4], [1, 2, 3, 4])], "model 'unbatched' raised ValueError: boom"),
        ("slow", ONE, "model 'slow' did not return within its timeout of 0.2 s"),
        ("narrow", ONE, "model 'narrow': output 'y' is declared float32[4]"),
    ],
)
def test_a_failed_batch_gets_one_clean_line(failing, model, inputs, expected):
    status, body = infer_json(failing.http_url, model, inputs)
    assert status == 500 and expected in _clean(body["error"])
    assert "Traceback" in failing.logs(200)  # the whole story stays in the log


def test_a_request_failing_beside_others_gets_one_clean_line(failing):
    answers = {}

    def call(value: float) -> None:
        answers[value] = infer_json(failing.http_url, "picky", [fp32("x", [1, 4], [value] * 4)])

    threads = [threading.Thread(target=call, args=(value,)) for value in (1.0, -1.0)]  # one batch: 300 ms delay
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers[1.0][0] == 200
    status, body = answers[-1.0]
    assert status == 500 and _clean(body["error"]) == "model 'picky' raised ValueError: negative"


def test_a_stream_that_fails_ends_with_one_clean_line(failing):
    request = urllib.request.Request(
        f"{failing.http_url}/v2/models/streaming/generate_stream", data=json.dumps({"x": [1, 2, 3, 4]}).encode()
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        events = [json.loads(line[len(b"data: ") :]) for line in response.read().splitlines() if line.strip()]
    assert events[0]["y"] == [1, 2, 3, 4]
    assert _clean(events[-1]["error"]) == "model 'streaming' raised ValueError after 1 responses: mid-stream"


def test_the_python_client_sees_the_same_line(failing):
    import numpy as np
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as raised:
        tritonnb.client("batched")(np.ones((1, 4), np.float32))
    assert "model 'batched' raised ValueError: boom" in _clean(raised.value.message())
