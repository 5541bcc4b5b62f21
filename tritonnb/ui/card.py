"""The card a bound model displays: endpoints, signature, batching, and snippets that work as shown."""

from __future__ import annotations

import dataclasses
import html
import json
import math
import shlex
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tritonnb.http_get import ACCESS_TOKEN_HEADER, GRPC_ACCESS_TOKEN_HEADER, own_token
from tritonnb.signature import ModelSpec, TensorSpec
from tritonnb.triton.browser_route import BrowserRoute

if TYPE_CHECKING:
    from tritonnb.serving.binding import BindResult

__all__ = [
    "ModelCard",
    "binary_curl_command",
    "curl_command",
    "example_file",
    "example_shape",
    "generate_curl",
    "grpc_stream_snippet",
    "python_snippet",
]
# bash: the 4-byte little-endian length that goes before each element of a BYTES tensor in Triton's binary data
# a browser cannot send a header with a link it opens, and Triton takes the access token from the header alone
# (measured: not as ?triton-access-token= nor as a cookie); jupyter-server-proxy passes headers on, adds none
PRIVATE_LINKS_NOTE = (
    "private server: metadata and config need the access token header, which a browser link cannot send; use the "
    "snippets (they carry it)"
)
LE32 = "le32() { printf \"$(printf '\\\\%03o' $(($1 & 255)) $(($1 >> 8 & 255)) $(($1 >> 16 & 255)) $(($1 >> 24)))\"; }"


def example_shape(spec: TensorSpec, batched: bool) -> list[int]:
    """A concrete shape for an example request: -1 dims become 1, plus a batch of 1 when batched."""
    dims = [1 if d == -1 else d for d in spec.dims]
    return [1, *dims] if batched else dims


def _example_values(spec: TensorSpec, count: int) -> list:
    value: object = {"bool": True, "bytes": "hello"}.get(spec.dtype, 1)
    return [value] * count


def model_path(name: str, version: int | None = None) -> str:
    """A model's HTTP path, e.g. ``/v2/models/clf`` or, for one version, ``/v2/models/clf/versions/2``."""
    return f"/v2/models/{name}" + ("" if version is None else f"/versions/{version}")


def example_file(spec: TensorSpec) -> str:
    """The file whose bytes the card's examples send for a bytes input, e.g. ``image.bin``."""
    return f"{spec.name}.bin"


def _has_bytes_input(model: ModelSpec) -> bool:
    return any(spec.dtype == "bytes" for spec in model.inputs)


def _token_flag(token: str | None) -> str:
    """curl's flag sending the access token (a private server's inference needs it), with a space before it."""
    return f" -H {shlex.quote(f'{ACCESS_TOKEN_HEADER}: {token}')}" if token else ""


def curl_command(
    http_url: str,
    model: ModelSpec,
    version: int | None = None,
    files: Mapping[str, str] | None = None,
    token: str | None = None,
) -> str:
    """A command that sends one example request to the model's HTTP infer endpoint (of ``version``): plain JSON, or
    where an input is bytes, a bash command sending Triton's binary tensor data with each bytes input read from a
    file (``files`` by input name; default ``example_file``). ``token``: the access token, sent as a header."""
    if _has_bytes_input(model):
        return binary_curl_command(http_url, model, version, files, token)
    inputs = []
    for spec in model.inputs:
        shape = example_shape(spec, model.batched)
        count = 1
        for d in shape:
            count *= d
        inputs.append(
            {"name": spec.name, "datatype": spec.triton_dtype, "shape": shape, "data": _example_values(spec, count)}
        )
    body = json.dumps({"inputs": inputs}, separators=(",", ":"))
    url = f"{http_url}{model_path(model.name, version)}/infer"
    return f"curl -s -X POST {url} -H 'Content-Type: application/json'{_token_flag(token)} -d {shlex.quote(body)}"


