"""Snapshot -> HTML for the panels: pure functions, so what a panel shows can be tested without a browser."""

from __future__ import annotations

import collections
import html
from collections.abc import Sequence

from tritonnb.loadtest.tables import scrolling
from tritonnb.observe.metrics_text import PHASES
from tritonnb.observe.monitor import ModelMetrics, Snapshot
from tritonnb.states import ModelState, ServerState

__all__ = [
    "STATE_COLOURS",
    "fleet_html",
    "fleet_row_html",
    "health_html",
    "host_html",
    "models_html",
    "streams_html",
    "strip_html",
]

STATE_COLOURS = {
    ServerState.READY: "#2e7d32",
    ServerState.NOT_READY: "#ef6c00",
    ModelState.LOADING: "#ef6c00",
    ModelState.UNLOADING: "#ef6c00",
    ServerState.RECOVERING: "#ef6c00",
    ServerState.DOWN: "#c62828",
    ModelState.UNAVAILABLE: "#c62828",
    ServerState.STOPPED: "#757575",
}


def _badge(state: str, css: str) -> str:
    colour = STATE_COLOURS.get(state, "#757575")
    return (
        f'<span class="{css}" style="background:{colour};color:white;border-radius:4px;padding:1px 6px;'
        f'font-weight:bold">{html.escape(state)}</span>'
    )


