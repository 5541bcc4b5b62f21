"""Charts of load tests, tuning sweeps and the live panel: real matplotlib figures, checked by what they draw."""

from __future__ import annotations

import io
import itertools
import pickle
import random
import threading

import pytest
from PIL import Image

from tritonnb.errors import SpecError
from tritonnb.loadtest.charts import COLOURS, perf_chart, tune_chart
from tritonnb.loadtest.perf import ROW_KEYS, STREAM_ROW_KEYS, PerfResult, plot
from tritonnb.loadtest.results import BatchConfig, PerfRow, StreamRow, TuneRow
from tritonnb.loadtest.tune import TUNE_KEYS, TuneResult, pareto_front
from tritonnb.observe.metrics_text import PHASES
from tritonnb.observe.monitor import ModelMetrics, Snapshot
from tritonnb.ui.live_chart import LiveChart, nice_ceiling
from tritonnb.ui.progress import StepProgress


def _row(concurrency: int, throughput: float, p50: float | None, p95: float | None, errors: int = 0) -> dict:
    return {
        "concurrency": concurrency,
        "throughput": throughput,
        "p50_ms": p50,
        "p90_ms": p95,
        "p95_ms": p95,
        "p99_ms": p95,
        "errors": errors,
        "requests": 100 + errors,
    }


def _run(model: str, rows: list[dict], budget: float | None = None) -> PerfResult:
    return PerfResult(model, 1.0, rows, "perf_analyzer ...", [], "builtin", budget)


def _sweep(count: int = 12, seed: int = 0) -> list[dict]:
    """A tuning sweep whose points crowd together (many configurations within a few % of each other)."""
    rng = random.Random(seed)
    rows = []
    for batch, delay, instances in itertools.islice(itertools.product((0, 8, 32), (0, 500, 1000), (1, 2)), count):
        row = _row(8, 1000 + rng.uniform(-20, 20), 4.0, 5.0 + rng.uniform(-0.2, 0.2))
        row.update(max_batch_size=batch, batch_delay_us=delay, instances=instances, fits=row["p95_ms"] <= 5.0)
        rows.append(row)
    return rows


def _tick_labels(axis) -> list[str]:
    return [label.get_text() for label in axis.get_ticklabels() if label.get_text()]


def _visible_boxes(chart, texts):
    renderer = chart.figure.canvas.get_renderer()
    return [t.get_window_extent(renderer) for t in texts if t.get_visible()]


def test_perf_chart_has_numbered_axes_a_budget_line_and_points_in_concurrency_order():
    rows = [_row(4, 900, 3.0, 4.0), _row(1, 300, 1.0, 1.5), _row(2, 600, 2.0, 2.5, errors=3)]  # not in order
    chart = perf_chart([_run("double", rows)], max_latency_ms=3.5)
    axes = chart.figure.axes[0]
    chart.figure.canvas.draw()
    assert _tick_labels(axes.xaxis) and _tick_labels(axes.yaxis)
    assert all(label.replace(",", "").replace(".", "").isdigit() for label in _tick_labels(axes.yaxis))
    assert axes.get_xlabel() == "throughput (requests/s)" and axes.get_ylabel() == "latency (ms)"
    p95_line = next(line for line in axes.get_lines() if line.get_label() == "double p95")
    assert list(p95_line.get_xdata()) == [300, 600, 900]  # joined by concurrency, not in the rows' order
    budget = [line for line in axes.get_lines() if list(line.get_ydata()) == [3.5, 3.5]]
    assert len(budget) == 1
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert legend == ["double p95", "double p50", "had errors", "budget: p95 ≤ 3.5 ms"]
    assert sorted(t.get_text() for t in axes.texts if t.get_visible()) == ["c=1", "c=2", "c=4"]  # room for each
    cross = next(line for line in axes.get_lines() if line.get_marker() == "x")
    assert (list(cross.get_xdata()), list(cross.get_ydata())) == ([600], [2.5])  # on the level that had errors
    png = chart.png()
    assert Image.open(io.BytesIO(png)).size == (1520, 840)  # twice the on-screen size
    assert "c=1 300.0 req/s p95 1.50 ms" in chart.description
    bundle, metadata = chart._repr_mimebundle_()
    assert bundle["image/png"].startswith(b"\x89PNG") and metadata["image/png"] == {"width": 760, "height": 420}


