"""Load tests, tuning and warm-up against a real tritonserver."""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.request
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import fp32, infer_json
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

import tritonnb
from tritonnb.errors import PerfError, SpecError, WarmupError
from tritonnb.loadtest.perf import ROW_KEYS, run_perf
from tritonnb.loadtest.tune import tune
from tritonnb.observe.stats_api import fetch_stats
from tritonnb.signature import ModelSpec, TensorSpec

SPEC = {"inputs": ["x:float32[4]"], "outputs": ["y:float32[4]"]}
SPEC_OUT = (TensorSpec("y", "float32", (4,)),)


def _model_config(server, name: str) -> dict:
    with urllib.request.urlopen(f"{server.http_url}/v2/models/{name}/config", timeout=5) as response:
        return json.loads(response.read())


class Counting:
    """A served function that counts its calls; every ``slow_every``-th sleeps, every ``fail_every``-th raises."""

    def __init__(self, slow_every: int = 0, fail_every: int = 0, slow_s: float = 0.06) -> None:
        self.calls = 0
        self.lock = threading.Lock()
        self.slow_every, self.fail_every, self.slow_s = slow_every, fail_every, slow_s

    def __call__(self, x):
        with self.lock:
            self.calls += 1
            call = self.calls
        if self.fail_every and call % self.fail_every == 0:
            raise RuntimeError(f"planned failure of call {call}")
        if self.slow_every and call % self.slow_every == 0:
            time.sleep(self.slow_s)
        return x * 2


def test_percentiles_match_a_known_latency_mix(triton):
    fn = Counting(slow_every=10)
    tritonnb.bind(fn, "mix", max_batch_size=0, **SPEC)
    result = run_perf(triton, "mix", concurrency=[1], duration_s=3.0, warmup_s=0)
    (row,) = result.rows
    assert set(ROW_KEYS) <= set(row)
    assert result.levels[0].as_dict() == row  # the typed level reads the same figures
    assert row["errors"] == 0 and row["requests"] >= 50
    assert row["p50_ms"] < 55  # nine in ten requests are fast
    assert row["p95_ms"] >= 60 and row["p99_ms"] >= 60  # one in ten sleeps 60 ms
    assert row["p50_ms"] <= row["p90_ms"] <= row["p95_ms"] <= row["p99_ms"]
    assert row["throughput"] == pytest.approx(row["requests"] / 3.0, rel=0.15)
    assert row["compute_infer_ms"] is not None and row["compute_infer_ms"] >= 0.06 * 1000 / 10 * 0.8


def test_errors_are_counted_like_the_server_counts_them(triton):
    fn = Counting(fail_every=4)
    tritonnb.bind(fn, "flaky", **SPEC)
    before = fetch_stats(triton.http_url, triton.access_token, "flaky")["flaky"]
    result = run_perf(triton, "flaky", concurrency=[2], duration_s=2.0, warmup_s=0)
    after = fetch_stats(triton.http_url, triton.access_token, "flaky")["flaky"]
    (row,) = result.rows
    assert row["errors"] == after["failure"] - before["failure"] > 0
    assert row["requests"] - row["errors"] == after["success"] - before["success"]
    assert 0.15 < row["errors"] / row["requests"] < 0.35
    assert "planned failure" in result.error_samples[0]


