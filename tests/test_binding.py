"""Binding torch functions on a real tritonserver: results, hot swaps, reloads, faults and bad input."""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import psutil
import pytest
import torch
from helpers import command_line, fp32, infer_json, wait_until

import tritonnb
from tritonnb.errors import BindError
from tritonnb.triton import engine


def _double(x):
    return x * 2


def test_bound_function_answers_over_http_and_grpc(triton):
    card = tritonnb.bind(_double, "double", inputs=["x:float32[4]"], outputs=["y:float32[4]"])
    assert card.result.action == "loaded"
    status, body = infer_json(triton.http_url, "double", [fp32("x", [2, 4], [1, 2, 3, 4, 5, 6, 7, 8])])
    assert status == 200
    assert body["outputs"][0]["name"] == "y"
    assert body["outputs"][0]["data"] == [2, 4, 6, 8, 10, 12, 14, 16]

    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(triton.grpc_url.removeprefix("grpc://"))
    x = grpcclient.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.arange(4, dtype=np.float32).reshape(1, 4))
    np.testing.assert_array_equal(client.infer("double", [x]).as_numpy("y"), [[0, 2, 4, 6]])


def test_client_takes_numpy_and_torch(triton):
    tritonnb.bind(_double, "double", inputs=["x:float32[4]"], outputs=["y:float32[4]"])
    call = tritonnb.client("double")
    np.testing.assert_array_equal(call(np.ones((3, 4), np.float32))["y"], np.full((3, 4), 2.0))
    np.testing.assert_array_equal(call(x=torch.arange(4.0).reshape(1, 4))["y"], [[0, 2, 4, 6]])
    with pytest.raises(TypeError, match="missing"):
        call(z=np.ones((1, 4)))
    with pytest.raises(KeyError, match="no model named"):
        tritonnb.client("nope")


def test_tuple_dict_and_mixed_dtypes(triton):
    def stats(values, scale):
        total = (values * scale).sum(dim=1, keepdim=True)
        return {"total": total, "positive": (values > 0).numpy(), "count": torch.full_like(total, 3).long()}

    tritonnb.bind(
        stats,
        "summary",
        inputs=["values:float64[3]", "scale:float64[1]"],
        outputs=["total:float64[1]", "positive:bool[3]", "count:int64[1]"],
    )
    out = tritonnb.client("summary")(np.array([[1.0, -2.0, 3.0]]), np.array([[2.0]]))
    assert out["total"].tolist() == [[4.0]]
    assert out["positive"].tolist() == [[True, False, True]]
    assert out["count"].dtype == np.int64

    def split(x):
        return x + 1, x - 1

    tritonnb.bind(split, "split", inputs=["x:int32[-1]"], outputs=["up:int32[-1]", "down:int32[-1]"], max_batch_size=0)
    out = tritonnb.client("split")(np.array([5, 6, 7], np.int32))
    assert out["up"].tolist() == [6, 7, 8] and out["down"].tolist() == [4, 5, 6]


@pytest.mark.skipif(
    sys.version_info >= (3, 13) and engine.numpy_2(), reason="bytes need numpy 1 in the stub, which has no 3.13 build"
)
def test_bytes_in_and_out(triton):
    def shout(text):
        return np.array([[t.decode().upper().encode()] for t in text.reshape(-1)], dtype=object)

    tritonnb.bind(shout, "shout", inputs=["text:bytes[1]"], outputs=["loud:bytes[1]"])
    out = tritonnb.client("shout")(np.array([[b"hi"], [b"there"]], dtype=object))
    assert out["loud"].reshape(-1).tolist() == [b"HI", b"THERE"]


def test_serving_leaves_the_users_modules_trainable(triton):
    """A module the served function moves (here to float64: on CPU, a move to the CPU would be a no-op) and one it
    creates on its first call can both be trained in the notebook afterwards."""
    torch.manual_seed(0)
    moved = torch.nn.Linear(4, 4)
    created: dict[str, torch.nn.Module] = {}

    def fn(x):
        if "head" not in created:
            created["head"] = torch.nn.Linear(4, 4).double()
        return created["head"](moved.to(torch.float64)(x.double())).float()

    tritonnb.bind(fn, "trainable", inputs=["x:float32[4]"], outputs=["y:float32[4]"])
    tritonnb.client("trainable")(np.ones((2, 4), np.float32))
    parameters = [*moved.parameters(), *created["head"].parameters()]
    assert not any(p.is_inference() for p in parameters)
    before = [p.detach().clone() for p in parameters]
    optimizer = torch.optim.SGD(parameters, lr=0.1)
    loss = created["head"](moved(torch.randn(8, 4, dtype=torch.float64))).square().mean()
    loss.backward()
    optimizer.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, parameters))