def test_a_budget_far_above_the_points_is_named_but_does_not_squash_them():
    chart = perf_chart([_run("double", [_row(1, 300, 1.0, 1.5), _row(2, 500, 2.0, 4.0)])], max_latency_ms=1000)
    axes = chart.figure.axes[0]
    assert axes.get_legend().get_texts()[-1].get_text() == "budget: p95 ≤ 1000 ms, far above"
    assert axes.get_ylim()[1] < 5 and not [line for line in axes.get_lines() if list(line.get_ydata()) == [1000, 1000]]


def test_a_run_with_errors_shows_them_and_a_level_where_everything_failed_is_named():
    rows = [_row(1, 300, 1.0, 1.5), _row(2, 0.0, None, None, errors=40)]
    chart = perf_chart([_run("flaky", rows)])
    assert "no successful request: flaky c=2: 40 errors" in chart.figure.get_supxlabel()
    html = _run("flaky", rows)._repr_html_()
    assert "40 requests failed" in html and 'class="tnb-chart"' in html and "<svg" not in html


def test_several_runs_share_one_chart_with_a_legend():
    before = _run("double", [_row(1, 300, 1.0, 1.5), _row(2, 500, 2.0, 2.6)], budget=5)
    after = _run("double", [_row(1, 800, 0.5, 0.7), _row(2, 1500, 0.6, 0.9)], budget=5)
    chart = plot(before, after, labels=["before", "after"])
    legend = [text.get_text() for text in chart.figure.axes[0].get_legend().get_texts()]
    assert legend[:4] == ["before p95", "before p50", "after p95", "after p50"]
    assert legend[-1] == "budget: p95 ≤ 5 ms"  # the runs' shared budget
    unnamed = plot(before, after)
    assert unnamed.figure.axes[0].get_legend().get_texts()[0].get_text() == "double (run 1) p95"
    with pytest.raises(SpecError, match="one label per run"):
        plot(before, labels=["a", "b"])
    with pytest.raises(SpecError, match="one label per run"):
        plot(before, after, labels="ab")
    with pytest.raises(SpecError, match="not TuneResult"):
        plot(TuneResult("m", _sweep(2), None, None, False))
    with pytest.raises(SpecError, match="at least one"):
        plot()


def test_pareto_front_keeps_only_configurations_nothing_beats():
    levels = [
        PerfRow.from_dict(_row(8, throughput, p95, p95, errors))
        for throughput, p95, errors in [
            (100, 1.0, 0),
            (200, 2.0, 0),
            (150, 3.0, 0),  # beaten by the second
            (300, 1.5, 4),  # errors: never on the front
            (250, None, 9),
            (260, 2.5, 0),
        ]
    ]
    assert pareto_front(levels) == [0, 1, 5]


@pytest.mark.parametrize("seed", range(8))
def test_no_two_point_labels_overlap_with_several_runs(seed):
    """Runs whose points crowd together (before and after a change, several versions): every label shown, in the
    PNG a notebook stores, is clear of every other; the ones that would overlap are left out."""
    rng = random.Random(seed)
    runs = []
    for index in range(rng.randint(2, 5)):
        throughput, latency, rows = rng.uniform(300, 400), rng.uniform(1.0, 1.2), []
        for concurrency in (1, 2, 4, 8, 16):
            rows.append(_row(concurrency, throughput, latency * 0.8, latency))
            throughput, latency = throughput * rng.uniform(1.0, 1.6), latency * rng.uniform(1.0, 1.8)
        runs.append(_run(f"run{index}", rows))
    chart = plot(*runs)
    chart.png()  # laid out and drawn as the notebook's image is
    boxes = _visible_boxes(chart, chart.figure.axes[0].texts)
    assert len(boxes) >= 5
    assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))


def test_tune_chart_marks_the_budget_the_front_and_the_choice_and_no_labels_overlap():
    rows = _sweep(12)
    fitting = [i for i, row in enumerate(rows) if row["fits"]]
    best = max(fitting, key=lambda i: rows[i]["throughput"])
    result = TuneResult("double", rows, best, 5.0, False)
    chart = tune_chart(result)
    axes = chart.figure.axes[0]
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert legend[0] == "meets the budget" and "misses it" in legend and "Pareto front" in legend
    assert any(text.startswith(f"chosen #{best + 1} ") for text in legend)
    assert "budget: p95 ≤ 5 ms" in legend
    assert result.front == pareto_front([run.level for run in result.runs])
    assert all(f"#{i + 1} " in " ".join(legend) for i in result.front)
    boxes = _visible_boxes(chart, axes.texts)
    assert 1 <= len(boxes) < len(rows)  # crowded: some numbers had to go, and the table still names every row
    assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))
    html = result._repr_html_()
    assert "<th>#</th>" in html and "<th>front</th>" in html and html.count("<td>✓</td>") == len(result.front)
    assert "overflow-x:auto" in html and 'class="tnb-chart"' in html


