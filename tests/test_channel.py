"""The short request path: frames between stub and kernel, the kernel's channel, and a model served through it."""

from __future__ import annotations

import ast
import json
import pathlib
import socket
import threading
import urllib.request

import numpy as np
from helpers import fp32, infer_json, wait_until

import tritonnb
from tritonnb.errors import ModelError
from tritonnb.triton._pytriton import error_response
from tritonnb.triton.channel import Channel, ChannelGeneration, Request, channel_stats
from tritonnb.triton.stub import _tritonnb_wire as wire


def _exchange(header: dict, buffers: list) -> tuple[dict, memoryview]:
    """Send one frame over a real socket pair and read it back on the other end."""
    left, right = socket.socketpair()
    with left, right:
        right.settimeout(30)  # a sender that failed must fail the test, not hang it
        sender = threading.Thread(target=wire.send, args=(left, header, buffers), daemon=True)
        sender.start()
        frame = wire.receive(right)
        sender.join()
    assert frame is not None
    return frame


def test_every_dtype_crosses_a_frame_unchanged():
    tensors = {
        "f16": np.arange(6, dtype=np.float16).reshape(2, 3),
        "f32": np.linspace(0, 1, 8, dtype=np.float32).reshape(2, 4),
        "f64": np.array([[np.pi]]),
        "i8": np.array([-128, 127], dtype=np.int8),
        "i64": np.array([[2**40, -(2**40)]], dtype=np.int64),
        "u8": np.arange(256, dtype=np.uint8),
        "flag": np.array([[True, False]]),
        "strided": np.arange(20, dtype=np.int32).reshape(4, 5)[:, ::2],  # not contiguous: sent as a copy
        "empty": np.zeros((0, 3), dtype=np.float32),
        "scalar": np.array(2.5),
        "blob": np.array([[b""], [b"a\x00b"], [bytes(range(256))]], dtype=object),
    }
    header, buffers = wire.requests_frame([(tensors, {"k": 1}), ({"f32": tensors["f32"] * 2}, {})], stub_ns=7)
    received, body = _exchange(header, buffers)
    assert received["stub_ns"] == 7
    (first, parameters), (second, _) = wire.read_requests(received, body)
    assert parameters == {"k": 1}
    for name, array in tensors.items():
        assert first[name].dtype == array.dtype and first[name].shape == array.shape, name
        np.testing.assert_array_equal(first[name], array)
    np.testing.assert_array_equal(second["f32"], tensors["f32"] * 2)
    assert first["f32"].flags.writeable, "a function may write to its inputs"
    assert all(a.ctypes.data % 16 == 0 for a in first.values() if a.dtype != object), "arrays start aligned"


def test_str_outputs_travel_as_utf8_bytes_and_errors_as_messages():
    header, buffers = wire.responses_frame([{"o": np.array(["héllo", "x"], dtype=object)}, "model 'm' raised X: y"])
    received, body = _exchange(header, buffers)
    outputs, error = wire.read_responses(received, body)
    assert list(outputs["o"]) == ["héllo".encode(), b"x"]
    assert error == "model 'm' raised X: y"


def test_a_frame_larger_than_the_socket_buffer_arrives_whole():
    big = np.random.default_rng(0).random((4, 1024, 1024), dtype=np.float32)  # 16 MiB
    header, buffers = wire.responses_frame([{"y": big}])
    received, body = _exchange(header, buffers)
    np.testing.assert_array_equal(wire.read_responses(received, body)[0]["y"], big)


