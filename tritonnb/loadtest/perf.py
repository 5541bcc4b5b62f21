"""Closed-loop load tests of a served model: percentiles, errors, Triton's server-side split, per concurrency."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tritonnb.errors import NoServerError, PerfError, SpecError, UnknownModelError
from tritonnb.http_get import ACCESS_TOKEN_HEADER, base_url
from tritonnb.loadtest.results import Level, PerfRow, StreamRow, columns
from tritonnb.observe.metrics_text import PHASES
from tritonnb.observe.remote_spec import remote_spec
from tritonnb.observe.stats_api import fetch_stats
from tritonnb.signature import ModelSpec, arrays_from, sample_inputs

if TYPE_CHECKING:
    from tritonnb.loadtest.charts import Chart

__all__ = [
    "ENGINES",
    "ROW_KEYS",
    "STREAM_ROW_KEYS",
    "WARMUP_S",
    "Endpoint",
    "PerfResult",
    "Progress",
    "batch_size",
    "generate_body",
    "input_arrays",
    "model_spec",
    "percentiles",
    "perf_analyzer_command",
    "plot",
    "request_body",
    "rows_dataframe",
    "run_perf",
    "stream_row",
]

ROW_KEYS = columns(PerfRow)
STREAM_ROW_KEYS = columns(StreamRow)  # a streaming model's: latency is the time to the first response
WARMUP_S = 0.5
TOKEN_VARIABLE = "TRITONNB_LOADGEN_TOKEN"  # how the built-in engine's child process gets the access token
Progress = Callable[[int, int, dict[str, Any]], None]


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where a load test sends requests, and the server's access token, sent with every request and statistics
    read (None: not sent; the server-side columns stay empty if the server restricts its statistics, and every
    request fails with 403 on a private server)."""

    http_url: str
    token: str | None = None
    version: int | None = None  # of the model (None: the newest)


@dataclasses.dataclass
class PerfResult:
    """Rows of one load test (one per concurrency level) and the equivalent perf_analyzer command line.

    ``rows`` is plain data: one dict per level, keyed by ``row_keys``. ``levels`` reads the same rows as typed
    ``PerfRow`` (``StreamRow`` for a stream).
    """

    model: str
    duration_s: float
    rows: list[dict[str, Any]]
    perf_analyzer: str
    error_samples: list[str] = dataclasses.field(default_factory=list)
    engine: str = "builtin"
    max_latency_ms: float | None = None  # a p95 budget, drawn as a line on the chart
    streaming: bool = False  # of a stream: throughput is responses/s, latency the time to the first response
    version: int | None = None  # the model's version that was load-tested (None: the newest)

    @property
    def label(self) -> str:
        """The model, and its version where one was named: ``clf`` or ``clf v2``."""
        return self.model if self.version is None else f"{self.model} v{self.version}"

    @property
    def row_keys(self) -> tuple[str, ...]:
        """The columns of the rows."""
        return STREAM_ROW_KEYS if self.streaming else ROW_KEYS

    @property
    def levels(self) -> list[Level]:
        """The rows as typed levels, in the same order."""
        row_type = StreamRow if self.streaming else PerfRow
        return [row_type.from_dict(row) for row in self.rows]

    def __repr__(self) -> str:
        from tritonnb.loadtest.tables import rows_text

        reproduce = f"\nreproduce with NVIDIA's tool:\n{self.perf_analyzer}" if self.perf_analyzer else ""
        return (
            f"load test of {self.model!r}{'' if self.version is None else f' version {self.version}'}, "
            f"{self.duration_s:g} s per level\n{rows_text(self.levels, self.row_keys)}\n" + reproduce
        )

    def _repr_html_(self) -> str:
        from tritonnb.loadtest.tables import perf_html

        return perf_html(self)

    def chart(self) -> Chart:
        """Throughput against p50 and p95 latency, one point per concurrency level (see ``plot`` for several runs)."""
        return plot(self)

    def to_dataframe(self) -> Any:
        """The rows as a pandas DataFrame (pandas is imported here, and only here)."""
        return rows_dataframe(self.rows, self.row_keys)