def test_results_convert_to_dataframes():
    perf = _run("double", [_row(1, 300, 1.0, 1.5)])
    frame = perf.to_dataframe()
    assert list(frame.columns) == list(ROW_KEYS) and frame.loc[0, "throughput"] == 300
    tuned = TuneResult("double", _sweep(3), 0, None, False)
    assert list(tuned.to_dataframe().columns) == list(TUNE_KEYS) and len(tuned.to_dataframe()) == 3
    assert isinstance(perf.rows, list) and isinstance(perf.rows[0], dict)  # the data itself stays plain


def test_rows_stay_plain_dicts_and_read_as_typed_rows():
    assert ROW_KEYS[-len(PHASES) :] == tuple(f"{phase}_ms" for phase in PHASES)
    level = PerfRow(2, 600.0, 2.0, 2.2, 2.5, 2.9, 3, 103, queue_ms=0.1, compute_infer_ms=1.5)
    perf = _run("double", [level.as_dict()])
    assert perf.rows == [level.as_dict()] and list(perf.rows[0]) == list(ROW_KEYS)
    assert perf.levels == [level] and perf.levels[0].compute_infer_ms == 1.5
    assert pickle.loads(pickle.dumps(perf)) == perf

    stream = StreamRow(1, 50.0, 10.0, 3.0, 4.0, 1.0, 2.0, 0, 10)
    streamed = PerfResult("gen", 1.0, [stream.as_dict()], "", streaming=True)
    assert streamed.levels == [stream] and list(streamed.rows[0]) == list(STREAM_ROW_KEYS)

    run = TuneRow(BatchConfig(8, 500, 2), level, fits=False)
    record = {"max_batch_size": 8, "batch_delay_us": 500, "instances": 2, **level.as_dict(), "fits": False}
    assert list(run.as_dict().items()) == list(record.items())
    assert TuneRow.from_dict(run.as_dict()) == run
    assert TuneRow.from_dict(TuneRow(BatchConfig(0, 0, 1), stream, True).as_dict()).level == stream
    tuned = TuneResult("double", [run.as_dict()], 0, None, False)
    assert tuned.runs == [run] and tuned.recommendation == {"max_batch_size": 8, "batch_delay_us": 500, "instances": 2}
    assert run.values(["instances", "p95_ms", "streams_per_s", "fits"]) == [2, 2.5, None, False]


def test_step_progress_summarises_the_plain_rows_it_is_given(capsys):
    level = PerfRow.from_dict(_row(4, 1234.56, 1.0, 2.25))
    progress = StepProgress(3, "tuning", live=False)
    progress.step(1, 3, TuneRow(BatchConfig(8, 0, 2), level, True).as_dict())
    progress.step(2, 3, PerfRow.from_dict(_row(2, 0.0, None, None, errors=5)).as_dict())
    assert capsys.readouterr().out.splitlines() == [
        "tuning 1 of 3: max_batch_size=8, batch_delay_us=0, instances=2, concurrency=4, throughput=1234.6, p95_ms=2.2",
        "tuning 2 of 3: concurrency=2, throughput=0.0",
    ]


def _snapshot(now: float, rate: float = 10.0, models=("double", "triple"), seconds: int = 100) -> Snapshot:
    """A READY server whose models have ``seconds`` of history, one sample a second, up to ``now``."""
    histories = {
        name: [(now - seconds + s, rate + k, 0.5 + k * 0.1) for s in range(seconds)] for k, name in enumerate(models)
    }
    snapshot = Snapshot(time=now, http_url="http://h:1", metrics_url="http://h:3/metrics", state="READY")
    snapshot.models = {name: ModelMetrics(name=name, history=history) for name, history in histories.items()}
    return snapshot


