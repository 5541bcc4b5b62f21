"""The magics in a real IPython InteractiveShell, against a real tritonserver."""

from __future__ import annotations

import gc
import linecache
import subprocess
import sys

import numpy as np
import pytest
from helpers import fp32, free_ports, infer_json
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

import tritonnb

CELL = """
import torch

def scale(x):
    return x * FACTOR
"""


@pytest.fixture(scope="module")
def started(shell):
    """The shell with a server started through ``%triton start`` on free ports."""
    http, grpc, metrics = free_ports()
    with capture_output() as out:
        shell.run_line_magic("triton", f"start --http-port {http} --grpc-port {grpc} --metrics-port {metrics}")
    assert f"HTTP http://127.0.0.1:{http}" in out.stdout
    return shell


def _serve(shell, line: str, cell: str):
    """Run a ``%%triton_model`` cell as a notebook does: its result is the card, shown once, and ``_`` holds it."""
    with capture_output() as out:
        result = shell.run_cell(f"%%triton_model {line}\n{cell}")
    result.raise_error()
    cards = [o for o in out.outputs if "text/html" in o.data]
    assert len(cards) == 1, out.outputs
    name = line.split()[0]
    assert shell.user_ns["_"] is result.result is tritonnb.card(name)
    assert cards[0].data["text/plain"] == repr(result.result)
    return cards[0]


def test_load_ext_is_cheap_and_starts_nothing():
    code = (
        "import sys, time; from IPython.core.interactiveshell import InteractiveShell;"
        "ip = InteractiveShell.instance(); t = time.perf_counter(); ip.run_line_magic('load_ext', 'tritonnb');"
        "print(time.perf_counter() - t, 'pytriton' in sys.modules, 'torch' in sys.modules)"
    )
    seconds, pytriton_loaded, torch_loaded = subprocess.check_output([sys.executable, "-c", code], text=True).split()
    assert pytriton_loaded == "False" and torch_loaded == "False"
    assert float(seconds) >= 0


def test_cell_serves_its_function_and_card_snippets_work(started):
    started.user_ns["FACTOR"] = 3
    card = _serve(started, "scale --input x:float32[4] --output y:float32[4]", CELL)
    html = card.data["text/html"]
    server = tritonnb.server()
    assert "scale" in html and f"{server.http_url}/v2/models/scale/infer" in html
    assert "x" in html and "float32" in html and "device" in html
    text = card.data["text/plain"]
    curl = text.split("curl:\n", 1)[1].split("\n\n", 1)[0]
    response = subprocess.run(curl, shell=True, capture_output=True, text=True, check=True).stdout
    assert '"data":[3.0,3.0,3.0,3.0]' in response
    python = text.split("python:\n", 1)[1]
    snippet = subprocess.run([sys.executable, "-c", python], capture_output=True, text=True, check=True).stdout
    assert snippet.strip() == "y [[3. 3. 3. 3.]]"


def test_rerunning_the_cell_hot_swaps(started):
    started.user_ns["FACTOR"] = 2
    _serve(started, "scale --input x:float32[4] --output y:float32[4]", CELL)
    first = tritonnb.server().models["scale"]
    first_card = started.user_ns["_"]
    first_source = first.versions[1].fn.__code__.co_filename
    assert first_source in linecache.cache  # a traceback of the served function shows the cell's lines
    card = _serve(
        started, "scale --input x:float32[4] --output y:float32[4]", CELL.replace("x * FACTOR", "x * FACTOR + 1")
    )
    assert "swapped" in card.data["text/plain"]
    assert tritonnb.server().models["scale"] is first
    # the cards IPython keeps in Out share one spec: a kernel that swaps all day does not pile up parsed specs
    assert started.user_ns["_"].spec is first_card.spec is first.spec
    # and the swapped-out function's source is forgotten once the function is gone; the served one's stays
    gc.collect()
    assert first_source not in linecache.cache
    assert first.versions[1].fn.__code__.co_filename in linecache.cache
    out = tritonnb.client("scale")(np.ones((1, 4), np.float32))
    assert out["y"].tolist() == [[3.0, 3.0, 3.0, 3.0]]


def test_function_is_picked_by_name_or_uniqueness(started):
    cell = "def helper(x):\n    return x\n\ndef picked(x):\n    return helper(x) - 1\n"
    _serve(started, "picked --input x:float32[2] --output y:float32[2]", cell)
    assert tritonnb.client("picked")(np.ones((1, 2), np.float32))["y"].tolist() == [[0.0, 0.0]]
    _serve(started, "anyname --input x:float32[2] --output y:float32[2]", "def only(x):\n    return x + 5\n")
    assert tritonnb.client("anyname")(np.ones((1, 2), np.float32))["y"].tolist() == [[6.0, 6.0]]


