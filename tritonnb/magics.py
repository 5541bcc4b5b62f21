"""IPython front: ``%triton``, ``%%triton_model``, ``%triton_perf`` and ``%triton_tune``. Parses lines, runs cells,
displays results; no server logic.

Options are declared with IPython's ``magic_arguments``, so ``%triton_model?`` shows the same usage that parses the
line, and ``-h``/``--help`` prints it. tritonnb's own errors (``TritonnbError``) become one-line usage errors; any
other exception keeps its traceback.
"""

from __future__ import annotations

import argparse
import functools
import pathlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import (
    ArgDecorator,
    MagicArgumentParser,
    MagicHelpFormatter,
    argument,
    kwds,
    magic_arguments,
)
from IPython.display import display
from IPython.utils.process import arg_split

import tritonnb
from tritonnb.deploy.export import FORMATS
from tritonnb.errors import BindError, SpecError, TritonnbError
from tritonnb.signature import TensorSpec, parse_spec
from tritonnb.states import ModelState
from tritonnb.ui.report import format_models, format_status

if TYPE_CHECKING:
    from tritonnb.ui.card import ModelCard

__all__ = ["HELP_FLAGS", "INPUT_DATA", "MAX_LATENCY", "TritonMagics", "subcommand"]

HELP_FLAGS = {"-h", "--help"}


class _HelpWithDefaults(MagicHelpFormatter):
    """IPython's help layout, plus each option's default where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if action.option_strings and not (default is None or default is False or default is argparse.SUPPRESS):
            shown = ",".join(map(str, default)) if isinstance(default, list) else str(default)
            text += f" (default: {shown.replace('%', '%%')})"
        return text


def _with_defaults() -> kwds:
    """Help that shows defaults (a new decorator each time: IPython writes the description into its dict)."""
    return kwds(formatter_class=_HelpWithDefaults)


class subcommand(ArgDecorator):  # named in lower case like IPython's argument decorators it sits among
    """A subcommand with its own arguments, for magics like ``%triton start --http-port N``."""

    def __init__(self, name: str, help: str, *arguments: argument) -> None:
        self.name, self.help, self.arguments = name, help, arguments

    def add_to_parser(self, parser: MagicArgumentParser, group: Any) -> None:
        """Add this subcommand (and the subcommand table, on first use) to the magic's parser."""
        table = getattr(parser, "subcommands", None)
        if table is None:
            table = parser.subcommands = parser.add_subparsers(
                dest="command", required=True, parser_class=MagicArgumentParser, title="subcommands"
            )
        sub = table.add_parser(
            self.name,
            help=self.help.replace("%", "%%"),  # argparse %-formats help, not descriptions
            description=self.help,
            formatter_class=_HelpWithDefaults,
            add_help=False,
        )
        for wrapped in self.arguments:
            wrapped.add_to_parser(sub, None)


def _help_lists_subcommands(magic: Callable) -> Callable:
    """Make the magic's docstring (what ``%triton?`` shows) its usage followed by every subcommand's own usage."""
    magic.__doc__ = _help_text(magic.parser, [])
    return magic


def _help_text(parser: MagicArgumentParser, words: list[str]) -> str:
    """The usage of the subcommand named first in ``words``, else of the magic (and all its subcommands)."""
    table = getattr(parser, "subcommands", None)
    if table is None:
        return parser.format_help()
    if words and words[0] in table.choices:
        return table.choices[words[0]].format_help()
    return "\n".join([parser.format_help(), *(sub.format_help() for sub in table.choices.values())])


def _parse(magic: Callable, line: str) -> argparse.Namespace | None:
    """The parsed line, or None after printing the usage for ``-h``/``--help``."""
    try:
        words = arg_split(line, posix=True, strict=True)
    except ValueError as error:
        raise UsageError(f"{magic.parser.prog}: cannot split the line: {error}") from None
    if HELP_FLAGS & set(words):
        print(_help_text(magic.parser, words))
        return None
    return magic.parser.parse_args(words)