def _num(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def health_html(snapshot: Snapshot) -> str:
    """State, live/ready, version, uptime, endpoints; the reason and log tail when DOWN."""
    parts = [
        f"<b>Triton</b> {_badge(snapshot.state, 'tnb-server-state')}",
        f"live <code>{snapshot.live}</code> ready <code>{snapshot.ready}</code>",
        f"version <code>{html.escape(snapshot.version or '–')}</code>",
        f"uptime <code>{_duration(snapshot.uptime_s)}</code>",
        f"HTTP (kernel) <code>{html.escape(snapshot.http_url)}</code>",
    ]
    if snapshot.browser_url:
        parts.append(f"HTTP (browser) {_browser_link(snapshot.browser_url)}")
    parts.append(f"metrics <code>{html.escape(snapshot.metrics_url)}</code>")
    out = '<div class="tnb-health">' + " &nbsp;·&nbsp; ".join(parts) + "</div>"
    if snapshot.reason:
        out += f'<div class="tnb-reason" style="color:#c62828">{html.escape(snapshot.reason)}</div>'
    if snapshot.recovery:
        out += f'<div class="tnb-recovery" style="color:#ef6c00">{html.escape(snapshot.recovery)}</div>'
    if snapshot.log_tail:
        out += f'<pre class="tnb-log-tail" style="max-height:12em;overflow:auto">{html.escape(snapshot.log_tail)}</pre>'
    return out


def _browser_link(browser_url: str) -> str:
    """The server's HTTP base URL as the browser reaches it, opening its readiness check in a new tab."""
    url = html.escape(browser_url)
    return (
        f'<a class="tnb-browser-url" href="{url}/v2/health/ready" target="_blank" title="open in a new tab">{url}</a>'
    )


def _p50(model: ModelMetrics) -> str:
    """The median request time; without Triton's summaries, the window's average, marked as such."""
    if model.p50_ms is not None:
        return (
            f'<span title="median request time over the last minute (a sliding window)">{_num(model.p50_ms, 2)}</span>'
        )
    if model.total_latency_ms is not None:
        return (
            f'<span title="no quantiles from this server (tritonserver --metrics-config summary_latencies=true): '
            f'average of the last window">avg {_num(model.total_latency_ms, 2)}</span>'
        )
    return "–"


def _latency(model: ModelMetrics) -> str:
    if not model.latency_ms:
        return "–"
    split = " / ".join(_num(model.latency_ms[p], 2) for p in PHASES)
    return f"{_num(model.total_latency_ms, 2)} <small>({split})</small>"


def _failures(model: ModelMetrics) -> str:
    reasons = ", ".join(f"{html.escape(r)} {n}" for r, n in sorted(model.failures_by_reason.items()))
    return f'<span class="tnb-failure-total">{model.failure_total}</span>' + (
        f" <small>({reasons})</small>" if reasons else ""
    )


def _source(model: ModelMetrics) -> str:
    """A tag after the name of a model that comes from a model repository, not from the notebook."""
    if model.source != "repository":
        return ""
    return ' <small class="tnb-model-source" title="served from a Triton model repository">repository</small>'


def models_html(snapshot: Snapshot) -> str:
    """One row per model: identity and config, then live figures for the last window."""
    if not snapshot.models:
        return '<div class="tnb-models"><i>no models</i></div>'
    head = (
        "<tr><th>model</th><th>ver</th><th>state</th><th>device</th><th>inputs → outputs</th><th>batching</th>"
        "<th>req/s</th><th>requests</th><th>fail/s</th><th>failures</th>"
        "<th>p50 ms</th><th>latency ms <small>(queue / in / infer / out)</small></th><th>avg batch</th>"
        "<th>pending</th></tr>"
    )
    rows = []
    for name, m in snapshot.models.items():
        rows.append(
            f'<tr data-model="{html.escape(name)}"><td><b>{html.escape(name)}</b>{_source(m)}</td>'
            f"<td>{html.escape(m.version)}</td>"
            f"<td>{_badge(m.state, 'tnb-model-state')}</td><td>{html.escape(m.device or '–')}</td>"
            f"<td><small>{html.escape(m.inputs or '–')} → {html.escape(m.outputs or '–')}</small></td>"
            f"<td><small>{html.escape(m.batching or '–')}</small></td>"
            f'<td class="tnb-success-rate">{_num(m.success_per_s)}</td>'
            f'<td class="tnb-success-total">{m.success_total}</td>'
            f"<td>{_num(m.failure_per_s)}</td><td>{_failures(m)}</td>"
            f'<td class="tnb-p50">{_p50(m)}</td><td>{_latency(m)}</td>'
            f"<td>{_num(m.avg_batch_size, 2)}</td><td>{'–' if m.pending is None else m.pending}</td></tr>"
        )
    table = f'<table class="tnb-models" style="border-collapse:collapse;font-size:90%">{head}{"".join(rows)}</table>'
    return scrolling(table) + streams_html(snapshot)


def _pair(figures: dict[str, float] | None) -> str:
    return "–" if figures is None else f"{_num(figures['p50'], 1)} / {_num(figures['p95'], 1)}"


def streams_html(snapshot: Snapshot) -> str:
    """The streaming models' own figures (none: nothing): streams open now, responses/s, time to first response and
    between responses, over the last seconds, measured in the kernel."""
    streams = {name: m.stream for name, m in snapshot.models.items() if m.stream is not None}
    if not streams:
        return ""
    head = (
        "<tr><th>stream</th><th>active</th><th>responses/s</th><th>first response ms <small>(p50 / p95)</small></th>"
        "<th>between responses ms <small>(p50 / p95)</small></th><th>streams</th><th>responses</th>"
        "<th>cancelled</th><th>failed</th></tr>"
    )
    rows = "".join(
        f'<tr data-model="{html.escape(name)}"><td><b>{html.escape(name)}</b></td>'
        f'<td class="tnb-stream-active">{f.active}</td><td class="tnb-stream-rate">{_num(f.responses_per_s)}</td>'
        f'<td class="tnb-stream-first">{_pair(f.first_response_ms)}</td><td>{_pair(f.between_responses_ms)}</td>'
        f"<td>{f.streams}</td><td>{f.responses}</td><td>{f.cancelled}</td><td>{f.failed}</td></tr>"
        for name, f in streams.items()
    )
    return scrolling(
        f'<table class="tnb-streams" style="border-collapse:collapse;font-size:90%;margin-top:4px">{head}{rows}</table>'
    )


def _usage(figures: dict, utilization_key: str) -> list[str]:
    """Utilisation and used/total memory, from the keys a host or GPU entry carries."""
    parts = []
    if utilization_key in figures:
        parts.append(f"<code>{figures[utilization_key] * 100:.0f}%</code>")
    if "memory_total_bytes" in figures:
        used, total = figures.get("memory_used_bytes", 0) / 2**30, figures["memory_total_bytes"] / 2**30
        parts.append(f"<code>{used:.1f} / {total:.1f} GiB</code>")
    return parts


def host_html(snapshot: Snapshot) -> str:
    """CPU and memory; each GPU's utilisation, memory and power, or a note that there is none."""
    parts = [" ".join(["CPU", *_usage(snapshot.host, "cpu_utilization")])]
    for index, gpu in enumerate(snapshot.gpus):
        figures = [f"GPU {index}", *_usage(gpu, "utilization")]
        if "power_watts" in gpu:
            figures.append(f"<code>{gpu['power_watts']:.0f} W</code>")
        parts.append(" ".join(figures))
    if not snapshot.gpus:
        parts.append("no GPU")
    return '<div class="tnb-host"><b>Host</b> ' + " &nbsp;·&nbsp; ".join(parts) + "</div>"


def strip_html(name: str, snapshot: Snapshot | None) -> str:
    """The compact live line under a model's card: state, req/s, latency."""
    model = snapshot.models.get(name) if snapshot else None
    if snapshot is None:
        return f'<span class="tnb-strip" data-model="{html.escape(name)}">waiting for the first sample…</span>'
    away = snapshot.state != ServerState.READY
    state = model.state if model else (snapshot.state if away else ModelState.UNAVAILABLE)
    recovery = (
        f' &nbsp;<small class="tnb-recovery">{html.escape(snapshot.recovery)}</small>' if snapshot.recovery else ""
    )
    if model is not None and model.stream is not None:
        f = model.stream
        first = _num(f.first_response_ms["p50"], 1) if f.first_response_ms else "–"
        figures = (
            f"{f.active} active streams &nbsp;·&nbsp; {_num(f.responses_per_s)} responses/s &nbsp;·&nbsp; "
            f"first response {first} ms &nbsp;·&nbsp; {f.streams} streams"
        )
    else:
        rate = _num(model.success_per_s) if model else "–"
        latency = _num(model.total_latency_ms, 2) if model else "–"
        total = model.success_total if model else 0
        figures = f"{rate} req/s &nbsp;·&nbsp; {latency} ms &nbsp;·&nbsp; {total} requests"
    return (
        f'<span class="tnb-strip" data-model="{html.escape(name)}">{_badge(state, "tnb-model-state")} '
        f"&nbsp;{figures}{recovery}</span>"
    )


def _total(values: list[float | None]) -> float | None:
    """The sum of the figures that are known; None when none is."""
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _busiest(models: Sequence[ModelMetrics]) -> ModelMetrics | None:
    """The model with the most requests per second (then in total) among those with a latency figure."""
    timed = [m for m in models if m.p50_ms is not None or m.total_latency_ms is not None]
    return max(timed, key=lambda m: (m.success_per_s or 0.0, m.success_total), default=None)


def fleet_row_html(url: str, snapshot: Snapshot | None) -> str:
    """One server of a fleet: URL, state (and why when not READY), models, req/s, requests, p50, failures.

    The p50 is the busiest model's (named when the server has several): one figure a teacher can compare across
    rows, and the one most of that server's requests saw; a mix of several models' medians would be no median."""
    row = f'<tr data-server="{html.escape(url)}"><td><code>{html.escape(url)}</code>'
    if snapshot is None:
        return f'{row}</td><td colspan="6"><i>waiting for the first sample…</i></td></tr>'
    if snapshot.browser_url:
        row += f"<br><small>browser {_browser_link(snapshot.browser_url)}</small>"
    row += f"</td><td>{_badge(snapshot.state, 'tnb-server-state')}"
    if snapshot.reason:
        row += f'<br><small class="tnb-fleet-reason" style="color:#c62828">{html.escape(snapshot.reason)}</small>'
    models = list(snapshot.models.values())
    names = ", ".join(
        html.escape(m.name) + ("" if m.state == ModelState.READY else f" <small>({m.state})</small>") for m in models
    )
    busiest = _busiest(models)
    p50 = "–" if busiest is None else _p50(busiest)
    if busiest is not None and len(models) > 1:
        p50 += f" <small>({html.escape(busiest.name)})</small>"
    return (
        f'{row}</td><td><span class="tnb-fleet-models">{len(models)}</span>{": " if models else ""}{names}</td>'
        f'<td class="tnb-fleet-rate">{_num(_total([m.success_per_s for m in models]))}</td>'
        f'<td class="tnb-fleet-requests">{sum(m.success_total for m in models)}</td>'
        f'<td class="tnb-fleet-p50">{p50}</td>'
        f'<td class="tnb-fleet-failures">{sum(m.failure_total for m in models)} '
        f"<small>({_num(_total([m.failure_per_s for m in models]))}/s)</small></td></tr>"
    )


def fleet_html(rows: Sequence[tuple[str, Snapshot | None]]) -> str:
    """A table of servers, one row per (URL, latest snapshot or None), under a count of the servers by state (the most
    common state first)."""
    states = collections.Counter(snapshot.state if snapshot else "WAITING" for _, snapshot in rows)
    counts = ", ".join(f"{n} {state}" for state, n in states.most_common())
    head = (
        "<tr><th>server</th><th>state</th><th>models</th><th>req/s</th><th>requests</th>"
        "<th>p50 ms</th><th>failures <small>(/s)</small></th></tr>"
    )
    body = "".join(fleet_row_html(url, snapshot) for url, snapshot in rows)
    return f'<div class="tnb-fleet-summary"><b>Fleet</b> {len(rows)} servers: {counts}</div>' + scrolling(
        f'<table class="tnb-fleet" style="border-collapse:collapse;font-size:90%">{head}{body}</table>'
    )
