"""Polls a Triton server's health, ``/metrics`` and statistics API; turns counters into rates and history.

``Monitor.poll()`` is one synchronous sample (used by ``tritonnb.metrics()`` and tests). ``Poller`` runs one
background thread per server, shared by every panel that watches it, at the shortest interval any of them asks for.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any, ClassVar

from prometheus_client.parser import text_string_to_metric_families

from tritonnb.errors import NoServerError, SpecError
from tritonnb.host_gpu import nvml_gpus
from tritonnb.http_get import answers_ok, get_json, get_text

HISTORY_S = 300.0
PHASES = ("queue", "compute_input", "compute_infer", "compute_output")
COUNTERS = ("success", "failure", "inferences", "executions", *(f"{p}_ns" for p in PHASES))


@dataclasses.dataclass(frozen=True)
class Target:
    """Where to poll: endpoints, an optional access token, and the local server object if tritonnb owns it."""

    http_url: str
    metrics_url: str
    access_token: str | None = None
    server: Any = None  # tritonnb.session.Server when the server is ours

    @property
    def key(self) -> tuple[str, str]:
        """Identity for sharing one poller between panels."""
        return (self.http_url, self.metrics_url)


@dataclasses.dataclass
class ModelMetrics:
    """One model's state and live figures; rates and averages cover the last polling window (None: no data)."""

    name: str
    version: str = "1"
    state: str = "UNKNOWN"
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
    avg_batch_size: float | None = None
    pending: int | None = None
    history: list[tuple[float, float | None, float | None]] = dataclasses.field(default_factory=list)

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
    state: str  # READY, NOT READY, DOWN or STOPPED
    reason: str = ""
    live: bool = False
    ready: bool = False
    version: str = ""
    uptime_s: float | None = None
    log_tail: str = ""
    models: dict[str, ModelMetrics] = dataclasses.field(default_factory=dict)
    host: dict[str, Any] = dataclasses.field(default_factory=dict)
    gpus: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain dicts and lists, e.g. for ``json.dumps``."""
        data = dataclasses.asdict(self)
        for name, model in self.models.items():
            data["models"][name]["total_latency_ms"] = model.total_latency_ms
        return data


def parse_metrics(text: str) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]], dict, list]:
    """Split Prometheus text into per-model counters, failures by reason, host figures and GPUs."""
    per_model: dict[str, dict[str, float]] = collections.defaultdict(dict)
    failures: dict[str, dict[str, float]] = collections.defaultdict(dict)
    host: dict[str, float] = {}
    gpus: dict[str, dict[str, float]] = collections.defaultdict(dict)
    model_families = {
        "nv_inference_request_success": "success",
        "nv_inference_count": "inferences",
        "nv_inference_exec_count": "executions",
        "nv_inference_pending_request_count": "pending",
        **{f"nv_inference_{p}_duration_us": f"{p}_ns" for p in PHASES},
    }
    host_families = {
        "nv_cpu_utilization": "cpu_utilization",
        "nv_cpu_memory_total_bytes": "memory_total_bytes",
        "nv_cpu_memory_used_bytes": "memory_used_bytes",
    }
    gpu_families = {
        "nv_gpu_utilization": "utilization",
        "nv_gpu_memory_total_bytes": "memory_total_bytes",
        "nv_gpu_memory_used_bytes": "memory_used_bytes",
        "nv_gpu_power_usage": "power_watts",
        "nv_gpu_power_limit": "power_limit_watts",
    }
    for family in text_string_to_metric_families(text):
        name = family.name  # the parser names counter samples <family>_total; match on the family
        for sample in family.samples:
            if sample.name not in (name, f"{name}_total"):
                continue
            labels, value = sample.labels, sample.value
            if name == "nv_inference_request_failure" and "model" in labels:
                failures[labels["model"]][labels.get("reason", "OTHER")] = value
            elif name in model_families and "model" in labels:
                key = model_families[name]
                per_model[labels["model"]][key] = value * 1000 if key.endswith("_ns") else value
                per_model[labels["model"]]["version"] = labels.get("version", "1")
            elif name in host_families:
                host[host_families[name]] = value
            elif name in gpu_families:
                gpus[labels.get("gpu_uuid", "gpu")][gpu_families[name]] = value
    gpu_list = [{"uuid": uuid, **values} for uuid, values in gpus.items()]
    return dict(per_model), dict(failures), host, gpu_list


def counters_from_stats(stats: dict) -> dict[str, dict[str, float]]:
    """Per-model counters from Triton's statistics API response."""
    result = {}
    for model in stats.get("model_stats", []):
        inference = model.get("inference_stats", {})
        counters = {
            "version": model.get("version", "1"),
            "success": inference.get("success", {}).get("count", 0),
            "failure": inference.get("fail", {}).get("count", 0),
            "inferences": model.get("inference_count", 0),
            "executions": model.get("execution_count", 0),
            **{f"{p}_ns": inference.get(p, {}).get("ns", 0) for p in PHASES},
        }
        result[model["name"]] = counters
    return result