@pytest.mark.parametrize(
    ("line", "cell", "message"),
    [
        ("m1 --bogus 3", CELL, "unrecognized arguments: --bogus"),
        ("m1 --input x:float32[4", CELL, "bad tensor spec"),
        ("m1 --input x:complex64[4]", CELL, "unsupported dtype 'complex64'"),
        ("m1 --input x:float32[0]", CELL, "must be positive or -1"),
        ("", CELL, "the following arguments are required: name"),
        ("m1 --max-batch-size -2", CELL, "is negative"),
        ("m1 --instances 0", CELL, "must be 1 or more"),
        ("m1 --device tpu", CELL, "unknown device 'tpu'"),
        ("m1", "x = 1\n", "defines no function"),
        ("m1", "def a(x):\n    return x\ndef b(x):\n    return x\n", "several functions (a, b)"),
        ("bad/name", CELL, "bad model name"),
        ("m1 --input p:float32[1] q:float32[1]", "def f(a):\n    return a\n", "cannot take the inputs"),
    ],
    ids=[
        "unknown-flag",
        "bad-spec",
        "bad-dtype",
        "bad-dims",
        "missing-name",
        "negative",
        "zero-instances",
        "bad-device",
        "no-function",
        "ambiguous",
        "bad-name",
        "wrong-arity",
    ],
)
def test_bad_magic_lines_are_usage_errors(started, line, cell, message):
    started.user_ns["FACTOR"] = 1
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        started.run_cell_magic("triton_model", line, cell)
    assert "m1" not in tritonnb.server().models


def test_bad_triton_lines_are_usage_errors(started):
    for line, message in [
        ("", "required"),
        ("launch", "invalid choice"),
        ("logs -n x", "invalid"),
        ("unbind nothing", "no model named 'nothing'"),
        ("start", "already runs"),
    ]:
        with pytest.raises(UsageError, match=message):
            started.run_line_magic("triton", line)


def test_status_models_logs_unbind(started):
    started.user_ns["FACTOR"] = 1
    _serve(started, "keep --input x:float32[1] --output y:float32[1]", CELL)
    _serve(started, "drop --input x:float32[1] --output y:float32[1]", CELL)
    with capture_output() as out:
        started.run_line_magic("triton", "status")
        started.run_line_magic("triton", "models")
        started.run_line_magic("triton", "logs -n 5")
    assert "READY" in out.stdout and "keep" in out.stdout and "drop" in out.stdout
    assert "Triton 2." in out.stdout
    with capture_output() as out:
        started.run_line_magic("triton", "unbind drop")
    assert "unbound" in out.stdout
    assert "drop" not in tritonnb.server().models
    http = tritonnb.server().http_url
    assert infer_json(http, "keep", [fp32("x", [1, 1], [4])])[0] == 200


def test_failing_function_traceback_reaches_the_logs_with_the_cell_source(started):
    _serve(
        started,
        "broken --input x:float32[1] --output y:float32[1]",
        "def broken(x):\n    total = int(x.sum())\n    raise RuntimeError('kaputt ' + str(total))\n",
    )
    status, body = infer_json(tritonnb.server().http_url, "broken", [fp32("x", [1, 1], [7])])
    assert status >= 400 and "kaputt 7" in body["error"]
    with capture_output() as out:
        started.run_line_magic("triton", "logs -n 30")
    assert "Traceback" in out.stdout and "kaputt 7" in out.stdout
    assert "raise RuntimeError('kaputt ' + str(total))" in out.stdout  # the cell's line, from IPython's cache


MAGIC_FLAGS = {
    "triton_model": [
        "--input",
        "--output",
        "--max-batch-size",
        "--batch-delay-us",
        "--instances",
        "--device",
        "--warmup",
        "--stream",
        "--timeout-s",
    ],
    "triton": [
        "start",
        "stop",
        "restart",
        "status",
        "models",
        "unbind",
        "logs",
        "panel",
        "--http-port",
        "--public",
        "--no-restart",
        "--model-repository",
    ],
    "triton_perf": ["--concurrency", "--duration", "--input-data", "--engine", "--url", "--token"],
    "triton_tune": ["--max-latency-ms", "--max-batch-sizes", "--delays-us", "--instances", "--apply"],
}


@pytest.mark.parametrize("magic", sorted(MAGIC_FLAGS))
def test_question_mark_and_help_flag_show_every_flag_with_defaults(shell, magic):
    kind = "cell" if magic == "triton_model" else "line"
    doc = shell.find_magic(magic, kind).__doc__
    for flag in MAGIC_FLAGS[magic]:
        assert flag in doc, flag
    assert {"triton_model": "(default: 32)", "triton": "(default: 40)"}.get(magic, "(default: ") in doc
    with capture_output() as out:
        if kind == "cell":
            shell.run_cell_magic(magic, "m --help", "def m(x):\n    return x\n")
        else:
            shell.run_line_magic(magic, "-h")
    assert out.stdout.strip() == doc.strip()
    assert tritonnb.server() is None or "m" not in tritonnb.server().models  # help only: nothing was served


