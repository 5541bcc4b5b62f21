"""IPython front: ``%triton`` and ``%%triton_model``. Parses lines, runs cells, displays cards; no server logic."""

from __future__ import annotations

import argparse
import shlex

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import MagicArgumentParser
from IPython.display import display

import tritonnb
from tritonnb.ports import PortBusyError
from tritonnb.report import format_models, format_status
from tritonnb.signature import SpecError, parse_spec


def _parser(prog: str, description: str) -> MagicArgumentParser:
    return MagicArgumentParser(prog=prog, description=description, add_help=False)


def _port(text: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (1-65535)")
    return port


def _spec(text: str):
    try:
        return parse_spec(text)
    except SpecError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be 1 or more")
    return value


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} needs at least one value, none negative")
    return values


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be positive")
    return value


def _perf_parser() -> MagicArgumentParser:
    parser = _parser("%triton_perf", "Closed-loop load test of a served model.")
    parser.add_argument("name")
    parser.add_argument("--concurrency", type=_int_list, default=[1, 2, 4, 8], help="levels, e.g. 1,2,4,8")
    parser.add_argument("--duration", type=_positive_float, default=5.0, help="seconds per level")
    parser.add_argument("--input-data", help="a variable (dict of arrays, or an array) or an .npz file")
    parser.add_argument(
        "--engine",
        choices=["builtin", "perf_analyzer"],
        default="builtin",
        help="tritonnb's load generator, or NVIDIA's perf_analyzer from PATH",
    )
    return parser


def _tune_parser() -> MagicArgumentParser:
    parser = _parser("%triton_tune", "Sweep batching and instances of a served model and recommend the best.")
    parser.add_argument("name")
    parser.add_argument("--max-latency-ms", type=_positive_float, help="p95 latency budget")
    parser.add_argument("--concurrency", type=_int_list, default=[8])
    parser.add_argument("--duration", type=_positive_float, default=2.0, help="seconds per configuration")
    parser.add_argument("--max-batch-sizes", type=_int_list, default=[0, 8, 32])
    parser.add_argument("--delays-us", type=_int_list, default=[0, 1000])
    parser.add_argument("--instances", type=_int_list, default=[1, 2])
    parser.add_argument("--input-data", help="a variable (dict of arrays, or an array) or an .npz file")
    parser.add_argument("--apply", action="store_true", help="leave the model bound with the best configuration")
    return parser


def _triton_parser() -> MagicArgumentParser:
    parser = _parser("%triton", "Control the background Triton server.")
    sub = parser.add_subparsers(
        dest="command",
        parser_class=MagicArgumentParser,
        required=True,
        metavar="{start,stop,restart,status,models,unbind,logs}",
    )
    start = sub.add_parser("start", help="start Triton in the background", add_help=False)
    start.add_argument("--http-port", type=_port)
    start.add_argument("--grpc-port", type=_port)
    start.add_argument("--metrics-port", type=_port)
    start.add_argument("--public", action="store_true", help="bind all interfaces, not only 127.0.0.1")
    start.add_argument("--log-verbose", type=_non_negative)
    for name in ("stop", "restart", "status", "models"):
        sub.add_parser(name, add_help=False)
    sub.add_parser("unbind", add_help=False).add_argument("name")
    sub.add_parser("logs", add_help=False).add_argument("-n", type=_positive, default=40)
    panel = sub.add_parser("panel", add_help=False)
    panel.add_argument("--url", help="any Triton server's HTTP URL (default: this kernel's)")
    panel.add_argument("--metrics-url", help="its metrics URL (default: same host, HTTP port + 2)")
    panel.add_argument("--token", help="access token for its statistics API, if restricted")
    panel.add_argument(
        "--interval", type=float, default=1.0, help="seconds between refreshes (the nearest of 0.5, 1, 2, 5, 10)"
    )
    return parser