@dataclasses.dataclass
class VersionComparison:
    """Load tests of several versions of one model, one after another under the same load: an A/B comparison.
    Each version keeps its table; ``chart()`` draws them all on one chart."""

    runs: list[PerfResult]

    def chart(self) -> Chart:
        """Every version's throughput against latency, one colour per version."""
        return plot(*self.runs)

    def __repr__(self) -> str:
        return "\n\n".join(repr(run) for run in self.runs)

    def _repr_html_(self) -> str:
        from tritonnb.loadtest.tables import perf_html

        tables = "".join(perf_html(run, chart=False) for run in self.runs)
        return f"<div class='tnb-perf-versions'>{self.chart().html()}{tables}</div>"


def compare_versions(server: Any, name: str, versions: Sequence[int], **options: Any) -> VersionComparison:
    """``run_perf`` on each of ``versions`` of model ``name`` in turn, with the same options (see ``run_perf``)."""
    if len(set(versions)) != len(versions) or len(versions) < 2:
        raise SpecError(f"compare two or more distinct versions, got {list(versions)}")
    return VersionComparison([run_perf(server, name, version=version, **options) for version in versions])


def plot(*runs: PerfResult, labels: Sequence[str] | None = None, max_latency_ms: float | None = None) -> Chart:
    """One chart of several load tests, e.g. before and after a hot swap or a tuning step: one colour per run,
    named by ``labels`` (default: the model names). The latency budget defaults to the runs' own when they share one.
    """
    from tritonnb.loadtest.charts import perf_chart

    if not runs:
        raise SpecError("plot() needs at least one load test result (what %triton_perf or run_perf returned)")
    strangers = [type(run).__name__ for run in runs if not isinstance(run, PerfResult)]
    if strangers:
        raise SpecError(f"plot() draws load test results (PerfResult), not {', '.join(strangers)}")
    if labels is not None and (isinstance(labels, str) or len(labels) != len(runs)):
        raise SpecError(f"labels must be a list with one label per run ({len(runs)}), got {labels!r}")
    if max_latency_ms is None and len({run.max_latency_ms for run in runs}) == 1:
        max_latency_ms = runs[0].max_latency_ms
    return perf_chart(runs, labels, max_latency_ms)