def binary_curl_command(
    http_url: str,
    model: ModelSpec,
    version: int | None = None,
    files: Mapping[str, str] | None = None,
    token: str | None = None,
) -> str:
    """A bash command sending one example request as Triton's binary tensor data: a JSON header (numbers inline),
    then each element of each bytes input as a 4-byte little-endian length and the bytes of its file; the header's
    length goes in ``Inference-Header-Content-Length``. JSON strings cannot carry arbitrary bytes (a PNG, say)."""
    lines = [LE32]
    inputs: list[dict] = []
    parts: list[str] = []
    sizes: dict[str, str] = {}  # a placeholder in the JSON header -> the shell arithmetic that replaces it
    for index, spec in enumerate(model.inputs):
        shape = example_shape(spec, model.batched)
        count = math.prod(shape)
        if spec.dtype != "bytes":
            data = _example_values(spec, count)
            inputs.append({"name": spec.name, "datatype": spec.triton_dtype, "shape": shape, "data": data})
            continue
        path = (files or {}).get(spec.name, example_file(spec))
        file, size = f"F{index}", f"N{index}"
        lines.append(f'{file}={shlex.quote(path)}; {size}=$(($(wc -c < "${file}")))')
        sizes[f"@{size}@"] = f"$(({count} * (${size} + 4)))"
        parameters = {"binary_data_size": f"@{size}@"}
        inputs.append({"name": spec.name, "datatype": "BYTES", "shape": shape, "parameters": parameters})
        parts += [f'le32 "${size}"; cat "${file}"'] * count
    header = json.dumps({"inputs": inputs}, separators=(",", ":"))
    for placeholder, size in sizes.items():
        header = header.replace(f'"{placeholder}"', f"'{size}'")
    url = f"{http_url}{model_path(model.name, version)}/infer"
    lines += [
        f"HEADER='{header}'",
        f'{{ printf %s "$HEADER"; {"; ".join(parts)}; }} | curl -s -X POST {url} '
        f'-H "Inference-Header-Content-Length: ${{#HEADER}}"{_token_flag(token)} --data-binary @-',
    ]
    return "\n".join(lines)


def _input_lines(client_module: str, model: ModelSpec) -> list[str]:
    """Snippet lines that build one example request's ``inputs`` with ``client_module``'s InferInput (as binary
    tensor data over HTTP; gRPC sends raw bytes anyway)."""
    lines = ["inputs = []"]
    for spec in model.inputs:
        shape = example_shape(spec, model.batched)
        if spec.dtype == "bytes":  # the bytes of a file: a PNG, say
            data = f'np.full({shape}, pathlib.Path("{example_file(spec)}").read_bytes(), dtype=object)'
        elif spec.dtype == "bool":
            data = f"np.ones({shape}, dtype=bool)"
        else:
            data = f"np.ones({shape}, dtype=np.{spec.dtype})"
        lines += [
            f'inputs.append({client_module}.InferInput("{spec.name}", {shape}, "{spec.triton_dtype}"))',
            f"inputs[-1].set_data_from_numpy({data}{', binary_data=True' if client_module == 'httpclient' else ''})",
        ]
    return lines


def python_snippet(http_url: str, model: ModelSpec, version: int | None = None, token: str | None = None) -> str:
    """A tritonclient snippet that sends the same example request and prints each output. Tensors travel as binary
    data both ways (Triton's binary tensor extension), not as JSON: on loopback 70-90 times faster for a
    float32[3,224,224] input, about 12 % for a float32[64] one, and bytes tensors keep their exact bytes.
    ``token``: the access token, sent as a header."""
    names = json.dumps([o.name for o in model.outputs])
    headers = f"headers={json.dumps({ACCESS_TOKEN_HEADER: token})}, " if token else ""
    lines = [
        *_pathlib_import(model),
        "import numpy as np",
        "import tritonclient.http as httpclient",
        "",
        f'client = httpclient.InferenceServerClient("{http_url.removeprefix("http://")}")',
        *_input_lines("httpclient", model),
        f"outputs = [httpclient.InferRequestedOutput(name, binary_data=True) for name in {names}]",
        f'result = client.infer("{model.name}", inputs, {_version_argument(version)}{headers}outputs=outputs)',
    ]
    lines += [f'print("{o.name}", result.as_numpy("{o.name}"))' for o in model.outputs]
    return "\n".join(lines)