def _usage_errors(method: Callable) -> Callable:
    """tritonnb's own errors as a one-line usage error; anything else keeps its traceback."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except TritonnbError as error:
            raise UsageError(f"{type(error).__name__}: {error}") from None

    return wrapper


# -- argument types: argparse turns their ArgumentTypeError into a usage error naming the option ----------------
def _port(text: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (1-65535)")
    return port


def _spec(text: str) -> TensorSpec:
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


def _positive_list(text: str) -> list[int]:
    values = _int_list(text)
    if 0 in values:
        raise argparse.ArgumentTypeError(f"{text!r}: every value must be 1 or more")
    return values


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be positive")
    return value


INPUT_DATA = argument(
    "--input-data", metavar="VAR_OR_NPZ", help="a variable (dict of arrays by input name, or one array) or an .npz file"
)

MAX_LATENCY = argument(
    "--max-latency-ms", type=_positive_float, metavar="X", help="p95 latency budget in ms, a line on the chart"
)


@magics_class
class TritonMagics(Magics):
    """``%triton`` (server control), ``%%triton_model`` (serve a function from the cell), ``%triton_perf`` (load
    test) and ``%triton_tune`` (batching sweep)."""

    @line_magic
    @_usage_errors
    @_help_lists_subcommands
    @magic_arguments()
    @_with_defaults()
    @subcommand(
        "start",
        "start Triton in the background (the first %%triton_model cell does this with defaults)",
        argument("--http-port", type=_port, metavar="N", help="HTTP port (default: 8000, or the next free one)"),
        argument("--grpc-port", type=_port, metavar="N", help="gRPC port (default: 8001, or the next free one)"),
        argument("--metrics-port", type=_port, metavar="N", help="metrics port (default: 8002, or the next free one)"),
        argument("--public", action="store_true", help="bind all interfaces, not only 127.0.0.1"),
        argument(
            "--private",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="only this kernel's access token may call and read the models (inference, metadata, model config); "
            "default: on under JupyterHub, off elsewhere; --no-private turns it off",
        ),
        argument(
            "--public-url",
            metavar="URL",
            help="where a browser reaches the HTTP port, for port forwarding or a reverse proxy, e.g. "
            "http://localhost:18000; {{port}} in it stands for each port (doubled braces: IPython expands {x} in "
            "magic lines) (default: $TRITONNB_PUBLIC_URL, else through jupyter-server-proxy when the kernel runs "
            "under a Jupyter server)",
        ),
        argument("--log-verbose", type=_non_negative, metavar="N", help="Triton's log verbosity (0: off)"),
        argument(
            "--model-repository",
            action="append",
            metavar="DIR_OR_URL",
            help="also serve the models of this Triton model repository (DIR/<model>/config.pbtxt, "
            "DIR/<model>/<version>/...), a folder or s3://, gs:// or as:// URL; repeat it for several",
        ),
        argument(
            "--vertex-ai-port",
            type=_port,
            metavar="P",
            help="also answer Vertex AI's health and predict routes on this port (Triton's Vertex AI mode; routes "
            "from AIP_HEALTH_ROUTE and AIP_PREDICT_ROUTE, else /health and /predict)",
        ),
        argument(
            "--vertex-ai-default-model",
            metavar="NAME",
            help="the model Vertex AI's predict route calls (default: the only model of --model-repository); the "
            "X-Vertex-Ai-Triton-Redirect header reaches the others",
        ),
        argument(
            "--no-restart",
            action="store_true",
            help="do not restart tritonserver when it exits by itself (default: restart, bind every model again)",
        ),
    )
    @subcommand("stop", "stop Triton and every model")
    @subcommand("restart", "restart Triton on the same ports and bind every model again")
    @subcommand("status", "state, pid, version, uptime, URLs, log file and models")
    @subcommand("models", "one line per served model")
    @subcommand(
        "unbind",
        "stop serving one model (or one of its versions); the others keep serving",
        argument("name", help="the model"),
        argument("--version", type=_positive, metavar="N", help="this version alone; the others serve on"),
    )
    @subcommand(
        "logs",
        "the tail of Triton's log, with model tracebacks",
        argument("-n", type=_positive, default=40, metavar="N", help="lines"),
    )
    @subcommand(
        "panel",
        "a live dashboard of this server, or of any Triton server; several --url: one row per server",
        argument(
            "--url",
            action="append",
            metavar="URL",
            help="any Triton server's HTTP URL (default: this kernel's); repeat it to watch a room of servers",
        ),
        argument("--metrics-url", metavar="URL", help="with one --url: its metrics URL (default: HTTP port + 2)"),
        argument(
            "--token",
            metavar="TOKEN",
            help="access token for the statistics API, if restricted (--token=TOKEN when it starts with -)",
        ),
        argument(
            "--interval",
            type=_positive_float,
            default=1.0,
            metavar="S",
            help="seconds between refreshes (the nearest of 0.5, 1, 2, 5, 10)",
        ),
    )
    @subcommand(
        "export",
        "write a served model to a Triton model repository, with docker compose and Kubernetes files beside it",
        argument("name", help="a served model"),
        argument(
            "directory",
            metavar="DIR_OR_URL",
            help="the repository: a folder (created if missing) or an s3://, gs:// or as:// URL",
        ),
        argument("--version", type=_positive, metavar="N", help="the version to write (default: the next one)"),
        argument(
            "--format",
            dest="model_format",
            choices=FORMATS,
            default="python",
            help="python: the function with all it uses, for the python backend; torchscript: traced, no Python",
        ),
        argument("--force", action="store_true", help="replace the version if it exists"),
    )
    def triton(self, line: str) -> None:
        """Control the background Triton server."""
        args = _parse(self.triton, line)
        if args is None:
            return
        if args.command == "start":
            self._start(args)
        elif args.command == "stop":
            seconds = tritonnb.stop()
            print("no Triton server runs" if seconds is None else f"Triton stopped in {seconds:.1f} s")
        elif args.command == "restart":
            server = self._require_server()
            seconds = server.restart()
            print(f"Triton restarted in {seconds:.1f} s; models bound again: {', '.join(server.models) or 'none'}")
            if server.repository_models:
                print(f"models of the model repositories loaded again: {', '.join(server.repository_models)}")
        elif args.command == "status":
            server = tritonnb.server()
            print(format_status(server.status()) if server else "no Triton server runs")
        elif args.command == "models":
            print(format_models(self._require_server().status()))
        elif args.command == "unbind":
            self._require_server().unbind(args.name, args.version)
            print(f"model {args.name!r}" + ("" if args.version is None else f" version {args.version}") + " unbound")
        elif args.command == "logs":
            print(self._require_server().logs(args.n), end="")
        elif args.command == "export":
            print(
                tritonnb.export(
                    args.name, args.directory, version=args.version, model_format=args.model_format, force=args.force
                )
            )
        elif args.command == "panel":
            urls = args.url or []
            if not urls:
                self._require_server()
            if len(urls) > 1:
                if args.metrics_url is not None:
                    raise UsageError("--metrics-url goes with a single --url: each server's metrics are on port + 2")
                display(tritonnb.panel(urls=urls, token=args.token, interval_s=args.interval))
            else:
                url = urls[0] if urls else None
                display(tritonnb.panel(url, metrics_url=args.metrics_url, token=args.token, interval_s=args.interval))

    @cell_magic
    @_usage_errors
    @magic_arguments("%triton_model")  # IPython's help layout adds one more %
    @_with_defaults()
    @argument("name", help="the model's name in Triton; the cell's function of that name (or its only one) is served")
    @argument(
        "--input",
        dest="inputs",
        type=_spec,
        nargs="+",
        action="extend",
        metavar="SPEC",
        help="name:dtype[dims], dims per sample, -1 for any size, e.g. x:float32[-1,64] "
        "(default: one float32[-1] input per parameter)",
    )
    @argument(
        "--output",
        dest="outputs",
        type=_spec,
        nargs="+",
        action="extend",
        metavar="SPEC",
        help="name:dtype[dims] (default: output:float32[-1])",
    )
    @argument(
        "--max-batch-size",
        type=_non_negative,
        metavar="N",
        help="dynamic batching; 0 turns it off; a stream is never batched (default: 32)",
    )
    @argument("--batch-delay-us", type=_non_negative, default=0, metavar="N", help="how long a batch may wait to fill")
    @argument("--instances", type=_positive, default=1, metavar="N", help="model instances (handler threads)")
    @argument("--device", metavar="cpu|cuda|cuda:K", help="where the tensors go (default: cuda if available)")
    @argument("--warmup", type=_non_negative, default=0, metavar="N", help="generated batches to run before serving")
    @argument(
        "--warmup-data",
        metavar="VAR_OR_NPZ",
        help="warm up with your own samples instead (a variable: dict of arrays by input name, or one array; or an "
        ".npz file), --warmup times, at least once",
    )
    @argument(
        "--timeout-s",
        type=_positive_float,
        metavar="S",
        help="a request whose call takes longer gets an error; the call runs on (default: no timeout)",
    )
    @argument(
        "--stream",
        action="store_true",
        help="serve as a stream, one response per item (a generator function always is): for a function that "
        "returns an iterator",
    )
    @argument(
        "--version",
        type=_positive,
        metavar="N",
        help="serve the cell as this version of the model, beside its other versions (same inputs, outputs and "
        "batching); /v2/models/NAME/versions/N/infer answers with it (default: 1)",
    )
    def triton_model(self, line: str, cell: str) -> ModelCard | None:
        """Serve a function defined in this cell as a Triton model; running the cell again hot-swaps it. Returns the
        model's card (``card = _``), shown with its live strip."""
        from tritonnb.serving.torch_bridge import resolve_device
        from tritonnb.ui.cell import forget_source_with, run_cell_and_pick

        args = _parse(self.triton_model, line)
        if args is None:
            return None
        if args.device is not None:
            resolve_device(args.device)  # a device that does not exist fails before anything starts
        source = self.shell.transform_cell(cell)
        # registered like IPython's own cells, so tracebacks of the served function show the cell's lines
        filename = self.shell.compile.cache(source, self.shell.execution_count)
        fn = run_cell_and_pick(source, args.name, self.shell.user_ns, filename)
        forget_source_with(fn, filename, getattr(self.shell.compile, "_filename_map", {}))
        if tritonnb.server() is None:
            self._start(None)
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
            timeout_s=args.timeout_s,
            stream=True if args.stream else None,
            version=args.version,
            warmup_data=self._input_data(args.warmup_data),
        )
        if self._has_kernel():  # live widgets need a kernel with comms
            from tritonnb.observe.monitor import target_for
            from tritonnb.ui.panel import ModelStrip

            card.strip = ModelStrip(target_for(server=tritonnb.server()), args.name)
        return card  # IPython shows it (and its strip) as the cell's result

    @line_magic
    @_usage_errors
    @magic_arguments()
    @_with_defaults()
    @argument("name", help="a served model (bound here, from a model repository, or any model of --url)")
    @argument("--concurrency", type=_positive_list, default=[1, 2, 4, 8], metavar="C,C,...", help="levels")
    @argument("--duration", type=_positive_float, default=5.0, metavar="S", help="seconds per level")
    @INPUT_DATA
    @argument(
        "--engine",
        choices=["builtin", "perf_analyzer"],
        default="builtin",
        help="tritonnb's load generator, or NVIDIA's perf_analyzer from PATH",
    )
    @argument("--url", metavar="URL", help="any Triton server's HTTP URL (default: this kernel's server)")
    @argument(
        "--token",
        metavar="TOKEN",
        help="with --url: access token for its statistics API, if restricted (--token=TOKEN when it starts with -)",
    )
    @argument(
        "--versions",
        type=_positive_list,
        metavar="N,N,...",
        help="load-test these versions of the model one after another, on one chart (an A/B comparison)",
    )
    @MAX_LATENCY
    def triton_perf(self, line: str) -> Any:
        """Closed-loop load test of a served model, or of a model of any Triton server: throughput, latency
        percentiles and Triton's own split."""
        from tritonnb.loadtest.perf import compare_versions, run_perf
        from tritonnb.ui.progress import StepProgress

        args = _parse(self.triton_perf, line)
        if args is None:
            return None
        if args.token is not None and args.url is None:
            raise UsageError("--token goes with --url: this kernel's own server needs none")
        server = self._require_server() if args.url is None else tritonnb.server()
        steps = len(args.concurrency) * len(args.versions or [None])
        progress = StepProgress(steps, "load test", self._has_kernel())
        done = 0

        def step(level: int, _levels: int, row: dict[str, Any]) -> None:
            nonlocal done
            done += 1
            progress.step(done, steps, row)

        options: dict[str, Any] = {
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "input_data": self._input_data(args.input_data),
            "on_progress": step,
            "engine": args.engine,
            "url": args.url,
            "token": args.token,
            "max_latency_ms": args.max_latency_ms,
        }
        if args.versions is not None and len(args.versions) > 1:
            return compare_versions(server, args.name, args.versions, **options)
        version = args.versions[0] if args.versions else None
        return run_perf(server, args.name, version=version, **options)

    @line_magic
    @_usage_errors
    @magic_arguments()
    @_with_defaults()
    @argument("name", help="a served model")
    @MAX_LATENCY
    @argument("--concurrency", type=_positive_list, default=[8], metavar="C,C,...", help="load levels per config")
    @argument("--duration", type=_positive_float, default=2.0, metavar="S", help="seconds per configuration")
    @argument("--max-batch-sizes", type=_int_list, default=[0, 8, 32], metavar="N,N,...", help="0 is no batching")
    @argument("--delays-us", type=_int_list, default=[0, 1000], metavar="N,N,...", help="batch delays to try")
    @argument("--instances", type=_positive_list, default=[1, 2], metavar="N,N,...", help="instance counts to try")
    @INPUT_DATA
    @argument("--apply", action="store_true", help="leave the model bound with the best configuration")
    def triton_tune(self, line: str) -> Any:
        """Sweep batching and instances of a served model and recommend the best configuration."""
        from tritonnb.loadtest.tune import configurations, tune
        from tritonnb.ui.progress import StepProgress

        args = _parse(self.triton_tune, line)
        if args is None:
            return None
        server = self._require_server()
        grid = configurations(args.max_batch_sizes, args.delays_us, args.instances)
        progress = StepProgress(len(grid), "tuning", self._has_kernel())
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

    def _has_kernel(self) -> bool:
        return getattr(self.shell, "kernel", None) is not None

    def _input_data(self, reference: str | None) -> Any:
        if reference is None:
            return None
        if reference.isidentifier():
            if reference not in self.shell.user_ns:
                raise UsageError(f"no variable named {reference!r} holds input data")
            return self.shell.user_ns[reference]
        if not pathlib.Path(reference).is_file():
            raise UsageError(f"input data {reference!r} is neither a variable nor a file")
        return reference

    def _start(self, args: argparse.Namespace | None) -> Any:
        options: dict[str, Any] = {}
        if args is not None:
            options = {
                k: v
                for k, v in vars(args).items()
                if k not in ("command", "no_restart") and v is not None and (v is not False or k == "private")
            }
            options["restart_on_crash"] = not args.no_restart
        if tritonnb.server() is not None:
            raise UsageError("a Triton server already runs; %triton stop it first to change its options")
        try:
            server = tritonnb.start(**options)
        except BindError:  # a repository's model did not load: the server runs, say so before the error
            if tritonnb.server() is not None:
                self._announce(tritonnb.server())
            raise
        self._announce(server)
        return server

    @staticmethod
    def _announce(server: Any) -> None:
        for note in server.settings.notes:
            print(f"note: {note}")
        print(
            f"Triton {server.version} ready: HTTP {server.http_url}, gRPC {server.grpc_url.removeprefix('grpc://')}"
            f", metrics {server.metrics_url}" + ("" if server.supervisor.enabled else "; restart on crash: off")
        )
        route = server.browser_route
        if route.http:
            print(f"from the browser: {route.http} (through {route.via})")
        elif route.note:
            print(f"note: {route.note}")
        for path in server.settings.repositories:
            models = server.repository_models.items()
            names = [n for n, m in models if m.repository == path and m.state == ModelState.READY]
            print(f"model repository {path}: serving {', '.join(names) or 'no model'}")

    @staticmethod
    def _require_server() -> Any:
        server = tritonnb.server()
        if server is None:
            raise UsageError("no Triton server runs; start one with %triton start or a %%triton_model cell")
        return server