def _connect(path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    return sock


def _ask(sock: socket.socket, x: np.ndarray) -> tuple[dict, memoryview]:
    wire.send(sock, *wire.requests_frame([({"x": x}, {})], stub_ns=1000))
    frame = wire.receive(sock)
    assert frame is not None
    return frame


def test_each_stub_gets_its_own_handler_thread_and_close_ends_them(tmp_path):
    def handler(index: int):
        def handle(requests: list[Request]) -> list[dict[str, np.ndarray]]:
            x = requests[0].data["x"]
            if x[0] < 0:
                raise ModelError("every request failed: negative")
            if x[0] == 0:
                return [error_response("model 'm' raised ValueError: zero")]
            return [{"y": x * 10 + index, "thread": np.array([threading.current_thread().name.encode()])}]

        return handle

    channel = Channel("unit_m", tmp_path / "c.sock", [handler(0), handler(1)])
    first, second = _connect(channel.socket_path), _connect(channel.socket_path)
    with first, second:
        (answer, body), (other, other_body) = _ask(first, np.array([1.0])), _ask(second, np.array([1.0]))
        one, two = wire.read_responses(answer, body)[0], wire.read_responses(other, other_body)[0]
        assert (one["y"][0], two["y"][0]) == (10.0, 11.0), "the second stub's requests go to the second handler"
        assert one["thread"][0] != two["thread"][0]
        assert wire.read_responses(*_ask(first, np.array([0.0]))) == ["model 'm' raised ValueError: zero"]
        assert _ask(first, np.array([-1.0]))[0] == {"error": "every request failed: negative"}
        stats = channel_stats("unit_m")
        assert stats is not None and (stats.batches, stats.requests, stats.stub_ns) == (4, 4, 4000)
        assert stats.kernel_ns > 0
        threads = [t for t in threading.enumerate() if t.name.startswith("tritonnb-channel-unit_m")]
        assert len(threads) == 3 and channel.is_alive()
        channel.close()
        assert not channel.is_alive() and not channel.socket_path.exists()
        assert not [t for t in threads if t.is_alive()], "a channel thread outlived close()"
        assert wire.receive(first) is None, "a stub sees its connection closed"


def test_model_is_served_through_the_channel_and_its_workspace_goes_with_it(triton):
    tritonnb.bind(lambda x: x + 1, "plus_one", inputs=["x:float32[2]"], outputs=["y:float32[2]"], max_batch_size=8)
    request = urllib.request.Request(f"{triton.http_url}/v2/models/plus_one/config")
    config = json.loads(urllib.request.urlopen(request, timeout=10).read())
    sockets = json.loads(config["parameters"][wire.SOCKET_PARAMETER]["string_value"])
    assert list(sockets) == ["1"] and sockets["1"].endswith("/v1.sock")  # one channel per version
    socket_path = sockets["1"]
    before = channel_stats("plus_one")
    status, body = infer_json(triton.http_url, "plus_one", [fp32("x", [3, 2], [0, 1, 2, 3, 4, 5])])
    assert status == 200 and body["outputs"][0]["data"] == [1, 2, 3, 4, 5, 6]
    after = channel_stats("plus_one")
    assert after is not None and after.requests == (before.requests if before else 0) + 1
    tritonnb.unbind("plus_one")
    wait_until(lambda: not pathlib.Path(socket_path).parent.exists(), 10, "the workspace was removed")


def test_every_instance_of_a_model_connects_and_answers(triton):
    instances = 2
    tritonnb.bind(lambda x: x * 3, "tripled", inputs=["x:float32[1]"], outputs=["y:float32[1]"], instances=instances)
    names = {t.name for t in threading.enumerate() if t.name.startswith("tritonnb-channel-tripled-")}
    assert len(names) == instances
    for value in range(4):
        status, body = infer_json(triton.http_url, "tripled", [fp32("x", [1, 1], [value])])
        assert status == 200 and body["outputs"][0]["data"] == [value * 3]
    tritonnb.unbind("tripled")


def test_the_files_sent_to_the_stub_stand_alone(tmp_path):
    """They run in the stub's isolated Python: no tritonnb there, and every helper they call exists."""
    generation = ChannelGeneration("m", {1: [lambda requests: []]}, [], [], 0, 0, tmp_path / "g1")
    try:
        _, files = generation.load_request()
    finally:
        generation.retire()
    assert set(files) == {"file:1/model.py", "file:1/_tritonnb_wire.py", "file:1/_tritonnb_stub.py"}
    defined = {}
    for key, content in files.items():
        tree = ast.parse(content)
        compile(content, key, "exec")
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not [name for name in imported if name.split(".")[0] == "tritonnb"], key
        defined[key.rsplit("/", 1)[-1]] = {
            getattr(node, "name", None) or target.id
            for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Assign))
            for target in (node.targets if isinstance(node, ast.Assign) else [node])
        }
    model = ast.parse(files["file:1/model.py"])
    calls = {
        (n.value.id, n.attr) for n in ast.walk(model) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
    }
    for alias, module in (("stub", "_tritonnb_stub.py"), ("wire", "_tritonnb_wire.py")):
        used = {attr for name, attr in calls if name == alias}
        assert used and used <= defined[module], (module, sorted(used - defined[module]))


def test_a_failing_handler_or_a_broken_stub_never_leaves_a_stub_waiting(tmp_path):
    def handle(requests: list[Request]) -> list[dict[str, np.ndarray]]:
        x = requests[0].data["x"]
        if x[0] == 1:
            raise SystemExit(3)  # a user's sys.exit() in a served function
        if x[0] == 2:
            raise KeyError("x")
        if x[0] == 3:
            return [{"y": np.array([object()], dtype=object)}]  # not bytes: cannot be sent
        return [{"y": x}]

    channel = Channel("unit_failing", tmp_path / "c.sock", [handle])
    try:
        with _connect(channel.socket_path) as stub:
            assert _ask(stub, np.array([1.0]))[0] == {"error": "model 'unit_failing': SystemExit: 3"}
            assert _ask(stub, np.array([2.0]))[0] == {"error": "model 'unit_failing': KeyError: 'x'"}
            assert "expected bytes or str" in _ask(stub, np.array([3.0]))[0]["error"]
            header, body = _ask(stub, np.array([4.0]))
            assert wire.read_responses(header, body)[0]["y"].tolist() == [4.0], "the thread serves on after failures"
        wait_until(lambda: channel.connected == 0, 5, "the kernel closed the connection of a stub that left")

        with _connect(channel.socket_path) as dying:  # dies half-way through a frame
            dying.sendall(wire.PREFIX.pack(10, 1000) + b"{}")
        wait_until(lambda: channel.connected == 0, 5, "a stub that died mid-frame leaves no connection open")
        assert channel.is_alive(), "one stub's death does not stop the others'"

        with _connect(channel.socket_path) as garbage:
            garbage.sendall(wire.PREFIX.pack(4, 0) + b"nope")
            assert wire.receive(garbage) is None, "a frame that is none of ours closes that connection"
        wait_until(lambda: not channel.is_alive(), 5, "a channel out of step says so, for the slot to load again")
    finally:
        channel.close()