def _pathlib_import(model: ModelSpec) -> list[str]:
    """``import pathlib`` where a bytes input is read from a file."""
    return ["import pathlib"] if _has_bytes_input(model) else []


def _version_argument(version: int | None) -> str:
    return "" if version is None else f'model_version="{version}", '


def grpc_stream_snippet(grpc_url: str, model: ModelSpec, token: str | None = None) -> str:
    """A tritonclient snippet that sends the example request over a gRPC stream and prints each response;
    ``token``: the access token, sent as the stream's metadata."""
    headers = f", headers={json.dumps({GRPC_ACCESS_TOKEN_HEADER: token})}" if token else ""
    lines = [
        *_pathlib_import(model),
        "import queue",
        "import numpy as np",
        "import tritonclient.grpc as grpcclient",
        "",
        f'client = grpcclient.InferenceServerClient("{grpc_url.removeprefix("grpc://")}")',
        "responses = queue.Queue()",
        f"client.start_stream(callback=lambda result, error: responses.put((result, error)){headers})",
        *_input_lines("grpcclient", model),
        f'client.async_stream_infer("{model.name}", inputs, enable_empty_final_response=True)',
        "while True:",
        "    result, error = responses.get()",
        "    if error is not None:",
        "        raise error",
        '    if result.get_response().parameters["triton_final_response"].bool_param:',
        "        break",
    ]
    lines += [f'    print("{o.name}", result.as_numpy("{o.name}"))' for o in model.outputs]
    lines += [
        "client.stop_stream()",
        "client.close()  # before the interpreter exits: gRPC can hang closing it at exit",
    ]
    return "\n".join(lines)


def generate_curl(http_url: str, model: ModelSpec, version: int | None = None, token: str | None = None) -> str | None:
    """A curl command for Triton's generate extension: ``/generate`` (one JSON answer) or, for a stream,
    ``/generate_stream`` (server-sent events, one per response). None when an input has more than one dim per
    sample: the extension takes each input as a flat JSON list (or one value) and cannot shape it; and for a model
    that answers once and takes bytes, which JSON strings cannot carry (``curl_command`` sends them)."""
    if model.shaped_inputs or (_has_bytes_input(model) and not model.stream):
        return None
    body = {spec.name: _example_values(spec, 1 if spec.dims[0] == -1 else spec.dims[0]) for spec in model.inputs}
    text = json.dumps(body, separators=(",", ":"))
    endpoint, flags = ("generate_stream", "-sN") if model.stream else ("generate", "-s")
    url = f"{http_url}{model_path(model.name, version)}/{endpoint}"
    return f"curl {flags} -X POST {url}{_token_flag(token)} -d {shlex.quote(text)}"


