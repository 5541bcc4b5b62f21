"""Pure-Python pieces: spec parsing, output mapping, call styles, cards. No server needed."""

from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest
import torch

from tritonnb.errors import OutputError, SignatureMismatch, SpecError
from tritonnb.loadtest.perf import perf_analyzer_command
from tritonnb.serving.output_check import checked_outputs
from tritonnb.serving.served_function import calls_by_keyword
from tritonnb.serving.torch_bridge import resolve_device
from tritonnb.signature import ModelSpec, TensorSpec, as_specs, default_inputs, parse_spec
from tritonnb.ui.card import curl_command, example_shape


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("x:float32[-1,64]", TensorSpec("x", "float32", (-1, 64))),
        ("img:uint8[3, 224, 224]", TensorSpec("img", "uint8", (3, 224, 224))),
        ("flag:bool", TensorSpec("flag", "bool", (-1,))),
        ("t:string[1]", TensorSpec("t", "bytes", (1,))),
        ("h:fp16[8]", TensorSpec("h", "float16", (8,))),
    ],
)
def test_parse_spec(text, expected):
    assert parse_spec(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x", "bad tensor spec"),
        ("x:float32[a]", "bad dims"),
        ("x:cfloat[1]", "unsupported dtype"),
        ("x:float32[]", "at least one dim"),
        ("x:int8[-2]", "positive or -1"),
        ("1x:int8[1]", "bad tensor spec"),
    ],
)
def test_bad_specs(text, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(text)


def test_duplicate_names_are_rejected():
    with pytest.raises(SpecError, match="repeated: x"):
        as_specs(["x:float32[1]", "x:int8[1]"], "input")


def test_outputs_tensor_tuple_dict_and_casts():
    specs = [TensorSpec("a", "float32", (2,)), TensorSpec("b", "int64", (1,))]
    out = checked_outputs((torch.ones(1, 2, dtype=torch.float64), np.array([[3]], np.int32)), specs, 1)
    assert out["a"].dtype == np.float32 and out["b"].dtype == np.int64
    assert checked_outputs({"b": [[1]], "a": torch.zeros(1, 2)}, specs, 1)["b"].tolist() == [[1]]
    single = [TensorSpec("y", "float32", (1,))]
    assert checked_outputs(torch.ones(1, 1, dtype=torch.bfloat16), single, 1)["y"].dtype == np.float32
    assert checked_outputs((torch.ones(1, 1),), single, 1)["y"].shape == (1, 1)
    small = [TensorSpec("y", "int8", (-1,))]
    assert checked_outputs(torch.tensor([[1, -2, 127]]), small, 1)["y"].dtype == np.int8  # int64 values that fit
    with pytest.raises(OutputError, match="int64 values from -2 to 300 do not fit int8"):
        checked_outputs(torch.tensor([[1, -2, 300]]), small, 1)
    with pytest.raises(OutputError, match="cannot be safely cast"):
        checked_outputs(torch.ones(1, 1), [TensorSpec("y", "int32", (1,))], 1)
    with pytest.raises(OutputError, match="returned 1 values but 2"):
        checked_outputs((torch.ones(1),), specs, 1)
    with pytest.raises(OutputError, match="missing"):
        checked_outputs({"a": torch.ones(1)}, specs, 1)
    with pytest.raises(OutputError, match="unexpected"):
        checked_outputs({"a": torch.ones(1, 2), "b": torch.ones(1, 1), "c": 1}, specs, 1)
    with pytest.raises(OutputError, match="output 'y' is None; declared float32"):
        checked_outputs(None, single, 1)


@pytest.mark.parametrize(
    ("dims", "batch", "shape", "fits"),
    [
        ((4,), 3, (3, 4), True),
        ((4,), 3, (1, 4), False),  # batch size differs from the request's
        ((4,), 1, (1, 2), False),  # per-sample dims differ
        ((-1, 2), 2, (2, 7, 2), True),  # -1 matches any size
        ((-1, 2), 2, (2, 7), False),  # a dim missing
        ((4,), None, (4,), True),  # a model without batching: no batch dim
        ((4,), None, (1, 4), False),
        ((1,), 5, (), False),  # a scalar
    ],
)
def test_output_shapes_are_checked_against_the_declaration(dims, batch, shape, fits):
    spec = [TensorSpec("y", "float32", dims)]
    if fits:
        assert checked_outputs(np.zeros(shape, np.float32), spec, batch)["y"].shape == shape
    else:
        with pytest.raises(
            OutputError, match=r"output 'y' is declared float32\[.*returned shape " + re.escape(str(list(shape)))
        ):
            checked_outputs(np.zeros(shape, np.float32), spec, batch)


def test_call_styles():
    x, y = TensorSpec("x", "float32"), TensorSpec("y", "float32")
    assert calls_by_keyword(lambda x, y: x, [x, y]) is True
    assert calls_by_keyword(lambda a, b: a, [x, y]) is False
    assert calls_by_keyword(lambda **kw: 0, [x, y]) is True

    def positional_only(a, /, **kw):
        return a

    assert calls_by_keyword(positional_only, [x]) is False
    with pytest.raises(SignatureMismatch, match="cannot take the inputs"):
        calls_by_keyword(lambda a: a, [x, y])
    assert [s.name for s in default_inputs(lambda image, mask=None: 0)] == ["image", "mask"]


def test_device_resolution():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("gpu")


def test_model_spec_validation_and_example_requests():
    with pytest.raises(ValueError, match="both an input and an output"):
        ModelSpec("m", (TensorSpec("x", "float32"),), (TensorSpec("x", "float32"),))
    spec = ModelSpec("m", (TensorSpec("x", "float32", (-1, 3)),), (TensorSpec("y", "float32"),))
    assert example_shape(spec.inputs[0], batched=True) == [1, 1, 3]
    assert '"shape":[1,1,3]' in curl_command("http://127.0.0.1:8000", spec)


def test_panel_rendering_of_gpus_down_state_and_strip():
    from tritonnb.observe.monitor import ModelMetrics, Snapshot
    from tritonnb.ui import render

    gpu = {
        "uuid": "GPU-0",
        "utilization": 0.25,
        "memory_total_bytes": 2**34,
        "memory_used_bytes": 2**33,
        "power_watts": 300.0,
    }
    snapshot = Snapshot(
        time=0,
        http_url="http://h:8000",
        metrics_url="http://h:8002/metrics",
        state="READY",
        host={"cpu_utilization": 0.5, "memory_total_bytes": 2**31},
        gpus=[gpu],
    )
    assert "GPU 0 <code>25%</code> <code>8.0 / 16.0 GiB</code> <code>300 W</code>" in render.host_html(snapshot)
    assert "no GPU" in render.host_html(Snapshot(time=0, http_url="", metrics_url="", state="READY"))
    down = Snapshot(
        time=0, http_url="h", metrics_url="m", state="DOWN", reason="tritonserver exited", log_tail="E boom <tag>"
    )
    page = render.health_html(down)
    assert "DOWN" in page and "tritonserver exited" in page and "E boom &lt;tag&gt;" in page
    model = ModelMetrics(
        name="m",
        state="READY",
        success_per_s=12.5,
        latency_ms={"queue": 0.1, "compute_input": 0.2, "compute_infer": 1.0, "compute_output": 0.2},
        history=[(0, 1.0, 1.0), (5, 3.0, 2.0)],
    )
    snapshot.models = {"m": model}
    assert "12.5 req/s" in render.strip_html("m", snapshot) and "1.50 ms" in render.strip_html("m", snapshot)
    assert 'data-model="m"' in render.models_html(snapshot)


def test_perf_analyzer_ranges_only_go_up():
    spec = ModelSpec("m", (TensorSpec("x", "float32", (4,)),), (TensorSpec("y", "float32", (4,)),))
    arrays = {"x": np.ones((1, 4), np.float32)}
    assert "--concurrency-range 2:8:2" in perf_analyzer_command("http://h:1", spec, arrays, [2, 4, 6, 8], 1, "t")
    down = perf_analyzer_command("http://h:1", spec, arrays, [8, 4], 1, "t")
    assert "--concurrency-range 8:8" in down and "--concurrency-range 4:4" in down
    assert perf_analyzer_command("http://h:1", spec, arrays, [4, 4], 1, "t").count("--concurrency-range 4:4") == 2


def test_server_logs_share_the_capture_and_give_loggers_back_as_they_were(tmp_path):
    import logging

    from tritonnb.triton.logs import WATCHED_LOGGERS, ServerLog

    def settings():
        return {name: (logging.getLogger(name).level, logging.getLogger(name).propagate) for name in WATCHED_LOGGERS}

    before = settings()
    old, new = ServerLog(tmp_path / "old.log"), ServerLog(tmp_path / "new.log")
    old.capture_python_logging()
    new.capture_python_logging()  # a new server starts while the old one's threads still retire
    logging.getLogger("pytriton").warning("while both are open")
    old.close()
    assert logging.getLogger("pytriton").propagate is False  # still captured for the new server
    logging.getLogger("pytriton").info("only the new one")
    new.close()
    assert settings() == before
    assert "while both are open" in (tmp_path / "old.log").read_text()
    assert "only the new one" not in (tmp_path / "old.log").read_text()
    assert "only the new one" in (tmp_path / "new.log").read_text()


def test_ipv6_loopback_is_loopback_and_urls_bracket_it():
    from tritonnb.triton.settings import ServerSettings, is_loopback

    assert is_loopback("::1") and is_loopback("127.0.0.2") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("example.org")
    config = {"http_address": "127.0.0.1", "grpc_address": "::1", "metrics_address": "::"}
    settings = ServerSettings(config=config, notes=[])
    assert settings.url_host("grpc") == "[::1]" and settings.url_host("metrics") == "[::1]"
    assert settings.public  # "::" is every interface
    settings.config["metrics_address"] = "::1"
    assert not settings.public


def test_ipv6_http_address_is_a_clear_error():
    from tritonnb.triton.settings import resolve_settings

    with pytest.raises(SpecError, match="IPv6 HTTP address"):
        resolve_settings(http_address="::1")


def test_run_to_the_end_finishes_the_work_before_raising_an_interrupt():
    import os
    import signal
    import sys
    import threading

    from helpers import wait_until

    from tritonnb.serving.binding import run_to_the_end

    finished = []
    handled = threading.Semaphore(0)
    waiting = [threading.Condition.wait.__code__, threading.Event.wait.__code__, run_to_the_end.__code__]

    def on_interrupt(signum, frame):
        handled.release()
        signal.default_int_handler(signum, frame)

    def main_thread_waits_for_the_work() -> bool:
        """Whether the main thread's innermost frames are run_to_the_end's wait for the work."""
        frame = sys._current_frames().get(threading.main_thread().ident)
        codes = []
        while frame is not None and len(codes) < len(waiting):
            codes.append(frame.f_code)
            frame = frame.f_back
        return codes == waiting

    def interrupt(number: int) -> None:
        """A Ctrl-C while the main thread waits for the work; returns once its handler ran."""
        wait_until(main_thread_waits_for_the_work, 10, "the main thread waits for the work", interval=0.01)
        os.kill(os.getpid(), signal.SIGINT)
        deadline = time.monotonic() + 10
        while not handled.acquire(timeout=0.1):
            assert time.monotonic() < deadline, f"interrupt {number} was not handled"
            os.kill(os.getpid(), signal.SIGUSR1)  # wakes a main thread that blocked just after the SIGINT arrived

    def work():
        interrupt(1)
        interrupt(2)
        finished.append(True)

    handlers = {signal.SIGINT: on_interrupt, signal.SIGUSR1: lambda signum, frame: None}
    previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    try:
        with pytest.raises(KeyboardInterrupt):
            run_to_the_end(work)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    assert finished == [True]  # both interrupts waited for the work
    with pytest.raises(ZeroDivisionError):
        run_to_the_end(lambda: 1 / 0)


def test_magic_lines_split_like_a_shell():
    from tritonnb.magics import TritonMagics, _parse

    args = _parse(TritonMagics.triton_perf, "m --input-data 'my data.npz' --concurrency 1,2")
    assert args.input_data == "my data.npz" and args.concurrency == [1, 2]
    args = _parse(TritonMagics.triton, 'panel --url "http://127.0.0.1:8000"')
    assert args.url == ["http://127.0.0.1:8000"]  # --url repeats: several make a fleet view


def test_calls_that_outlive_the_timeout_are_capped_and_counted():
    from tritonnb.errors import ModelTimeout
    from tritonnb.serving.served_function import MAX_RUNNING_LATE, ServedFunction

    release = threading.Event()
    reported: list[str] = []

    def stuck(x):
        release.wait(30)
        return x

    spec = [TensorSpec("x", "float32", (1,))]
    served = ServedFunction(
        stuck, "stuck", spec, [TensorSpec("y", "float32", (1,))], "cpu", lambda m, t: reported.append(t), 0.01
    )
    x = {"x": np.ones((1, 1), np.float32)}
    for _ in range(MAX_RUNNING_LATE):
        with pytest.raises(ModelTimeout, match=r"did not return within its timeout of 0\.01 s"):
            served(x, 1)
    with pytest.raises(ModelTimeout, match=f"{MAX_RUNNING_LATE} calls that outlived the timeout"):
        served(x, 1)
    assert served.abandoned == MAX_RUNNING_LATE and len(reported) == MAX_RUNNING_LATE
    release.set()
    deadline = time.monotonic() + 10
    while served._running_late and time.monotonic() < deadline:
        time.sleep(0.01)
    assert served._running_late == 0
    served.timeout_s = 5.0
    assert served(x, 1)["y"].tolist() == [[1.0]]  # room again once the late calls returned


def test_stream_figures_count_every_response_of_a_busy_window():
    from tritonnb.observe.stream_stats import StreamStats

    stats = StreamStats()
    stats.opened()
    start = 1000.0
    for i in range(20_000):  # 20 000 responses over 2 s: more than the time samples kept
        stats.responded(start + i / 10_000, start + (i - 1) / 10_000, first=i == 0)
    figures = stats.figures(now=start + 2.0)
    assert figures.responses == 20_000 and figures.active == 1
    assert 9_000 < figures.responses_per_s < 11_000
    assert figures.between_responses_ms is not None and abs(figures.between_responses_ms["p50"] - 0.1) < 1e-6
    stats.closed("cancelled")
    assert stats.figures().active == 0 and stats.figures().cancelled == 1