def test_perf_result_and_perf_analyzer_command(triton):
    tritonnb.bind(lambda x: x + 1, "plain", **SPEC)
    result = run_perf(triton, "plain", concurrency=[1, 2, 3], duration_s=0.5, warmup_s=0.1)
    assert [r["concurrency"] for r in result.rows] == [1, 2, 3]
    assert all(r["throughput"] > 0 and r["errors"] == 0 for r in result.rows)
    assert "--concurrency-range 1:3:1" in result.perf_analyzer
    assert f"triton-access-token:{triton.access_token}" in result.perf_analyzer
    assert "--shape x:4" in result.perf_analyzer
    page = result._repr_html_()
    assert 'class="tnb-chart"' in page and "c=3" in result.chart().description and "p99_ms" in repr(result)
    data = {"x": np.full((1, 4), 3, np.float32)}
    assert run_perf(triton, "plain", [1], 0.3, input_data=data, warmup_s=0).rows[0]["errors"] == 0
    sample = np.full(4, 3, np.float32)  # no batch dim: one is added because the model batches
    assert run_perf(triton, "plain", [1], 0.3, input_data=sample, warmup_s=0).rows[0]["errors"] == 0
    with pytest.raises(Exception, match="do not match"):
        run_perf(triton, "plain", [1], 0.3, input_data={"z": data["x"]})
    with pytest.raises(KeyError):
        run_perf(triton, "missing", [1], 0.3)


def test_perf_analyzer_engine_reports_the_same_columns(shell, triton):
    assert shutil.which("perf_analyzer"), "scripts/test.sh installs perf_analyzer into .venv/bin (on PATH there)"
    tritonnb.bind(lambda x: x * 3, "pa", **SPEC)
    with capture_output():
        builtin = shell.run_line_magic("triton_perf", "pa --concurrency 1,2 --duration 1")
        nvidia = shell.run_line_magic("triton_perf", "pa --concurrency 1,2 --duration 1 --engine perf_analyzer")
    assert nvidia.engine == "perf_analyzer" and builtin.engine == "builtin"
    for row in nvidia.rows:
        assert set(ROW_KEYS) == set(row)
        assert row["throughput"] > 0 and row["requests"] > 0 and row["errors"] == 0
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p95_ms"] <= row["p99_ms"]
        assert row["compute_infer_ms"] > 0
    print(
        "builtin vs perf_analyzer infer/s:",
        [(round(a["throughput"]), round(b["throughput"])) for a, b in zip(builtin.rows, nvidia.rows)],
    )
    tritonnb.bind(lambda x: (_ for _ in ()).throw(ValueError("no")), "pa_broken", **SPEC)
    with pytest.raises(UsageError, match="perf_analyzer failed"):
        shell.run_line_magic("triton_perf", "pa_broken --concurrency 1 --duration 0.5 --engine perf_analyzer")