@dataclasses.dataclass
class ModelCard:
    """What ``%%triton_model`` and ``tritonnb.bind`` show: a model's endpoints and how to call it."""

    spec: ModelSpec
    device: str
    http_url: str
    grpc_url: str
    result: BindResult
    function_name: str
    timeout_s: float | None = None
    route: BrowserRoute = dataclasses.field(default_factory=BrowserRoute)  # how a browser reaches the server
    version: int | None = None  # the version the URLs and snippets name (None: the newest, Triton's default)
    versions: str = "1"  # every version the model serves, e.g. "1,2"
    strip: Any = dataclasses.field(default=None, repr=False, compare=False)  # a live strip shown under the card
    # the access token the snippets send; None: the current one of this process's server when it is private
    token: str | None = dataclasses.field(default=None, repr=False)

    @property
    def access_token(self) -> str | None:
        """The token the snippets send: ``token``, else this process's own server's current one (new on each start)
        when that server is private (``tritonnb.start(private=True)``); None: the server needs none for inference."""
        if self.token is not None:
            return self.token
        from tritonnb import state

        server = state.server
        if server is None or not getattr(server, "private", False):
            return None
        return own_token(self.http_url)

    @property
    def path(self) -> str:
        """The model's HTTP path (of this card's version)."""
        return model_path(self.spec.name, self.version)

    @property
    def infer_url(self) -> str:
        """The HTTP inference endpoint, as the kernel (curl, scripts on this machine) reaches it."""
        return f"{self.http_url}{self.path}/infer"

    @property
    def browser_infer_url(self) -> str | None:
        """The inference endpoint as a browser reaches it (through jupyter-server-proxy or ``--public-url``)."""
        return f"{self.route.http}{self.path}/infer" if self.route.http else None

    def browser_links(self) -> dict[str, str]:
        """What "open in browser" opens: the model's metadata and config, and the server's health (and metrics)."""
        base = self.route.http or self.http_url  # without a route, the kernel's URL opens on this machine only
        links = (
            {}
            if self.access_token
            else {  # a private server refuses them without the header: see PRIVATE_...
                "metadata": f"{base}{self.path}",
                "config": f"{base}/v2/models/{self.spec.name}/config",
            }
        )
        links["health"] = f"{base}/v2/health/ready"
        if self.route.metrics:
            links["metrics"] = self.route.metrics
        return links

    @property
    def curl(self) -> str | None:
        """Copy-pasteable curl command: the infer endpoint, or for a stream ``/generate_stream`` (None when Triton's
        generate extension cannot take the inputs)."""
        return self.curl_command()

    def curl_command(self, files: Mapping[str, str] | None = None) -> str | None:
        """The card's curl: the infer endpoint's (bytes inputs read from ``files``, by input name; default
        ``<input>.bin``), or for a stream ``/generate_stream`` (None when Triton's generate extension cannot take the
        inputs)."""
        token = self.access_token
        if self.spec.stream:
            return generate_curl(self.http_url, self.spec, self.version, token)
        return curl_command(self.http_url, self.spec, self.version, files, token)

    @property
    def generate_curl(self) -> str | None:
        """The short curl for Triton's generate extension (plain JSON), where it can serve the model."""
        return generate_curl(self.http_url, self.spec, self.version, self.access_token)

    @property
    def python(self) -> str:
        """Copy-pasteable tritonclient snippet (a gRPC stream for a streaming model)."""
        if self.spec.stream:
            return grpc_stream_snippet(self.grpc_url, self.spec, self.access_token)
        return python_snippet(self.http_url, self.spec, self.version, self.access_token)

    def _http_endpoint(self) -> str:
        """The HTTP endpoint to show: a stream's is ``generate_stream`` (the infer endpoint returns once)."""
        if self.spec.stream:
            return f"{self.http_url}{self.path}/generate_stream"
        return self.infer_url

    def _snippets(self) -> list[tuple[str, str, str]]:
        """(title, short name, text) of each snippet the card shows; the Python snippet comes last."""
        version = "" if self.version is None else f", version={self.version}"
        in_notebook = f'tritonnb.client("{self.spec.name}"{version})'
        if self.spec.stream:
            shown = [
                ("curl (server-sent events)", "curl", self.curl),
                ("in this notebook", "notebook", f"for outputs in {in_notebook}.stream(...):\n    print(outputs)"),
                ("Python (gRPC stream)", "python", self.python),
            ]
        else:
            files = ", ".join(example_file(s) for s in self.spec.inputs if s.dtype == "bytes")
            curl_title = f"curl (bash; binary tensor data, bytes read from {files})" if files else "curl"
            shown = [
                (curl_title, "curl", self.curl),
                ("curl (generate: plain JSON)", "generate", self.generate_curl),
                ("in this notebook", "notebook", f"{in_notebook}(...)"),
                ("Python (tritonclient)", "python", self.python),
            ]
        return [(title, short, text) for title, short, text in shown if text is not None]

    def _checks(self) -> str:
        timeout = "no timeout" if self.timeout_s is None else f"timeout {self.timeout_s:g} s per call"
        return f"outputs checked against the declared dtypes and dims; {timeout}"

    def _summary(self) -> str:
        version = "" if self.version is None else f" version {self.version}"
        served = f" (serving versions {self.versions})" if "," in self.versions else ""
        return (
            f"{self.result.action} {self.function_name}() as '{self.spec.name}'{version} in "
            f"{self.result.seconds * 1000:.0f} ms{served}"
        )

    def _route_note(self) -> str:
        if self.route.http:
            note = f"browser links go through {self.route.via}"
        else:
            note = self.route.note or "links use the kernel's address: they open in a browser on this machine only"
        return f"{PRIVATE_LINKS_NOTE}; {note}" if self.access_token else note

    def __repr__(self) -> str:
        tensors = (
            "\n".join(f"  in  {t}" for t in self.spec.inputs)
            + "\n"
            + "\n".join(f"  out {t}" for t in self.spec.outputs)
        )
        browser = f"  browser {self.browser_infer_url}  ({self.route.via})\n" if self.route.http else ""
        return (
            f"{self._summary()}\n  HTTP   {self._http_endpoint()}\n{browser}"
            f"  gRPC   {self.grpc_url.removeprefix('grpc://')}\n"
            f"  device {self.device}; batching {self.spec.batching_text()}\n  {self._checks()}\n{tensors}\n\n"
            + "\n\n".join(f"{short}:\n{text}" for _, short, text in self._snippets())
        )

    def _ipython_display_(self) -> None:
        """Show the card (HTML, or text where there is no HTML) and, under it, its live strip if it has one."""
        from IPython.display import display

        display({"text/plain": repr(self), "text/html": self._repr_html_()}, raw=True)
        if self.strip is not None:
            display(self.strip)

    def _repr_html_(self) -> str:
        e = html.escape
        rows = "".join(
            f"<tr><td>{kind}</td><td><code>{e(t.name)}</code></td><td>{e(t.dtype)}</td>"
            f"<td>{e(str(list(t.dims)))}</td></tr>"
            for kind, group in (("input", self.spec.inputs), ("output", self.spec.outputs))
            for t in group
        )
        browser = ""
        if self.browser_infer_url:
            browser = (
                f'browser <code class="tnb-browser-infer" data-url="{e(self.browser_infer_url)}">'
                f"{e(self.browser_infer_url)}</code> &nbsp; "
            )
        links = " · ".join(
            f'<a class="tnb-open" data-kind="{kind}" href="{e(url)}" target="_blank" rel="noopener">{kind}</a>'
            for kind, url in self.browser_links().items()
        )
        return (
            f'<div class="tritonnb-card" style="border:1px solid #76b900;border-radius:6px;padding:8px 12px">'
            f"<b>{e(self._summary())}</b>"
            f"<div>{browser}kernel <code>{e(self._http_endpoint())}</code> &nbsp; gRPC <code>"
            f"{e(self.grpc_url.removeprefix('grpc://'))}</code></div>"
            f'<div>open in browser: {links} &nbsp;<small class="tnb-route">({e(self._route_note())})</small></div>'
            f"<div>device <code>{e(self.device)}</code> &nbsp; batching {e(self.spec.batching_text())}</div>"
            f"<div>{e(self._checks())}</div>"
            f"<table><tr><th></th><th>name</th><th>dtype</th><th>dims</th></tr>{rows}</table>"
            + "".join(
                f"<details><summary>{e(title)}</summary><pre>{e(text)}</pre></details>"
                for title, _, text in self._snippets()
            )
            + "</div>"
        )
