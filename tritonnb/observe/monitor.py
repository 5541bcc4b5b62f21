"""Samples a Triton server's health, ``/metrics`` and statistics API; turns counters into rates and history.

``Monitor.poll()`` is one synchronous sample (used by ``tritonnb.metrics()``, tests, and ``tritonnb.observe.poller``'s
background thread that panels share).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Protocol

from tritonnb.errors import NoServerError, SpecError
from tritonnb.http_get import answers_ok, base_url, get_json, get_text, token_headers
from tritonnb.observe.host_gpu import nvml_gpus
from tritonnb.observe.metrics_text import PHASES, parse_metrics
from tritonnb.observe.stats_api import fetch_stats
from tritonnb.observe.stream_stats import StreamFigures
from tritonnb.signature import ModelSpec
from tritonnb.states import ModelState, ServerState

__all__ = [
    "AWAY",
    "COUNTERS",
    "HISTORY_S",
    "ModelFacts",
    "ModelMetrics",
    "Monitor",
    "OwnServer",
    "Snapshot",
    "Target",
    "target_for",
]

HISTORY_S = 300.0
AWAY = {  # our own server's states in which it is not polled, and why
    ServerState.STOPPED: "stopped with %triton stop",
    ServerState.DOWN: "tritonserver exited",
    ServerState.RECOVERING: "tritonserver exited; starting it again and binding every model again",
}
COUNTERS = ("success", "failure", "inferences", "executions", *(f"{p}_ns" for p in PHASES))


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """What the server that owns a model knows of it beyond Triton's figures."""

    source: str  # "notebook" (bound here) or "repository" (a served model repository's)
    spec: ModelSpec | None  # None: a repository model not loaded, or with a dtype tritonnb does not handle
    device: str | None = None
    version: str = ""
    loading: bool = False  # a new generation is loading; the old one still serves
    stream: StreamFigures | None = None  # a stream's figures, measured in the kernel


class OwnServer(Protocol):
    """What the monitor reads of the server this kernel owns (``tritonnb.serving.server.Server``)."""

    http_url: str
    metrics_url: str
    access_token: str
    uptime_s: float

    @property
    def state(self) -> ServerState: ...
    def logs(self, lines: int = 40) -> str: ...
    def recovery_summary(self) -> str: ...
    def model_facts(self) -> dict[str, ModelFacts]: ...


@dataclasses.dataclass(frozen=True)
class Target:
    """Where to poll: endpoints, an optional access token, the local server object if tritonnb owns it, and where a
    browser reaches its HTTP endpoint when known (e.g. ``/user/alice/proxy/8000`` through jupyter-server-proxy)."""

    http_url: str
    metrics_url: str
    access_token: str | None = None
    server: OwnServer | None = None  # when the server is ours
    browser_url: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        """Identity for sharing one poller between panels."""
        return (self.http_url, self.metrics_url)


@dataclasses.dataclass
class ModelMetrics:
    """One model's state and live figures; rates and averages cover the last polling window (None: no data)."""

    name: str
    version: str = "1"
    state: str = ModelState.UNAVAILABLE
    source: str = ""  # "notebook" (bound here), "repository" (a served model repository's), "" (another server's)
    device: str | None = None
    inputs: str = ""
    outputs: str = ""
    batching: str = ""
    success_total: int = 0
    failure_total: int = 0
    failures_by_reason: dict[str, int] = dataclasses.field(default_factory=dict)
    success_per_s: float | None = None
    failure_per_s: float | None = None
    failures_per_s_by_reason: dict[str, float] = dataclasses.field(default_factory=dict)
    latency_ms: dict[str, float] | None = None
    p50_ms: float | None = None  # median request duration over Triton's sliding window; None without summaries
    avg_batch_size: float | None = None
    pending: int | None = None
    history: list[tuple[float, float | None, float | None]] = dataclasses.field(default_factory=list)
    stream: StreamFigures | None = None  # a stream bound here: its streams and responses, measured in the kernel

    @property
    def total_latency_ms(self) -> float | None:
        """Queue + compute input + infer + output, per request."""
        return sum(self.latency_ms.values()) if self.latency_ms else None