def test_both_engines_send_the_whole_input_batch_in_each_request(shell, triton):
    assert shutil.which("perf_analyzer"), "scripts/test.sh installs perf_analyzer into .venv/bin (on PATH there)"
    firsts = []  # x[:, 0] of every execution: the sample numbers it held

    def record(x):
        firsts.append(x[:, 0].tolist())
        return x

    tritonnb.bind(record, "batch4", max_batch_size=8, **SPEC)
    shell.user_ns["four"] = np.arange(4, dtype=np.float32)[:, None].repeat(4, axis=1)  # 4 distinct samples
    per_request = {}
    for engine in ("builtin", "perf_analyzer"):
        before = fetch_stats(triton.http_url, triton.access_token, "batch4")["batch4"]
        with capture_output():
            result = shell.run_line_magic(
                "triton_perf", f"batch4 --concurrency 1,2 --duration 1 --input-data four --engine {engine}"
            )
        after = fetch_stats(triton.http_url, triton.access_token, "batch4")["batch4"]
        assert all(r["errors"] == 0 and r["throughput"] > 0 for r in result.rows)
        per_request[engine] = (after["inferences"] - before["inferences"]) / (after["success"] - before["success"])
    assert per_request == {"builtin": 4, "perf_analyzer": 4}
    # each request held samples 0..3 in order (Triton may batch two requests into one execution)
    assert all(f == [0.0, 1.0, 2.0, 3.0] * (len(f) // 4) and len(f) % 4 == 0 for f in firsts)
    assert "-b 4 " in result.perf_analyzer and "--shape x:4 " in result.perf_analyzer

    two = ModelSpec("two", (TensorSpec("a", "float32", (4,)), TensorSpec("b", "float32", (4,))), SPEC_OUT)
    server = SimpleNamespace(models={"two": SimpleNamespace(spec=two)})
    data = {"a": np.ones((4, 4), np.float32), "b": np.ones((3, 4), np.float32)}
    with pytest.raises(PerfError, match=r"batch sizes differ \(a: 4, b: 3\)"):
        run_perf(server, "two", [1], 0.5, input_data=data, engine="perf_analyzer")


def test_tuner_changes_the_served_configuration(triton):
    fn = Counting()
    tritonnb.bind(fn, "tuned", max_batch_size=16, batch_delay_us=0, **SPEC)
    seen = []

    def check_served(done, total, row):
        config = _model_config(triton, "tuned")
        seen.append((config["max_batch_size"], config["instance_group"][0]["count"]))
        assert (row["max_batch_size"], row["instances"]) == seen[-1]

    result = tune(
        triton,
        "tuned",
        concurrency=[2],
        duration_s=0.5,
        max_batch_sizes=[0, 4],
        delays_us=[0, 500],
        instances=[1, 2],
        apply=True,
        on_progress=check_served,
    )
    assert len(seen) == len(result.rows) == 6  # (0 | 4 x two delays) x two instance counts
    assert len(set(seen)) == 4
    assert [(run.config.max_batch_size, run.config.instances) for run in result.runs] == seen
    best = result.recommendation
    assert best is not None and result.applied
    slot = triton.models["tuned"]
    assert (slot.spec.max_batch_size, slot.spec.batch_delay_us, slot.spec.instances) == tuple(best.values())
    config = _model_config(triton, "tuned")
    assert (config["max_batch_size"], config["instance_group"][0]["count"]) == (
        best["max_batch_size"],
        best["instances"],
    )
    assert "tnb-tune-result" in result._repr_html_()
    legend = [text.get_text() for text in result.chart().figure.axes[0].get_legend().get_texts()]
    assert f"chosen #{result.best + 1} " in " ".join(legend) and "Pareto front" in legend

    unfit = tune(
        triton,
        "tuned",
        max_latency_ms=1e-6,
        concurrency=[1],
        duration_s=0.3,
        max_batch_sizes=[8],
        delays_us=[0],
        instances=[1],
        apply=True,
    )
    assert unfit.best is None and not unfit.applied
    assert triton.models["tuned"].spec.max_batch_size == best["max_batch_size"]  # what was served stays


def test_warmup_runs_before_the_model_is_ready(triton):
    readiness_during_warmup = []

    def warmed(x):
        readiness_during_warmup.append(triton.is_model_ready("warmed"))
        return x

    tritonnb.bind(warmed, "warmed", warmup=3, max_batch_size=8, **SPEC)
    assert readiness_during_warmup == [False, False, False]  # Triton had not loaded it yet
    status, _ = infer_json(triton.http_url, "warmed", [fp32("x", [1, 4], [1, 2, 3, 4])])
    assert status == 200 and len(readiness_during_warmup) == 4

    calls_before_swap = []

    def swapped(x):
        calls_before_swap.append(1)
        return x * 10

    tritonnb.bind(swapped, "warmed", warmup=2, max_batch_size=8, **SPEC)
    assert len(calls_before_swap) == 2  # warmed before the swap took effect


def test_warmup_with_the_users_own_samples(triton, shell, tmp_path):
    """Bytes that decode (a PNG, say) where generated ones would not: the user's samples, warmup times, at least
    once."""
    import io

    from PIL import Image

    def decode(image):
        return np.array([[Image.open(io.BytesIO(item)).width] for item in image.reshape(-1)], dtype=np.int32)

    buffer = io.BytesIO()
    Image.new("RGB", (7, 3)).save(buffer, format="PNG")
    spec = {"inputs": ["image:bytes[1]"], "outputs": ["width:int32[1]"], "max_batch_size": 4}
    with pytest.raises(WarmupError, match="UnidentifiedImageError"):  # generated bytes are no picture
        tritonnb.bind(decode, "decoder", warmup=1, **spec)
    seen = []

    def counted(image):
        seen.append(image.shape)
        return decode(image)

    pictures = np.array([[buffer.getvalue()], [buffer.getvalue()]], dtype=object)
    tritonnb.bind(counted, "decoder", warmup_data=pictures, **spec)
    assert seen == [(2, 1)]  # once, with the batch as given
    tritonnb.bind(counted, "decoder", warmup=2, warmup_data={"image": [buffer.getvalue()]}, **spec)  # one sample
    assert seen[1:] == [(1, 1), (1, 1)]
    with pytest.raises(SpecError, match=r"input data names \['x'\] do not match"):
        tritonnb.bind(counted, "decoder", warmup_data={"x": pictures}, **spec)
    np.savez(tmp_path / "pictures.npz", image=pictures)
    shell.user_ns["counted"] = counted
    line = "decoder --input image:bytes[1] --output width:int32[1] --max-batch-size 4"
    line += f" --warmup-data {tmp_path / 'pictures.npz'}"
    shell.run_cell_magic("triton_model", line, "def counted_again(image):\n    return counted(image)\n")
    assert seen[-1] == (2, 1)
    with pytest.raises(UsageError, match="no variable named 'nothing'"):
        shell.run_cell_magic(
            "triton_model",
            line.split(" --warmup-data")[0] + " --warmup-data nothing",
            "def f(image):\n    return image\n",
        )
    tritonnb.unbind("decoder")


def test_failing_warmup_is_an_error_and_changes_nothing(triton):
    def broken(x):
        raise ValueError("weights missing")

    with pytest.raises(WarmupError, match=r"warm-up batch 1 of 2 failed.*weights missing"):
        tritonnb.bind(broken, "coldmodel", warmup=2, **SPEC)
    assert "coldmodel" not in triton.models and not triton.is_model_ready("coldmodel")

    tritonnb.bind(lambda x: x * 2, "steady2", **SPEC)
    with pytest.raises(WarmupError):
        tritonnb.bind(broken, "steady2", warmup=1, **SPEC)
    status, body = infer_json(triton.http_url, "steady2", [fp32("x", [1, 4], [1, 1, 1, 1])])
    assert status == 200 and body["outputs"][0]["data"] == [2, 2, 2, 2]


def test_perf_and_tune_magics(shell, triton):
    shell.run_cell_magic(
        "triton_model",
        "magicperf --input x:float32[4] --output y:float32[4] --warmup 1",
        "def magicperf(x):\n    return x - 1\n",
    )
    with capture_output() as out:
        result = shell.run_line_magic("triton_perf", "magicperf --concurrency 1,2 --duration 0.5 --max-latency-ms 250")
    assert [r["concurrency"] for r in result.rows] == [1, 2] and result.max_latency_ms == 250
    legend = [t.get_text() for t in result.chart().figure.axes[0].get_legend().get_texts()]
    assert legend[-1].startswith("budget: p95 ≤ 250 ms")  # drawn, or named as far above the points
    assert "load test 2 of 2" in out.stdout  # progress, one line per level outside a kernel
    shell.user_ns["probe"] = np.ones((1, 4), np.float32)
    result = shell.run_line_magic("triton_perf", "magicperf --concurrency 1 --duration 0.3 --input-data probe")
    assert result.rows[0]["errors"] == 0
    with capture_output():
        tuned = shell.run_line_magic(
            "triton_tune",
            "magicperf --duration 0.3 --concurrency 1 --max-batch-sizes 0,4 "
            "--delays-us 0 --instances 1 --max-latency-ms 1000 --apply",
        )
    assert tuned.applied and len(tuned.rows) == 2
    for line, message in [
        ("nosuch", "no model named 'nosuch'"),
        ("magicperf --concurrency a,b", "not a comma"),
        ("magicperf --concurrency 0", "1 or more"),
        ("magicperf --input-data nope", "no variable"),
        ("magicperf --duration -1", "must be positive"),
    ]:
        with pytest.raises(UsageError, match=message):
            shell.run_line_magic("triton_perf", line)