def fetch_stats(http_url: str, token: str | None, model: str | None = None) -> dict[str, dict[str, float]] | None:
    """Per-model counters from the statistics API (all models, or one); None when it is not reachable or refused."""
    headers = {"triton-access-token": token} if token else {}
    path = f"/v2/models/{model}/stats" if model else "/v2/models/stats"
    try:
        return counters_from_stats(get_json(f"{http_url}{path}", headers))
    except (OSError, ValueError):
        return None


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
        snapshot = Snapshot(time=now, http_url=target.http_url, metrics_url=target.metrics_url, state="DOWN")
        if server is not None and server.state in ("STOPPED", "DOWN"):
            snapshot.state = server.state
            snapshot.reason = "stopped with %triton stop" if server.state == "STOPPED" else "tritonserver exited"
            snapshot.log_tail = server.logs(12) if server.state == "DOWN" else ""
            snapshot.models = {n: self._unavailable(n) for n in list(server.models)}
            return snapshot
        try:
            snapshot.live = get_text(f"{target.http_url}/v2/health/live") is not None
            snapshot.ready = get_text(f"{target.http_url}/v2/health/ready") is not None
        except OSError as error:
            snapshot.reason = f"no answer from {target.http_url}: {_reason(error)}"
            if server is not None:
                snapshot.log_tail = server.logs(12)
            snapshot.models = {n: self._unavailable(n) for n in self._last_models}
            self._previous.clear()
            return snapshot
        snapshot.state = "READY" if snapshot.ready else "NOT READY"
        if not self._version:
            with contextlib.suppress(OSError, ValueError):  # some servers restrict their metadata
                self._version = get_json(f"{target.http_url}/v2").get("version", "")
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
        names = list(per_model)
        if server is not None:
            names += [n for n in list(server.models) if n not in per_model]
        snapshot.models = {
            name: self._model(name, per_model.get(name, {}), failures.get(name, {}), now) for name in names
        }
        self._last_models = snapshot.models
        return snapshot

    def _unavailable(self, name: str) -> ModelMetrics:
        """A model of a server that is away: its last totals, no rates."""
        model = self._static_model(name, "UNAVAILABLE")
        last = self._last_models.get(name)
        if last is not None:
            model.version, model.failures_by_reason = last.version, last.failures_by_reason
            model.success_total, model.failure_total = last.success_total, last.failure_total
        return model

    def _stats(self) -> dict[str, dict[str, float]] | None:
        server = self.target.server
        token = server.access_token if server is not None else self.target.access_token  # new on every restart
        return fetch_stats(self.target.http_url, token)

    def _static_model(self, name: str, state: str) -> ModelMetrics:
        model = ModelMetrics(name=name, state=state)
        server = self.target.server
        slot = server.models.get(name) if server is not None else None
        if slot is not None:
            model.device = slot.device
            model.inputs = ", ".join(map(str, slot.spec.inputs))
            model.outputs = ", ".join(map(str, slot.spec.outputs))
            spec = slot.spec
            model.batching = f"max {spec.max_batch_size}, delay {spec.batch_delay_us} µs" if spec.batched else "off"
            model.batching += f", {spec.instances} inst."
            if slot.loading:
                model.state = "LOADING"
        model.history = list(self._history.get(name, ()))
        return model

    def _model(self, name: str, counters: dict[str, float], failures: dict[str, float], now: float) -> ModelMetrics:
        ready = answers_ok(f"{self.target.http_url}/v2/models/{name}/ready")
        model = self._static_model(name, "READY" if ready else "UNAVAILABLE")
        if model.state == "LOADING" or not counters:
            return model
        model.version = str(counters.get("version", "1"))
        # the statistics API counts failures at once; the metrics' per-reason counters can lag a moment
        counters = {**counters, "failure": max(counters.get("failure", 0), sum(failures.values()))}
        model.success_total = int(counters.get("success", 0))
        model.failure_total = int(counters["failure"])
        model.failures_by_reason = {r: int(v) for r, v in failures.items() if v}
        model.pending = int(counters["pending"]) if "pending" in counters else None
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