def rows_dataframe(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> Any:
    """Rows of results as a pandas DataFrame with ``keys`` as its columns."""
    try:
        import pandas
    except ImportError:
        raise ImportError("to_dataframe() needs pandas: pip install pandas") from None
    return pandas.DataFrame(list(rows), columns=list(keys))


def input_arrays(spec: ModelSpec, data: Any = None, seed: int = 0) -> dict[str, np.ndarray]:
    """The request's arrays: ``data`` (see ``tritonnb.signature.arrays_from``), or random arrays generated from the
    signature (a batch of one)."""
    if data is None:
        return sample_inputs(spec.inputs, 1 if spec.batched else None, np.random.default_rng(seed))
    return arrays_from(spec, data, PerfError)


def batch_size(spec: ModelSpec, arrays: dict[str, np.ndarray]) -> int:
    """The samples in one request: the shared first dim of every input when the model batches, else 1. Both
    engines send every one of them in each request (perf_analyzer as ``-b`` samples, see ``_PerfAnalyzerEngine``)."""
    if not spec.batched:
        return 1
    sizes = {name: (a.shape[0] if a.ndim else None) for name, a in arrays.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values():
        raise PerfError(
            f"the inputs' batch sizes differ ({', '.join(f'{n}: {b}' for n, b in sizes.items())}): every input of a "
            "request to a batching model needs the same number of samples in its first dim"
        )
    (size,) = set(sizes.values())
    if size < 1:
        raise PerfError("the input data holds no sample: give at least one (a batch of one or more)")
    return size


def request_body(spec: ModelSpec, arrays: dict[str, np.ndarray]) -> tuple[bytes, int]:
    """A binary-tensor KServe v2 request (and its JSON header length), asking for binary outputs."""
    import tritonclient.http as httpclient

    inputs = []
    for input_spec in spec.inputs:
        array = arrays[input_spec.name]
        infer_input = httpclient.InferInput(input_spec.name, list(array.shape), input_spec.triton_dtype)
        infer_input.set_data_from_numpy(array, binary_data=True)
        inputs.append(infer_input)
    outputs = [httpclient.InferRequestedOutput(o.name, binary_data=True) for o in spec.outputs]
    body, header_length = httpclient.InferenceServerClient.generate_request_body(inputs, outputs=outputs)
    return body, header_length if header_length is not None else len(body)


def perf_analyzer_command(
    http_url: str,
    spec: ModelSpec,
    arrays: dict[str, np.ndarray],
    levels: Sequence[int],
    duration_s: float,
    token: str | None,
    version: int | None = None,
) -> str:
    """The perf_analyzer command line sending requests of the same shape, random data (with the token its server-side
    stats need): ``-b`` is the samples per request, ``--shape`` the shape of one sample when the model batches."""
    shapes = [
        f"--shape {name}:{','.join(map(str, a.shape[1:] if spec.batched else a.shape))}" for name, a in arrays.items()
    ]
    common = [
        f"perf_analyzer -m {spec.name}{'' if version is None else f' -x {version}'} "
        f"-u {http_url.removeprefix('http://')} -i http -b {batch_size(spec, arrays)}",
        f"--measurement-interval {int(duration_s * 1000)}",
        *shapes,
        *([f"-H {shlex.quote(f'{ACCESS_TOKEN_HEADER}:{token}')}"] if token else []),
    ]
    steps = {b - a for a, b in itertools.pairwise(levels)}
    if len(levels) == 1 or (len(steps) == 1 and min(steps) > 0):  # perf_analyzer ranges only go up
        step = steps.pop() if steps else 1
        return " ".join([*common, f"--concurrency-range {levels[0]}:{levels[-1]}:{step}"])
    return "\n".join(" ".join([*common, f"--concurrency-range {c}:{c}"]) for c in levels)


def percentiles(latencies_ms: Sequence[float]) -> dict[str, float | None]:
    """p50/p90/p95/p99 of the latencies (None when there are none)."""
    if not latencies_ms:
        return {f"p{q}_ms": None for q in (50, 90, 95, 99)}
    values = np.percentile(np.asarray(latencies_ms), [50, 90, 95, 99])
    return {f"p{q}_ms": float(v) for q, v in zip((50, 90, 95, 99), values)}


def _server_split(before: dict | None, after: dict | None) -> dict[str, float | None]:
    if not before or not after:
        return {f"{p}_ms": None for p in PHASES}
    count = after.get("success", 0) - before.get("success", 0)
    return {f"{p}_ms": ((after[f"{p}_ns"] - before[f"{p}_ns"]) / count / 1e6 if count > 0 else None) for p in PHASES}


class _BuiltinEngine:
    """tritonnb's own generator (``tritonnb.loadtest.loadgen``) in a child process, one run per level."""

    def __init__(
        self, endpoint: Endpoint, spec: ModelSpec, arrays: dict[str, np.ndarray], duration_s: float, warmup_s: float
    ) -> None:
        self.endpoint, self.spec, self.duration_s, self.warmup_s = endpoint, spec, duration_s, warmup_s
        body, self.header_length = generate_body(spec, arrays) if spec.stream else request_body(spec, arrays)
        self._body = tempfile.NamedTemporaryFile(suffix=".bin")  # noqa: SIM115 (closed in close())
        self._body.write(body)
        self._body.flush()

    def measure(self, level: int) -> tuple[Level, list[str]]:
        """One level: client-side latencies and errors, and Triton's split over the same window."""
        endpoint, name = self.endpoint, self.spec.name
        # a stream's row has no server-side split: its statistics are not read
        before = None if self.spec.stream else self._stats()
        command = [
            sys.executable,
            "-m",
            "tritonnb.loadtest.loadgen",
            f"--host={urllib.parse.urlsplit(endpoint.http_url).hostname}",
            f"--port={urllib.parse.urlsplit(endpoint.http_url).port or 80}",
            f"--model={name}",
            f"--concurrency={level}",
            f"--duration={self.duration_s}",
            f"--warmup={self.warmup_s}",
            f"--body={self._body.name}",
            f"--header-length={self.header_length}",
            *(["--stream"] if self.spec.stream else []),
            *([f"--version={endpoint.version}"] if endpoint.version is not None else []),
            *([f"--header-env={ACCESS_TOKEN_HEADER}={TOKEN_VARIABLE}"] if endpoint.token else []),
        ]
        # the token goes through the environment: other users of the machine can read a command line (ps)
        environment = {**os.environ, TOKEN_VARIABLE: endpoint.token} if endpoint.token else None
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=self.duration_s + self.warmup_s + 120, env=environment
        )
        if done.returncode != 0:
            raise PerfError(f"the load generator failed:\n{done.stderr[-2000:]}")
        measured = json.loads(done.stdout)
        if self.spec.stream:
            return stream_row(level, measured), measured["error_samples"]
        after = self._stats()
        latencies = measured["latencies_ms"]
        row = PerfRow(
            concurrency=level,
            throughput=len(latencies) / measured["elapsed_s"],
            **percentiles(latencies),
            errors=measured["errors"],
            requests=len(latencies) + measured["errors"],
            **_server_split(before, after),
        )
        return row, measured["error_samples"]

    def _stats(self) -> dict[str, float] | None:
        """Triton's counters of the model (of the version load-tested), or None where they cannot be read."""
        endpoint, name = self.endpoint, self.spec.name
        return (fetch_stats(endpoint.http_url, endpoint.token, name, endpoint.version) or {}).get(name)

    def close(self) -> None:
        """Remove the request body file."""
        self._body.close()


class _PerfAnalyzerEngine:
    """NVIDIA's perf_analyzer (from PATH), one run per level, read back from its CSV report.

    It sends the same request as the built-in engine. For a batching model, the shapes in perf_analyzer's
    ``--input-data`` JSON are per sample and ``-b N`` builds each request from the first N entries of its ``data``
    list, in order (measured with perf_analyzer 2.40: 4 distinct entries with ``-b 4`` reach the model as one
    [4, ...] request holding samples 0, 1, 2, 3, at any concurrency), so the JSON holds one entry per sample of the
    batch and the run uses ``-b`` batch size. Its ``Inferences/Second`` counts samples: divided by the batch size,
    the ``throughput`` column is requests/s like the built-in engine's.
    """

    def __init__(self, endpoint: Endpoint, spec: ModelSpec, arrays: dict[str, np.ndarray], duration_s: float) -> None:
        self.binary = shutil.which("perf_analyzer")
        if self.binary is None:
            raise PerfError("perf_analyzer is not on PATH; use the built-in engine, or install Triton's client SDK")
        self.endpoint, self.spec, self.duration_s = endpoint, spec, duration_s
        self._folder = tempfile.TemporaryDirectory(prefix="tritonnb-perf-")
        self._data = pathlib.Path(self._folder.name) / "input.json"
        self.batch = batch_size(spec, arrays)
        samples = [
            {name: _json_tensor(array[i] if spec.batched else array) for name, array in arrays.items()}
            for i in range(self.batch)
        ]
        self._data.write_text(json.dumps({"data": samples}))

    def measure(self, level: int) -> tuple[Level, list[str]]:
        """One level, measured over three windows that together take about ``duration_s``."""
        report = pathlib.Path(self._folder.name) / f"c{level}.csv"
        window_ms = max(200, int(self.duration_s * 1000 / 3))
        command = [
            self.binary,
            "-m",
            self.spec.name,
            *(["-x", str(self.endpoint.version)] if self.endpoint.version is not None else []),
            "-u",
            self.endpoint.http_url.removeprefix("http://"),
            "-i",
            "http",
            "-b",
            str(self.batch),
            "--concurrency-range",
            f"{level}:{level}",
            "--measurement-interval",
            str(window_ms),
            "--stability-percentage",
            "100",
            "--input-data",
            str(self._data),
            *(["-H", f"{ACCESS_TOKEN_HEADER}:{self.endpoint.token}"] if self.endpoint.token else []),
            "-f",
            str(report),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=self.duration_s * 10 + 120)
        if done.returncode != 0 or not report.exists():
            raise PerfError(f"perf_analyzer failed:\n{(done.stdout + done.stderr)[-2000:]}")
        with open(report, newline="") as f:
            row = next(csv.DictReader(f))
        ms = {
            key: float(row[column]) / 1000
            for key, column in (
                ("p50_ms", "p50 latency"),
                ("p90_ms", "p90 latency"),
                ("p95_ms", "p95 latency"),
                ("p99_ms", "p99 latency"),
                ("queue_ms", "Server Queue"),
                ("compute_input_ms", "Server Compute Input"),
                ("compute_infer_ms", "Server Compute Infer"),
                ("compute_output_ms", "Server Compute Output"),
            )
        }
        throughput = float(row["Inferences/Second"]) / self.batch  # samples/s to requests/s
        counts = re.findall(r"Request count: (\d+)", done.stdout)  # of the stable window it reports
        requests = int(counts[-1]) if counts else None
        return PerfRow(concurrency=level, throughput=throughput, errors=0, requests=requests, **ms), []

    def close(self) -> None:
        """Remove the input data and reports."""
        self._folder.cleanup()


def generate_body(spec: ModelSpec, arrays: dict[str, np.ndarray]) -> tuple[bytes, int]:
    """The JSON body of Triton's generate extension for a stream's load test (no binary part: header length 0)."""
    if spec.shaped_inputs:
        raise PerfError(
            f"cannot load-test stream {spec.name!r}: inputs {spec.shaped_inputs} have more than one dim per sample, "
            "and Triton's generate extension, which the load generator streams through, takes each input as a flat list"
        )
    body = {name: _json_values(array) for name, array in arrays.items()}
    return json.dumps(body).encode(), 0


def stream_row(level: int, measured: dict[str, Any]) -> StreamRow:
    """One level of a stream's load test: responses/s, streams/s, time to first response and between responses."""
    first, between = measured["latencies_ms"], measured["between_ms"]
    p_first, p_between = percentiles(first), percentiles(between)
    return StreamRow(
        concurrency=level,
        throughput=measured["responses"] / measured["elapsed_s"],
        streams_per_s=len(first) / measured["elapsed_s"],
        p50_ms=p_first["p50_ms"],
        p95_ms=p_first["p95_ms"],
        between_p50_ms=p_between["p50_ms"],
        between_p95_ms=p_between["p95_ms"],
        errors=measured["errors"],
        requests=len(first) + measured["errors"],
    )


def _json_values(array: np.ndarray) -> list[Any]:
    """An array's values as a flat JSON list, row-major (bytes as text)."""
    return [v.decode() if isinstance(v, bytes) else v for v in array.reshape(-1).tolist()]


def _json_tensor(array: np.ndarray) -> dict[str, Any]:
    """One input of one perf_analyzer data entry: its values, row-major, and its shape."""
    return {"content": _json_values(array), "shape": list(array.shape)}


ENGINES = ("builtin", "perf_analyzer")


def run_perf(
    server: Any,
    name: str,
    concurrency: Sequence[int] = (1, 2, 4, 8),
    duration_s: float = 5.0,
    input_data: Any = None,
    on_progress: Progress | None = None,
    warmup_s: float = WARMUP_S,
    engine: str = "builtin",
    *,
    url: str | None = None,
    token: str | None = None,
    max_latency_ms: float | None = None,
    version: int | None = None,
) -> PerfResult:
    """Load-test model ``name`` of ``server`` at each concurrency level; the clients run in a separate process.
    ``version``: that version of the model (None: the newest, Triton's default).

    ``engine`` is ``builtin`` (tritonnb's generator; each level first runs ``warmup_s`` uncounted, which Triton's
    server-side columns include) or ``perf_analyzer`` (NVIDIA's tool from PATH; it fails on any error).

    With ``url``, the model is any Triton server's (``server`` may be None): its inputs, outputs and batching are
    read from that server, and ``token`` is sent to its statistics API if it restricts it (else Triton's
    server-side columns stay empty). A model of a served model repository is read from the server in the same way.
    ``max_latency_ms``: a p95 budget, drawn as a line on the result's chart. ``on_progress`` is called after each
    level with the levels done, their number and that level's row, a plain dict like those of the result's ``rows``.
    """
    if url is not None and server is not None and base_url(url) == server.http_url:
        url = token = None  # this kernel's own server: its bindings, and its token
    spec = model_spec(server, name, url, token)
    levels = [int(c) for c in concurrency]
    if not levels or any(c < 1 for c in levels):
        raise SpecError(f"concurrency levels must be 1 or more, got {levels}")
    if duration_s <= 0:
        raise SpecError(f"duration must be positive, got {duration_s}")
    if engine not in ENGINES:
        raise SpecError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if spec.stream and engine != "builtin":
        raise SpecError(f"model {name!r} streams: load-test it with the built-in engine")
    arrays = input_arrays(spec, input_data)
    batch_size(spec, arrays)  # an input batch no request can carry fails here, before either engine runs
    if url is None and name in server.models:
        server.models[name].require_version(version)
    if url is not None:
        endpoint = Endpoint(base_url(url), token, version)
    else:
        endpoint = Endpoint(server.http_url, server.access_token, version)
    if engine == "builtin":
        runner: Any = _BuiltinEngine(endpoint, spec, arrays, duration_s, warmup_s)
    else:
        runner = _PerfAnalyzerEngine(endpoint, spec, arrays, duration_s)
    rows: list[dict[str, Any]] = []
    samples: list[str] = []
    try:
        for index, level in enumerate(levels):
            row, errors = runner.measure(level)
            rows.append(row.as_dict())
            samples += errors
            if on_progress is not None:
                on_progress(index + 1, len(levels), row.as_dict())
    finally:
        runner.close()
    command = ""  # perf_analyzer measures no stream's time between responses
    if not spec.stream:
        command = perf_analyzer_command(endpoint.http_url, spec, arrays, levels, duration_s, endpoint.token, version)
    return PerfResult(name, duration_s, rows, command, samples[:5], engine, max_latency_ms, spec.stream, version)


def model_spec(server: Any, name: str, url: str | None = None, token: str | None = None) -> ModelSpec:
    """Model ``name``'s spec: a binding's of ``server``; else as the server that serves it reports it (with ``url``,
    any Triton server, sent ``token`` if given; else ``server``, for a model of its model repositories)."""
    if url is not None:
        if not base_url(url).startswith("http://"):
            raise SpecError(f"cannot load-test {url!r}: tritonnb's load generator speaks plain HTTP (http://...)")
        return remote_spec(base_url(url), name, token)
    if token is not None:
        raise SpecError("a token goes with the URL of another server; this kernel's server needs none")
    if server is None:
        raise NoServerError("no Triton server runs here; start one, or give the URL of one to load-test")
    if name in server.models:
        return server.models[name].spec
    if name in server.repository_models:
        return remote_spec(server.http_url, name, server.access_token)
    raise UnknownModelError.among(name, [*server.models, *server.repository_models])
