"""The output contract and misbehaving functions, on a real tritonserver: wrong results fail only their own
request, a hanging function times out, and none of it reaches other models."""

from __future__ import annotations

import concurrent.futures
import time

import numpy as np
import pytest
from helpers import fp32, infer_json

import tritonnb
from tritonnb.observe.stats_api import fetch_stats


def _double(x):
    return x * 2


def _grpc_infer(triton, model: str, x: np.ndarray):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(triton.grpc_url.removeprefix("grpc://"))
    tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer(model, [tensor])


def test_a_result_of_the_wrong_shape_is_an_error_naming_the_output(triton):
    tritonnb.bind(lambda x: x[:, :2], "halves", inputs=["x:float32[4]"], outputs=["y:float32[4]"])
    status, body = infer_json(triton.http_url, "halves", [fp32("x", [1, 4], [1, 2, 3, 4])])
    assert status == 500, body
    assert "output 'y' is declared float32[4]" in body["error"]
    assert "shape [1, 4] for a batch of 1; the function returned shape [1, 2]" in body["error"]
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match="the function returned shape"):
        _grpc_infer(triton, "halves", np.ones((1, 4), np.float32))
    assert "output 'y' is declared" in triton.logs(50)
    assert triton.state == "READY"


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (lambda x: None, "output 'y' is None"),
        (lambda x: x.to(float).round().to(int) * 0.5 + 1j, "cannot be safely cast to float32"),
        (lambda x: {"y": x, "z": x}, "unexpected ['z']"),
        (lambda x: {}, "missing ['y']"),
        (lambda x: (x, x), "returned 2 values but 1 outputs are declared"),
        (lambda x: x.sum(), "for a batch of 1; the function returned shape []"),
    ],
    ids=["none", "complex", "extra-output", "missing-output", "too-many-values", "no-batch-dim"],
)
def test_bad_results_are_errors_to_their_caller(triton, fn, message):
    tritonnb.bind(fn, "bad", inputs=["x:float32[2]"], outputs=["y:float32[2]"])
    status, body = infer_json(triton.http_url, "bad", [fp32("x", [1, 2], [1, 2])])
    assert status == 500 and message in body["error"], body
    tritonnb.bind(_double, "bad", inputs=["x:float32[2]"], outputs=["y:float32[2]"])  # a swap fixes it
    assert infer_json(triton.http_url, "bad", [fp32("x", [1, 2], [1, 2])]) == (200, _reply("y", [1, 2], [2, 4]))


def _reply(name: str, shape: list[int], data: list[float]) -> dict:
    return {
        "model_name": "bad",
        "model_version": "1",
        "outputs": [{"name": name, "datatype": "FP32", "shape": shape, "data": data}],
    }


def test_one_bad_request_in_a_dynamic_batch_fails_alone(triton):
    def picky(x):
        if bool((x < 0).any()):
            raise ValueError("negative values are not served")
        return x * 2

    # a long batch delay so that the concurrent requests below are merged into batches
    tritonnb.bind(picky, "picky", inputs=["x:float32[2]"], outputs=["y:float32[2]"], batch_delay_us=300_000)
    values = [[i, i] for i in range(1, 8)] + [[-1, -1]]
    with concurrent.futures.ThreadPoolExecutor(len(values)) as pool:
        replies = list(pool.map(lambda v: infer_json(triton.http_url, "picky", [fp32("x", [1, 2], v)]), values))
    for value, (status, body) in zip(values[:-1], replies[:-1]):
        assert status == 200 and body["outputs"][0]["data"] == [2 * v for v in value], body
    status, body = replies[-1]
    assert status == 500 and "negative values are not served" in body["error"]
    counters = fetch_stats(triton.http_url, triton.access_token, "picky")["picky"]
    assert counters["executions"] < counters["inferences"], "the requests were not batched: nothing was tested"


def test_a_hanging_function_times_out_and_others_keep_serving(triton):
    def sleepy(x):
        time.sleep(float(x[0, 0]))
        return x

    tritonnb.bind(sleepy, "sleepy", inputs=["x:float32[1]"], outputs=["y:float32[1]"], timeout_s=0.5)
    tritonnb.bind(_double, "steady", inputs=["x:float32[1]"], outputs=["y:float32[1]"])
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        hanging = pool.submit(infer_json, triton.http_url, "sleepy", [fp32("x", [1, 1], [5.0])])
        time.sleep(0.1)
        assert infer_json(triton.http_url, "steady", [fp32("x", [1, 1], [3])])[1]["outputs"][0]["data"] == [6]
        status, body = hanging.result(timeout=4)  # answered well before the function's 5 s are over
    assert status == 500 and "did not return within its timeout of 0.5 s" in body["error"]
    assert triton.models["sleepy"].timeout_s == 0.5
    status, body = infer_json(triton.http_url, "sleepy", [fp32("x", [1, 1], [0.125])])
    assert status == 200 and body["outputs"][0]["data"] == [0.125]


def test_nan_and_raising_functions_do_not_disturb_other_models(triton):
    tritonnb.bind(lambda x: x * float("nan"), "nans", inputs=["x:float32[2]"], outputs=["y:float32[2]"])
    tritonnb.bind(_double, "steady", inputs=["x:float32[1]"], outputs=["y:float32[1]"])
    result = _grpc_infer(triton, "nans", np.ones((1, 2), np.float32)).as_numpy("y")
    assert result.shape == (1, 2) and np.isnan(result).all()  # NaN is data: served as it came
    assert infer_json(triton.http_url, "steady", [fp32("x", [1, 1], [2])])[1]["outputs"][0]["data"] == [4]