def test_help_of_one_subcommand(shell):
    with capture_output() as out:
        shell.run_line_magic("triton", "panel -h")
    assert "%triton panel" in out.stdout and "--metrics-url" in out.stdout and "--http-port" not in out.stdout


def test_errors_of_the_kit_are_usage_errors_and_other_errors_keep_their_type(started):
    with pytest.raises(UsageError, match="UnknownModelError: no model named 'ghost'"):
        started.run_line_magic("triton_perf", "ghost --duration 0.1")
    with pytest.raises(ZeroDivisionError):  # a bug in the cell is the user's traceback, not a usage error
        started.run_cell_magic("triton_model", "oops", "x = 1 / 0\ndef oops(x):\n    return x\n")
    assert "oops" not in tritonnb.server().models


def test_errors_of_the_kit_name_the_problem(started):  # tests/test_public_api.py checks where each class lives
    with pytest.raises(tritonnb.SpecError, match="bad model name"):
        tritonnb.bind(lambda x: x, "bad/name")
    with pytest.raises(tritonnb.UnknownModelError) as caught:
        tritonnb.client("ghost")
    assert str(caught.value).startswith("no model named 'ghost'")  # not quoted as a KeyError would be
    with pytest.raises(tritonnb.TritonnbError, match="cannot take the inputs"):
        tritonnb.bind(lambda a, b: a, "pair", inputs=["x:float32[1]"])


def test_restart_and_stop_magics(started):
    started.user_ns["FACTOR"] = 4
    _serve(started, "after --input x:float32[1] --output y:float32[1]", CELL)
    with capture_output() as out:
        started.run_line_magic("triton", "restart")
    assert "restarted" in out.stdout and "after" in out.stdout
    assert tritonnb.client("after")(np.ones((1, 1), np.float32))["y"].tolist() == [[4.0]]
    with capture_output() as out:
        started.run_line_magic("triton", "stop")
    assert "stopped in" in out.stdout and tritonnb.server() is None
    with pytest.raises(UsageError, match="no Triton server runs"):
        started.run_line_magic("triton", "models")


def test_cell_starts_the_server_when_none_runs(shell, monkeypatch):
    http, grpc, metrics = free_ports()
    monkeypatch.setenv("PYTRITON_TRITON_CONFIG_HTTP_PORT", str(http))
    monkeypatch.setenv("PYTRITON_TRITON_CONFIG_GRPC_PORT", str(grpc))
    monkeypatch.setenv("PYTRITON_TRITON_CONFIG_METRICS_PORT", str(metrics))
    assert tritonnb.server() is None
    shell.user_ns["FACTOR"] = 5
    _serve(shell, "auto --input x:float32[1] --output y:float32[1]", CELL)
    assert tritonnb.server().http_url == f"http://127.0.0.1:{http}"
    assert infer_json(f"http://127.0.0.1:{http}", "auto", [fp32("x", [1, 1], [1])])[1]["outputs"][0]["data"] == [5]


def test_start_private_and_no_private(shell, monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/alice/")  # under JupyterHub: private unless told not
    tritonnb.stop()  # an earlier test's server
    for flag, private in (("--no-private", False), ("", True)):
        http, grpc, metrics = free_ports()
        assert tritonnb.server() is None
        with capture_output() as out:
            shell.run_line_magic(
                "triton", f"start {flag} --http-port {http} --grpc-port {grpc} --metrics-port {metrics}"
            )
            shell.run_line_magic("triton", "status")
        assert ("private serving: off" in out.stdout) is not private, out.stdout
        assert ("need this kernel's access token" in out.stdout) is private
        status, _ = infer_json(f"http://127.0.0.1:{http}", "nothing", [fp32("x", [1], [1])])
        assert status == (403 if private else 404)  # refused before the model is even looked up
        shell.run_line_magic("triton", "stop")


STREAM_CELL = """
import time

def tokens(x):
    for i in range(3):
        time.sleep(0.01)
        yield x + i
"""


def test_a_generator_cell_is_served_as_a_stream_and_its_snippets_stream(started):
    card = _serve(started, "tokens", STREAM_CELL)
    text = card.data["text/plain"]
    assert "batching stream, 1 inst." in text and "/v2/models/tokens/generate_stream" in text
    curl = text.split("curl:\n", 1)[1].split("\n\n", 1)[0]
    events = subprocess.run(curl, shell=True, capture_output=True, text=True, check=True).stdout
    assert [line for line in events.splitlines() if line.startswith("data:")] == [
        f'data: {{"model_name":"tokens","model_version":"1","output":{v}}}' for v in ("1.0", "2.0", "3.0")
    ]
    python = text.split("python:\n", 1)[1]
    ran = subprocess.run([sys.executable, "-c", python], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.split() == ["output", "[1.]", "output", "[2.]", "output", "[3.]"]
    forced = _serve(started, "listed --stream", "def listed(x):\n    return iter([x, x])\n")
    assert "batching stream" in forced.data["text/plain"]