@dataclasses.dataclass
class Snapshot:
    """Everything a panel shows, as plain data."""

    time: float
    http_url: str
    metrics_url: str
    state: ServerState
    browser_url: str | None = None  # the HTTP base URL as the browser reaches it, when known
    reason: str = ""
    recovery: str = ""  # what crash recovery did last (our own server only)
    live: bool = False
    ready: bool = False
    version: str = ""
    uptime_s: float | None = None
    log_tail: str = ""
    models: dict[str, ModelMetrics] = dataclasses.field(default_factory=dict)
    host: dict[str, Any] = dataclasses.field(default_factory=dict)
    gpus: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @classmethod
    def of(cls, target: Target, state: ServerState, now: float, reason: str = "") -> Snapshot:
        """A snapshot of ``target`` with only its endpoints, state and reason filled in."""
        return cls(
            time=now,
            http_url=target.http_url,
            metrics_url=target.metrics_url,
            state=state,
            browser_url=target.browser_url,
            reason=reason,
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain dicts and lists, e.g. for ``json.dumps``."""
        data = dataclasses.asdict(self)
        for name, model in self.models.items():
            data["models"][name]["total_latency_ms"] = model.total_latency_ms
        return data


class Monitor:
    """Samples one server and keeps what rates and history need between samples."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._previous: dict[str, tuple[float, dict[str, float]]] = {}
        self._history: dict[str, collections.deque] = {}
        self._version = ""
        self._last_models: dict[str, ModelMetrics] = {}

    def poll(self) -> Snapshot:
        """One sample: health, metrics, statistics, model states; never raises for a server that is away."""
        now = time.time()
        target = self.target
        server = target.server
        snapshot = Snapshot.of(target, ServerState.DOWN, now)
        server_state = server.state if server is not None else None  # read once: it may change meanwhile
        facts = server.model_facts() if server is not None else {}  # once per sample: each model reads its own
        if server is not None:
            snapshot.recovery = server.recovery_summary()
        if server is not None and server_state in AWAY:
            snapshot.state = server_state
            snapshot.reason = AWAY[server_state]
            snapshot.log_tail = server.logs(12) if server_state != ServerState.STOPPED else ""
            snapshot.models = {n: self._unavailable(n, facts) for n in facts}
            return snapshot
        try:
            snapshot.live = get_text(f"{target.http_url}/v2/health/live") is not None
            snapshot.ready = get_text(f"{target.http_url}/v2/health/ready") is not None
        except OSError as error:
            snapshot.reason = f"no answer from {target.http_url}: {_reason(error)}"
            if server is not None:
                snapshot.log_tail = server.logs(12)
            snapshot.models = {n: self._unavailable(n, facts) for n in self._last_models}
            self._previous.clear()
            return snapshot
        snapshot.state = ServerState.READY if snapshot.ready else ServerState.NOT_READY
        if not self._version:
            with contextlib.suppress(OSError, ValueError):  # some servers restrict their metadata
                self._version = get_json(f"{target.http_url}/v2", token_headers(self._token())).get("version", "")
        snapshot.version = self._version
        if server is not None:
            snapshot.uptime_s = server.uptime_s
        try:
            per_model, failures, snapshot.host, snapshot.gpus = parse_metrics(get_text(target.metrics_url) or "")
        except (OSError, ValueError) as error:
            per_model, failures = {}, {}
            snapshot.reason = f"metrics unavailable: {_reason(error)}"
        if not snapshot.gpus and server is not None:  # NVML sees this machine's GPUs: only for our own server
            snapshot.gpus = nvml_gpus()
        stats = self._stats()
        if stats is not None:
            for name, counters in stats.items():
                per_model.setdefault(name, {}).update(counters)
        names = [*per_model, *(n for n in facts if n not in per_model)]
        snapshot.models = {
            name: self._model(name, per_model.get(name, {}), failures.get(name, {}), now, facts.get(name))
            for name in names
        }
        self._last_models = snapshot.models
        return snapshot

    def _unavailable(self, name: str, facts: dict[str, ModelFacts]) -> ModelMetrics:
        """A model of a server that is away: its last totals, no rates."""
        model = self._static_model(name, ModelState.UNAVAILABLE, facts.get(name))
        last = self._last_models.get(name)
        if last is not None:
            model.version, model.failures_by_reason = last.version, last.failures_by_reason
            model.success_total, model.failure_total = last.success_total, last.failure_total
        return model

    def _token(self) -> str | None:
        """The access token to send: our own server's current one (new on every start), else the target's."""
        server = self.target.server
        if server is None:
            return self.target.access_token
        try:
            return server.access_token
        except AssertionError:  # between two processes of a relaunch
            return None

    def _stats(self) -> dict[str, dict[str, float]] | None:
        return fetch_stats(self.target.http_url, self._token())

    def _static_model(self, name: str, state: ModelState, facts: ModelFacts | None) -> ModelMetrics:
        model = ModelMetrics(name=name, state=state)
        if facts is not None:
            model.source, model.device, model.stream = facts.source, facts.device, facts.stream
            if facts.version:
                model.version = facts.version
            if facts.spec is not None:
                model.inputs = ", ".join(map(str, facts.spec.inputs))
                model.outputs = ", ".join(map(str, facts.spec.outputs))
                model.batching = facts.spec.batching_text()
            if facts.loading:
                model.state = ModelState.LOADING
        model.history = list(self._history.get(name, ()))
        return model

    def _model(
        self, name: str, counters: dict[str, float], failures: dict[str, float], now: float, facts: ModelFacts | None
    ) -> ModelMetrics:
        ready = answers_ok(f"{self.target.http_url}/v2/models/{name}/ready", token_headers(self._token()))
        model = self._static_model(name, ModelState.READY if ready else ModelState.UNAVAILABLE, facts)
        if model.state == ModelState.LOADING or not counters:
            return model
        if facts is None or not facts.version:  # the server's own word on which versions it serves comes first
            model.version = str(counters.get("version", "1"))
        # the statistics API counts failures at once; the metrics' per-reason counters can lag a moment
        counters = {**counters, "failure": max(counters.get("failure", 0), sum(failures.values()))}
        model.success_total = int(counters.get("success", 0))
        model.failure_total = int(counters["failure"])
        model.failures_by_reason = {r: int(v) for r, v in failures.items() if v}
        model.pending = int(counters["pending"]) if "pending" in counters else None
        model.p50_ms = counters.get("p50_ms")
        previous = self._previous.get(name)
        self._previous[name] = (now, {**counters, **{f"fail:{r}": v for r, v in failures.items()}})
        if previous is not None:
            then, before = previous
            delta = {k: counters.get(k, 0) - before.get(k, 0) for k in COUNTERS}
            if all(v >= 0 for v in delta.values()) and now > then:  # a decrease means the server restarted
                seconds = now - then
                model.success_per_s = delta["success"] / seconds
                model.failure_per_s = delta["failure"] / seconds
                model.failures_per_s_by_reason = {
                    r: max(v - before.get(f"fail:{r}", 0), 0) / seconds for r, v in failures.items() if v
                }
                if delta["success"] > 0:
                    model.latency_ms = {p: delta[f"{p}_ns"] / delta["success"] / 1e6 for p in PHASES}
                if delta["executions"] > 0:
                    model.avg_batch_size = delta["inferences"] / delta["executions"]
        history = self._history.setdefault(name, collections.deque())
        history.append((now, model.success_per_s, model.total_latency_ms))
        while history and history[0][0] < now - HISTORY_S:
            history.popleft()
        model.history = list(history)
        return model


def target_for(
    url: str | None = None, metrics_url: str | None = None, token: str | None = None, server: OwnServer | None = None
) -> Target:
    """The server at ``url`` (metrics at ``metrics_url``, else the same host on port + 2), or ``server``."""
    if url is None or (server is not None and base_url(url) == server.http_url):
        if server is None:
            raise NoServerError("no Triton server runs here; start one, or give the URL of one to watch")
        return Target(server.http_url, server.metrics_url, None, server, server.browser_route.http)
    url = base_url(url)
    if metrics_url is None:
        parsed = urllib.parse.urlsplit(url)
        try:
            port = parsed.port
        except ValueError as error:  # a port out of range, or not a number
            raise SpecError(f"bad URL {url!r}: {error}") from None
        if port is None:
            raise SpecError(
                f"cannot derive the metrics URL from {url!r}: give the URL with its port (metrics are on port + 2), "
                "or, for one server, its metrics URL (--metrics-url)"
            )
        host = f"[{parsed.hostname}]" if ":" in (parsed.hostname or "") else parsed.hostname
        metrics_url = f"{parsed.scheme}://{host}:{port + 2}/metrics"
    return Target(url, metrics_url, token)


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.URLError) and error.reason:
        return str(error.reason)
    return str(error) or type(error).__name__