def test_live_chart_blits_lines_and_redraws_axes_only_when_they_change():
    chart = LiveChart()
    first = chart.update(_snapshot(1000.0))
    image = Image.open(io.BytesIO(first)).convert("RGB")
    assert image.size == (900, 250)
    assert _pixels_near(image, COLOURS[0]) > 100 and _pixels_near(image, COLOURS[1]) > 100  # both lines drawn
    for second in range(1, 6):  # steady data: only the lines move
        png = chart.update(_snapshot(1000.0 + second, rate=10.0 + second / 2))
    assert chart.full_draws == 1 and png != first
    rate_axes = chart._figure.axes[0]
    assert rate_axes.get_xlim() == (-120.0, 0.0)  # 100 s of history: the axis spans two minutes
    assert {"-120 s", "-90 s", "-60 s", "-30 s", "now"} <= set(_tick_labels(rate_axes.xaxis))
    assert rate_axes.get_ylim() == (0.0, 20.0)  # a nice ceiling over 11 req/s
    chart.update(_snapshot(1006.0, rate=50.0))  # a scale step: axes drawn again
    assert chart.full_draws == 2 and rate_axes.get_ylim() == (0.0, 100.0)
    chart.update(_snapshot(1007.0, models=("triple",)))  # a model gone: the other one keeps its colour
    assert chart.full_draws == 3 and list(chart.histories) == ["triple"]
    assert chart._lines["triple"][0].get_color() == COLOURS[1]
    chart.update(_snapshot(1007.5, models=("double",)))
    assert [text.get_text() for text in chart._figure.legends[0].get_texts()] == ["double"]
    chart.update(_snapshot(1008.0, models=("double",), seconds=200))  # the history outgrew two minutes
    assert chart.full_draws == 5 and rate_axes.get_xlim() == (-300.0, 0.0)
    assert {"-5 min", "-4 min", "-3 min", "-2 min", "-1 min", "now"} <= set(_tick_labels(rate_axes.xaxis))


def test_live_chart_keeps_the_last_data_and_says_the_server_is_down():
    chart = LiveChart()
    chart.update(_snapshot(1000.0))
    gone = Snapshot(time=1030.0, http_url="http://h:1", metrics_url="http://h:3/metrics", state="DOWN")
    png = chart.update(gone)  # a remote server that stopped answering: no models in the snapshot
    assert set(chart.histories) == {"double", "triple"} and chart.note.startswith("DOWN: last data ")
    assert chart._note_text.get_text() == chart.note and Image.open(io.BytesIO(png)).size == (900, 250)
    gone.time = 1400.0  # long after: the last data stays in view, ending at "now" (the last sample)
    chart.update(gone)
    still = chart.still()
    axes = still.figure.axes[0]
    lines = [line for line in axes.get_lines() if len(line.get_xdata())]
    assert len(lines) == 2 and not any(line.get_animated() for line in lines)
    low, high = axes.get_xlim()
    assert all(low <= x <= high for line in lines for x in line.get_xdata())
    assert max(x for line in lines for x in line.get_xdata()) == 0
    assert "DOWN" in still.description and still.png().startswith(b"\x89PNG")
    chart.update(_snapshot(1040.0))
    assert chart.note == ""


def test_live_chart_survives_odd_values_and_many_models():
    chart = LiveChart()
    snapshot = _snapshot(1000.0, models=tuple(f"m{i}" for i in range(12)))
    snapshot.models["m0"].history[-1] = (1000.0, float("nan"), float("inf"))
    snapshot.models["m1"].history = []
    assert chart.update(snapshot).startswith(b"\x89PNG")
    legend = [text.get_text() for text in chart._figure.legends[0].get_texts()]
    assert len(legend) == 6 and legend[-1] == "+7 more"
    idle = LiveChart()
    idle.update(_snapshot(1000.0, rate=0.0, models=("idle",)))
    assert idle._figure.axes[0].get_ylim() == (0.0, 1.0)


def test_live_chart_takes_stills_while_the_refresh_thread_draws():
    chart = LiveChart()
    chart.update(_snapshot(1000.0))
    failures: list[BaseException] = []
    done = threading.Event()

    def refresh() -> None:
        try:
            for second in range(1, 200):
                assert chart.update(_snapshot(1000.0 + second, rate=10.0 + second % 40)).startswith(b"\x89PNG")
        except BaseException as error:
            failures.append(error)
        finally:
            done.set()

    thread = threading.Thread(target=refresh)
    thread.start()
    stills = 0
    while not done.is_set():
        assert chart.still().png().startswith(b"\x89PNG")
        stills += 1
    thread.join()
    assert failures == [] and stills >= 1


def _pixels_near(image: Image.Image, colour: str, tolerance: int = 40) -> int:
    """How many pixels are within ``tolerance`` (per channel) of a ``#rrggbb`` colour."""
    target = [int(colour[i : i + 2], 16) for i in (1, 3, 5)]
    return sum(
        count
        for count, rgb in image.getcolors(maxcolors=1_000_000)
        if all(abs(a - b) <= tolerance for a, b in zip(rgb, target))
    )


def test_nice_ceilings():
    assert [nice_ceiling(v) for v in (0, 0.7, 1, 1.2, 2.2, 3, 7, 11, 230)] == [
        1,
        1,
        1,
        2,
        2.5,
        5,
        10,
        20,
        250,
    ]