def _hammer(http_url: str, model: str, stop: threading.Event, seen: list, failures: list) -> None:
    while not stop.is_set():
        status, body = infer_json(http_url, model, [fp32("x", [1, 4], [1, 1, 1, 1])])
        if status == 200:
            seen.append(body["outputs"][0]["data"][0])
        else:
            failures.append((status, body))


def _under_load(http_url: str, model: str, action, clients: int = 4):
    stop, seen, failures = threading.Event(), [], []
    threads = [threading.Thread(target=_hammer, args=(http_url, model, stop, seen, failures)) for _ in range(clients)]
    for t in threads:
        t.start()
    try:  # requests flow before the action, and answers come after it
        wait_until(lambda: len(seen) >= 2 * clients or failures, 30, "answers before the action")
        action()
        answered = len(seen)
        wait_until(lambda: len(seen) >= answered + 2 * clients or failures, 30, "answers after the action")
    finally:
        stop.set()
        for t in threads:
            t.join()
    return seen, failures


def test_same_signature_swap_loses_no_request(triton):
    spec = dict(inputs=["x:float32[4]"], outputs=["y:float32[4]"])
    tritonnb.bind(lambda x: x * 1, "swap", **spec)
    actions = []

    def swaps():
        for factor in range(2, 12):
            actions.append(tritonnb.bind(lambda x, f=factor: x * f, "swap", **spec).result.action)
            time.sleep(0.05)

    seen, failures = _under_load(triton.http_url, "swap", swaps)
    assert failures == []
    assert set(actions) == {"swapped"}
    assert seen[-1] == 11.0  # the last function serves
    assert len(seen) > 20


def test_signature_change_reloads_under_load_with_no_failure(triton):
    tritonnb.bind(lambda x: x * 1, "grow", inputs=["x:float32[4]"], outputs=["y:float32[4]"])
    results = []

    def reloads():
        results.append(tritonnb.bind(lambda x: x * 5, "grow", inputs=["x:float32[-1]"], outputs=["y:float32[-1]"]))
        results.append(
            tritonnb.bind(
                lambda x: x * 7,
                "grow",
                inputs=["x:float32[-1]"],
                outputs=["y:float32[-1]"],
                max_batch_size=8,
                batch_delay_us=100,
            )
        )

    seen, failures = _under_load(triton.http_url, "grow", reloads)
    assert failures == []
    assert [r.result.action for r in results] == ["reloaded", "reloaded"]
    assert seen[0] == 1.0 and seen[-1] == 7.0
    status, body = infer_json(triton.http_url, "grow", [fp32("x", [1, 6], [1] * 6)])  # -1 dim takes any length
    assert status == 200 and body["outputs"][0]["shape"] == [1, 6]

    def stubs_of_grow() -> int:
        return sum("grow_0_0" in command_line(p) for p in psutil.Process(triton.pid).children())

    # replaced generations are retired once quiet, not kept until stop
    wait_until(lambda: stubs_of_grow() == 1, 15, lambda: f"{stubs_of_grow()} stubs of 'grow' serve")


def test_two_models_coexist_and_unbind_leaves_the_other(triton):
    tritonnb.bind(lambda x: x + 1, "left", inputs=["x:float32[4]"], outputs=["y:float32[4]"])
    tritonnb.bind(lambda x: x - 1, "right", inputs=["x:float32[4]"], outputs=["y:float32[4]"])
    assert triton.model_states()["left"] == "READY"
    tritonnb.unbind("left")
    assert "left" not in triton.models
    assert not triton.is_model_ready("left")
    status, body = infer_json(triton.http_url, "right", [fp32("x", [1, 4], [1, 1, 1, 1])])
    assert status == 200 and body["outputs"][0]["data"] == [0, 0, 0, 0]
    status, _ = infer_json(triton.http_url, "left", [fp32("x", [1, 4], [1, 1, 1, 1])])
    assert 400 <= status < 500
    with pytest.raises(KeyError):
        tritonnb.unbind("left")


def test_raising_function_reports_error_and_server_stays_healthy(triton):
    def fragile(x):
        if float(x.sum()) < 0:
            raise ValueError("negative input is not allowed")
        return x

    tritonnb.bind(fragile, "fragile", inputs=["x:float32[2]"], outputs=["y:float32[2]"])
    tritonnb.bind(_double, "steady", inputs=["x:float32[2]"], outputs=["y:float32[2]"])
    status, body = infer_json(triton.http_url, "fragile", [fp32("x", [1, 2], [-1, -1])])
    assert status >= 400
    assert "negative input is not allowed" in body["error"]
    assert "ValueError" in triton.logs(200) and "negative input is not allowed" in triton.logs(200)
    assert triton.models["fragile"].last_error is not None
    assert triton.state == "READY"
    assert infer_json(triton.http_url, "steady", [fp32("x", [1, 2], [1, 2])])[1]["outputs"][0]["data"] == [2, 4]
    status, body = infer_json(triton.http_url, "fragile", [fp32("x", [1, 2], [1, 2])])
    assert status == 200 and body["outputs"][0]["data"] == [1, 2]