def _model_parser() -> MagicArgumentParser:
    parser = _parser("%%triton_model", "Serve a function defined in this cell as a Triton model.")
    parser.add_argument("name")
    parser.add_argument("--input", dest="inputs", type=_spec, nargs="+", action="extend", metavar="SPEC")
    parser.add_argument("--output", dest="outputs", type=_spec, nargs="+", action="extend", metavar="SPEC")
    parser.add_argument("--max-batch-size", type=_non_negative, default=32)
    parser.add_argument("--batch-delay-us", type=_non_negative, default=0)
    parser.add_argument("--instances", type=_positive, default=1)
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:K (default: cuda when available)")
    parser.add_argument("--warmup", type=_non_negative, default=0, help="generated batches to run before serving")
    return parser


def _parse(parser: MagicArgumentParser, line: str) -> argparse.Namespace:
    try:
        words = shlex.split(line)
    except ValueError as error:
        raise UsageError(f"{parser.prog}: cannot split the line: {error}") from None
    return parser.parse_args(words)


@magics_class
class TritonMagics(Magics):
    """``%triton`` (server control) and ``%%triton_model`` (serve a function from the cell)."""

    @line_magic
    def triton(self, line: str) -> None:
        """%triton {start,stop,restart,status,models,unbind NAME,logs [-n N],panel [--url URL]}"""
        args = _parse(_triton_parser(), line)
        if args.command == "start":
            self._start(args)
        elif args.command == "stop":
            seconds = tritonnb.stop()
            print("no Triton server runs" if seconds is None else f"Triton stopped in {seconds:.1f} s")
        elif args.command == "restart":
            server = self._require_server()
            seconds = server.restart()
            print(f"Triton restarted in {seconds:.1f} s; models bound again: {', '.join(server.models) or 'none'}")
        elif args.command == "status":
            server = tritonnb.server()
            print(format_status(server.status()) if server else "no Triton server runs")
        elif args.command == "models":
            server = self._require_server()
            print(format_models(server.status()))
        elif args.command == "unbind":
            server = self._require_server()
            if args.name not in server.models:
                raise UsageError(f"no model named {args.name!r}; served: {', '.join(server.models) or 'none'}")
            server.unbind(args.name)
            print(f"model {args.name!r} unbound")
        elif args.command == "logs":
            print(self._require_server().logs(args.n), end="")
        elif args.command == "panel":
            if args.url is None:
                self._require_server()
            try:
                display(
                    tritonnb.panel(args.url, metrics_url=args.metrics_url, token=args.token, interval_s=args.interval)
                )
            except ValueError as error:
                raise UsageError(str(error)) from None

    @cell_magic
    def triton_model(self, line: str, cell: str) -> None:
        """%%triton_model NAME [--input SPEC ...] [--output SPEC ...] [--max-batch-size N] [--batch-delay-us N]
        [--instances N] [--device cpu|cuda|cuda:K] [--warmup N]"""
        from tritonnb.cell import CellError, run_cell_and_pick
        from tritonnb.torch_bridge import resolve_device

        args = _parse(_model_parser(), line)
        try:
            resolve_device(args.device)
        except ValueError as error:
            raise UsageError(str(error)) from None
        source = self.shell.transform_cell(cell)
        try:
            fn = run_cell_and_pick(source, args.name, self.shell.user_ns, f"<triton_model {args.name}>")
        except CellError as error:
            raise UsageError(str(error)) from None
        if tritonnb.server() is None:
            self._start(None)
        try:
            card = tritonnb.bind(
                fn,
                args.name,
                inputs=args.inputs,
                outputs=args.outputs,
                max_batch_size=args.max_batch_size,
                batch_delay_us=args.batch_delay_us,
                instances=args.instances,
                device=args.device,
                warmup=args.warmup,
            )
        except (ValueError, TypeError) as error:  # bad names, specs or a function that cannot take the inputs
            raise UsageError(str(error)) from None
        display(card)
        if self._has_kernel():  # live widgets need a kernel with comms
            from tritonnb.monitor import target_for
            from tritonnb.widgets.panel import ModelStrip

            display(ModelStrip(target_for(server=tritonnb.server()), args.name))

    @line_magic
    def triton_perf(self, line: str):
        """%triton_perf NAME [--concurrency 1,2,4,8] [--duration S] [--input-data VAR_OR_NPZ]
        [--engine builtin|perf_analyzer]"""
        from tritonnb.perf import PerfError, run_perf
        from tritonnb.widgets.progress import StepProgress

        args = _parse(_perf_parser(), line)
        server = self._require_model(args.name)
        if 0 in args.concurrency:
            raise UsageError("concurrency levels must be 1 or more")
        progress = StepProgress(len(args.concurrency), "load test", self._has_kernel())
        try:
            return run_perf(
                server,
                args.name,
                args.concurrency,
                args.duration,
                self._input_data(args.input_data),
                progress.step,
                engine=args.engine,
            )
        except PerfError as error:
            raise UsageError(str(error)) from None

    @line_magic
    def triton_tune(self, line: str):
        """%triton_tune NAME [--max-latency-ms X] [--concurrency 8] [--duration S] [--max-batch-sizes 0,8,32]
        [--delays-us 0,1000] [--instances 1,2] [--input-data VAR_OR_NPZ] [--apply]"""
        from tritonnb.perf import PerfError
        from tritonnb.tune import configurations, tune
        from tritonnb.widgets.progress import StepProgress

        args = _parse(_tune_parser(), line)
        server = self._require_model(args.name)
        if 0 in args.concurrency or 0 in args.instances:
            raise UsageError("concurrency levels and instance counts must be 1 or more")
        grid = configurations(args.max_batch_sizes, args.delays_us, args.instances)
        progress = StepProgress(len(grid), "tuning", self._has_kernel())
        try:
            return tune(
                server,
                args.name,
                max_latency_ms=args.max_latency_ms,
                concurrency=args.concurrency,
                duration_s=args.duration,
                max_batch_sizes=args.max_batch_sizes,
                delays_us=args.delays_us,
                instances=args.instances,
                apply=args.apply,
                input_data=self._input_data(args.input_data),
                on_progress=progress.step,
            )
        except PerfError as error:
            raise UsageError(str(error)) from None

    def _has_kernel(self) -> bool:
        return getattr(self.shell, "kernel", None) is not None

    def _input_data(self, reference: str | None):
        if reference is None:
            return None
        if reference.isidentifier():
            if reference not in self.shell.user_ns:
                raise UsageError(f"no variable named {reference!r} holds input data")
            return self.shell.user_ns[reference]
        import pathlib

        if not pathlib.Path(reference).is_file():
            raise UsageError(f"input data {reference!r} is neither a variable nor a file")
        return reference

    def _require_model(self, name: str):
        server = self._require_server()
        if name not in server.models:
            raise UsageError(f"no model named {name!r}; served: {', '.join(server.models) or 'none'}")
        return server

    def _start(self, args: argparse.Namespace | None):
        options = {}
        if args is not None:
            options = {k: v for k, v in vars(args).items() if k != "command" and v is not None and v is not False}
        if tritonnb.server() is not None:
            raise UsageError("a Triton server already runs; %triton stop it first to change its options")
        try:
            server = tritonnb.start(**options)
        except PortBusyError as error:
            raise UsageError(str(error)) from None
        for note in server.settings.notes:
            print(f"note: {note}")
        print(
            f"Triton {server.version} ready: HTTP {server.http_url}, gRPC {server.grpc_url.removeprefix('grpc://')}"
            f", metrics {server.metrics_url}"
        )
        return server

    @staticmethod
    def _require_server():
        server = tritonnb.server()
        if server is None:
            raise UsageError("no Triton server runs; start one with %triton start or a %%triton_model cell")
        return server