Subscriber = Callable[[Snapshot], None]


class Poller:
    """One background thread per server, shared by every subscriber; stops when none is left or the server stops."""

    _registry: ClassVar[dict[tuple[str, str], Poller]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, target: Target) -> None:
        self.monitor = Monitor(target)
        self._subscribers: dict[int, tuple[Subscriber, float]] = {}
        self._handles = itertools.count(1)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.cpu_seconds = 0.0
        self.polls = 0

    @classmethod
    def for_target(cls, target: Target) -> Poller:
        """The shared poller of ``target`` (made on first use)."""
        with cls._registry_lock:
            poller = cls._registry.get(target.key)
            if poller is None or poller.monitor.target != target:
                poller = cls._registry[target.key] = cls(target)
            return poller

    def subscribe(self, callback: Subscriber, interval_s: float = 1.0) -> int:
        """Call ``callback(snapshot)`` from the polling thread at least every ``interval_s``; returns a handle."""
        with self._lock:
            handle = next(self._handles)
            self._subscribers[handle] = (callback, interval_s)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tritonnb-poller", daemon=True)
                self._thread.start()
        self._wake.set()
        return handle

    def set_interval(self, handle: int, interval_s: float) -> None:
        """Change one subscriber's refresh interval."""
        with self._lock:
            if handle in self._subscribers:
                self._subscribers[handle] = (self._subscribers[handle][0], interval_s)
        self._wake.set()

    def unsubscribe(self, handle: int) -> None:
        """Stop calling a subscriber; the thread ends when none is left."""
        with self._lock:
            self._subscribers.pop(handle, None)
        self._wake.set()

    def refresh(self) -> None:
        """Poll now instead of waiting for the interval."""
        self._wake.set()

    @property
    def running(self) -> bool:
        """Whether the polling thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while True:
            self._wake.clear()  # a refresh or subscription from now on is seen by the wait below
            with self._lock:
                subscribers = list(self._subscribers.values())
                if not subscribers:
                    self._thread = None  # decided under the lock: a new subscriber starts a new thread
                    return
            started = time.thread_time()
            try:
                snapshot = self.monitor.poll()
            except Exception as error:  # whatever happens, the panels get told and polling goes on
                target = self.monitor.target
                snapshot = Snapshot(
                    time=time.time(),
                    http_url=target.http_url,
                    metrics_url=target.metrics_url,
                    state="DOWN",
                    reason=f"polling failed: {type(error).__name__}: {error}",
                )
            for callback, _ in subscribers:
                try:
                    callback(snapshot)
                except Exception:  # a broken panel must not stop the others
                    continue
            self.cpu_seconds += time.thread_time() - started
            self.polls += 1
            if snapshot.state == "STOPPED":
                with self._lock:
                    self._subscribers.clear()
                    self._thread = None
                return
            with self._lock:
                intervals = [interval for _, interval in self._subscribers.values()] or [0.0]
            self._wake.wait(min(intervals))


def target_for(
    url: str | None = None, metrics_url: str | None = None, token: str | None = None, server: Any = None
) -> Target:
    """The server at ``url`` (metrics at ``metrics_url``, else the same host on port + 2), or ``server``."""
    if url is None or (server is not None and url.rstrip("/") == server.http_url):
        if server is None:
            raise NoServerError("no Triton server runs here; start one, or give the URL of one to watch")
        return Target(server.http_url, server.metrics_url, None, server)
    url = url.rstrip("/")
    if "://" not in url:
        url = f"http://{url}"
    if metrics_url is None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.port is None:
            raise SpecError(f"cannot derive the metrics URL from {url!r}: give it with --metrics-url")
        metrics_url = f"{parsed.scheme}://{parsed.hostname}:{parsed.port + 2}/metrics"
    return Target(url, metrics_url, token)


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.URLError) and error.reason:
        return str(error.reason)
    return str(error) or type(error).__name__