def test_wrong_return_is_a_clear_error(triton):
    tritonnb.bind(lambda x: {"nope": x}, "wrongkeys", inputs=["x:float32[2]"], outputs=["y:float32[2]"])
    status, body = infer_json(triton.http_url, "wrongkeys", [fp32("x", [1, 2], [1, 2])])
    assert status >= 400 and "do not match declared outputs" in body["error"]
    tritonnb.bind(lambda x: x.sum(), "nobatch", inputs=["x:float32[2]"], outputs=["y:float32[1]"])
    status, body = infer_json(triton.http_url, "nobatch", [fp32("x", [1, 2], [1, 2])])
    assert status >= 400 and "for a batch of 1; the function returned shape []" in body["error"]


@pytest.mark.parametrize(
    ("model", "inputs", "message"),
    [
        ("double", [{"name": "x", "datatype": "INT32", "shape": [1, 4], "data": [1, 2, 3, 4]}], "data-type"),
        ("double", [fp32("x", [1, 3], [1, 2, 3])], "shape"),
        ("double", [fp32("z", [1, 4], [1, 2, 3, 4])], "input"),
        ("no_such_model", [fp32("x", [1, 4], [1, 2, 3, 4])], "no_such_model"),
    ],
    ids=["wrong-dtype", "wrong-shape", "missing-input", "unknown-model"],
)
def test_bad_requests_get_4xx_and_disturb_nothing(triton, model, inputs, message):
    tritonnb.bind(_double, "double", inputs=["x:float32[4]"], outputs=["y:float32[4]"])
    status, body = infer_json(triton.http_url, model, inputs)
    assert 400 <= status < 500, (status, body)
    assert message in body["error"]
    status, body = infer_json(triton.http_url, "double", [fp32("x", [1, 4], [1, 2, 3, 4])])
    assert status == 200 and body["outputs"][0]["data"] == [2, 4, 6, 8]


def test_bad_bind_arguments_are_clear_and_keep_serving(triton):
    tritonnb.bind(_double, "double", inputs=["x:float32[4]"], outputs=["y:float32[4]"])
    with pytest.raises(ValueError, match="unsupported dtype"):
        tritonnb.bind(_double, "other", inputs=["x:complex64[4]"], outputs=["y:float32[4]"])
    with pytest.raises(ValueError, match="bad model name"):
        tritonnb.bind(_double, "bad name", inputs=["x:float32[4]"], outputs=["y:float32[4]"])
    with pytest.raises(TypeError, match="cannot take the inputs"):
        tritonnb.bind(lambda a, b, c: a, "three", inputs=["x:float32[4]"], outputs=["y:float32[4]"])
    with pytest.raises(ValueError, match="reserved"):
        tritonnb.bind(_double, "stats", inputs=["x:float32[4]"], outputs=["y:float32[4]"])
    with pytest.raises(ValueError, match="case-insensitive"):
        tritonnb.bind(_double, "DOUBLE", inputs=["x:float32[4]"], outputs=["y:float32[4]"])
    assert "other" not in triton.models and "three" not in triton.models
    status, _ = infer_json(triton.http_url, "double", [fp32("x", [1, 4], [1, 2, 3, 4])])
    assert status == 200


def test_failed_reload_keeps_previous_generation_serving(triton, monkeypatch):
    tritonnb.bind(_double, "keeper", inputs=["x:float32[4]"], outputs=["y:float32[4]"])

    def refuse(name, config, files):
        raise RuntimeError("load refused for the test")

    monkeypatch.setattr(triton, "load_model", refuse)
    with pytest.raises(BindError, match="load refused"):
        tritonnb.bind(_double, "keeper", inputs=["x:float32[-1]"], outputs=["y:float32[-1]"])
    monkeypatch.undo()
    status, body = infer_json(triton.http_url, "keeper", [fp32("x", [1, 4], [1, 2, 3, 4])])
    assert status == 200 and body["outputs"][0]["data"] == [2, 4, 6, 8]


def test_instances_and_default_specs(triton):
    card = tritonnb.bind(lambda x: x * 3, "tripled", instances=2)
    assert [str(s) for s in card.spec.inputs] == ["x:float32[-1]"]
    assert [str(s) for s in card.spec.outputs] == ["output:float32[-1]"]
    status, body = infer_json(triton.http_url, "tripled", [fp32("x", [1, 3], [1, 2, 3])])
    assert status == 200 and body["outputs"][0]["data"] == [3, 6, 9]
