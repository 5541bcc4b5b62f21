"""Versions of a model side by side on a real tritonserver: each answers with its own code, under load, with nothing
lost; the newest answers the URL without a version; the magics, card, status and load tests name versions."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from helpers import command_line, fp32, infer_json, process_tree, serve_export, wait_until
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

import tritonnb
from tritonnb.errors import SpecError, UnknownModelError

SPEC = {"inputs": ["x:float32[4]"], "outputs": ["y:float32[4]"]}
ONES = [fp32("x", [1, 4], [1, 1, 1, 1])]


def _answer(http_url: str, path: str) -> float:
    status, body = infer_json(http_url, path, ONES)
    assert status == 200, body
    return body["outputs"][0]["data"][0]


def _load(http_url: str, paths: list[str], stop: threading.Event, seen: dict, failures: list) -> None:
    """Closed-loop requests to each of ``paths`` in turn until ``stop``: answers by path, failures kept."""
    while not stop.is_set():
        for path in paths:
            status, body = infer_json(http_url, path, ONES)
            if status == 200:
                seen.setdefault(path, []).append(body["outputs"][0]["data"][0])
            else:
                failures.append((path, status, body))


def test_two_versions_answer_with_their_own_code_under_load_with_nothing_lost(triton):
    first = tritonnb.bind(lambda x: x + 1, "ab", **SPEC)
    assert first.version is None and first.infer_url.endswith("/v2/models/ab/infer")
    second = tritonnb.bind(lambda x: x + 2, "ab", version=2, **SPEC)
    assert second.result.action == "loaded" and second.versions == "1,2"
    assert second.infer_url.endswith("/v2/models/ab/versions/2/infer")
    assert (_answer(triton.http_url, "ab/versions/1"), _answer(triton.http_url, "ab/versions/2")) == (2.0, 3.0)
    assert _answer(triton.http_url, "ab") == 3.0  # no version: the newest
    with capture_output() as printed:
        exec(second.python, {})  # the card's snippet calls its own version
    assert printed.stdout.startswith("y [[3. 3. 3. 3.]]"), printed.stdout

    paths = ["ab/versions/1", "ab/versions/2", "ab"]
    stop, seen, failures = threading.Event(), {}, []
    clients = [threading.Thread(target=_load, args=(triton.http_url, paths, stop, seen, failures)) for _ in range(3)]
    for client in clients:
        client.start()
    try:
        wait_until(lambda: all(len(seen.get(p, ())) >= 5 for p in paths) or failures, 30, "answers before")
        actions = [tritonnb.bind(lambda x, k=k: x + 10 * k, "ab", version=1, **SPEC).result.action for k in (1, 2)]
        actions.append(tritonnb.bind(lambda x: x + 3, "ab", version=3, **SPEC).result.action)  # reloads 1 and 2
        tritonnb.unbind("ab", version=3)  # reloads 1 and 2 again
        actions.append(tritonnb.bind(lambda x: x + 30, "ab", version=2, **SPEC).result.action)
        counted = {p: len(seen[p]) for p in paths}
        wait_until(lambda: all(len(seen[p]) >= counted[p] + 5 for p in paths) or failures, 30, "answers after")
    finally:
        stop.set()
        for client in clients:
            client.join()
    assert failures == []
    assert actions == ["swapped", "swapped", "loaded", "swapped"]
    assert seen["ab/versions/1"][-1] == 21.0 and seen["ab/versions/2"][-1] == 31.0 and seen["ab"][-1] == 31.0
    assert set(seen["ab/versions/1"]) <= {2.0, 11.0, 21.0} and set(seen["ab/versions/2"]) <= {3.0, 31.0}
    ones = np.ones((1, 4), np.float32)
    assert tritonnb.client("ab", version=1)(ones)["y"][0, 0] == 21.0
    assert tritonnb.client("ab")(ones)["y"][0, 0] == 31.0
    tritonnb.unbind("ab")


def test_versions_share_one_spec_and_a_stream_stays_alone(triton):
    tritonnb.bind(lambda x: x, "shared", **SPEC)
    with pytest.raises(SpecError, match=r"version 2 of model 'shared' must keep the inputs.*\(1\)"):
        tritonnb.bind(lambda x: x, "shared", version=2, inputs=["x:float32[8]"], outputs=["y:float32[8]"])
    with pytest.raises(SpecError, match="version is a whole number"):
        tritonnb.bind(lambda x: x, "shared", version=0, **SPEC)
    assert triton.models["shared"].version_list() == "1"
    tritonnb.bind(lambda x: x * 2, "shared", inputs=["x:float32[8]"], outputs=["y:float32[8]"])  # alone: reloads

    def counter(n):
        yield n

    with pytest.raises(SpecError, match="a stream is served as version 1 alone"):
        tritonnb.bind(counter, "counter", version=2, inputs=["n:int32[1]"], outputs=["k:int32[1]"])
    with pytest.raises(UnknownModelError, match="no version 5"):
        tritonnb.unbind("shared", version=5)
    with pytest.raises(UnknownModelError, match="no version 5"):
        tritonnb.client("shared", version=5)
    tritonnb.unbind("shared")


def test_magics_serve_show_and_unbind_a_version(triton, shell):
    cell = "def f(x):\n    return x * {k}\n"
    shell.run_cell_magic("triton_model", "mv --input x:float32[4] --output y:float32[4]", cell.format(k=2))
    line = "mv --version 2 --input x:float32[4] --output y:float32[4]"
    shown = shell.run_cell_magic("triton_model", line, cell.format(k=3))
    assert tritonnb.card("mv", version=2) is shown and tritonnb.card("mv") is shown  # without a version: the newest
    card = repr(shown)
    assert "as 'mv' version 2" in card and "/v2/models/mv/versions/2/infer" in card
    assert 'tritonnb.client("mv", version=2)' in card and 'model_version="2"' in card
    assert (_answer(triton.http_url, "mv/versions/1"), _answer(triton.http_url, "mv/versions/2")) == (2.0, 3.0)
    with capture_output() as out:
        shell.run_line_magic("triton", "models")
    assert any(line.split()[:3] == ["mv", "READY", "v1,2"] for line in out.stdout.splitlines()), out.stdout
    assert tritonnb.metrics()["models"]["mv"]["version"] == "1,2"

    result = shell.run_line_magic("triton_perf", "mv --versions 1,2 --concurrency 1 --duration 0.5")
    assert [run.version for run in result.runs] == [1, 2]
    assert all(run.levels[0].errors == 0 and run.levels[0].requests > 0 for run in result.runs)
    assert "-x 2" in result.runs[1].perf_analyzer
    assert "load test of 'mv' version 2" in repr(result)
    assert result.chart().png().startswith(b"\x89PNG")
    with pytest.raises(UsageError, match="no version 7"):
        shell.run_line_magic("triton_perf", "mv --versions 7 --concurrency 1 --duration 0.5")

    with capture_output() as out:
        shell.run_line_magic("triton", "unbind mv --version 1")
    assert "model 'mv' version 1 unbound" in out.stdout
    assert _answer(triton.http_url, "mv") == 3.0
    status, _ = infer_json(triton.http_url, "mv/versions/1", ONES)
    assert status != 200
    shell.run_line_magic("triton", "unbind mv")
    assert "mv" not in triton.models


def test_an_export_writes_every_version_and_a_fresh_server_answers_both(triton, tmp_path):
    from tritonnb.deploy.model_config import parse_config
    from tritonnb.errors import ExportError

    tritonnb.bind(lambda x: x + 1, "pair", **SPEC)
    tritonnb.bind(lambda x: x + 2, "pair", version=2, **SPEC)
    repository = tmp_path / "fleet"
    result = tritonnb.export("pair", repository)
    assert (result.versions, result.version) == ([1, 2], 2) and "versions 1, 2" in repr(result)
    config = parse_config((repository / "pair" / "config.pbtxt").read_text())
    assert list(config.version_policy.specific.versions) == [1, 2]
    with pytest.raises(ExportError, match=r"version\(s\) 1, 2 of 'pair' exist"):
        tritonnb.export("pair", repository)
    tritonnb.unbind("pair", version=2)
    tritonnb.bind(lambda x: x + 5, "pair", inputs=["x:float32[8]"], outputs=["y:float32[8]"])  # another signature
    before = (repository / "pair" / "config.pbtxt").read_text()
    with pytest.raises(ExportError, match=r"versions 2 of 'pair' .* take x:TYPE_FP32\[4\]"):
        tritonnb.export("pair", repository, version=1, force=True)  # would change what version 2 is served with
    assert (repository / "pair" / "config.pbtxt").read_text() == before
    tritonnb.unbind("pair")

    with serve_export(repository, tmp_path, tmp_path / "fleet.log") as url:
        assert (_answer(url, "pair/versions/1"), _answer(url, "pair/versions/2"), _answer(url, "pair")) == (2, 3, 3)


def test_a_killed_stub_of_one_version_gets_the_model_loaded_again(triton):
    tritonnb.bind(lambda x: x + 1, "healed", **SPEC)
    tritonnb.bind(lambda x: x + 2, "healed", version=2, **SPEC)
    stubs = [p for p in process_tree(triton.pid) if "triton_python_backend_stub" in " ".join(command_line(p))]
    victim = next(p for p in stubs if "healed_0_0" in command_line(p) and command_line(p)[1].endswith("/2/model.py"))
    victim.kill()

    def both_answer() -> bool:
        answers = [infer_json(triton.http_url, f"healed/versions/{v}", ONES)[0] for v in (1, 2)]
        return answers == [200, 200] and triton.status()["models"]["healed"]["stub_restarts"] == 1

    wait_until(both_answer, 60, lambda: f"version 2 was not served again:\n{triton.logs(30)}", interval=0.2)
    assert (_answer(triton.http_url, "healed/versions/1"), _answer(triton.http_url, "healed/versions/2")) == (2, 3)
    tritonnb.unbind("healed")
