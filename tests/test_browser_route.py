"""Where a browser reaches the server: --public-url, $TRITONNB_PUBLIC_URL, and a real Jupyter server's proxy."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from helpers import free_ports, port_ports, process_tree, wait_gone
from IPython.core.error import UsageError

import tritonnb
from tritonnb.triton.browser_route import (
    PUBLIC_URL_ENV,
    RouteProbe,
    browser_route,
    given_public_url,
    jupyter_server_of_this_kernel,
)


@pytest.fixture
def clean_environment(monkeypatch):
    """No route from the surroundings: the tests set what they mean (a CI runner may run under JupyterHub)."""
    for name in (PUBLIC_URL_ENV, "JUPYTERHUB_SERVICE_PREFIX", "JPY_PARENT_PID"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_a_public_url_is_the_http_endpoint_and_a_port_template_covers_every_port(clean_environment):
    forwarded = browser_route(8000, 8002, given_public_url("http://localhost:18000/"))
    assert (forwarded.http, forwarded.metrics, forwarded.via) == ("http://localhost:18000", None, "--public-url")
    assert forwarded.infer_url("m") == "http://localhost:18000/v2/models/m/infer"
    proxied = browser_route(8000, 8002, given_public_url("https://gpu-box.example/proxy/{port}"))
    assert proxied.http == "https://gpu-box.example/proxy/8000"
    assert proxied.metrics == "https://gpu-box.example/proxy/8002/metrics"


def test_the_argument_beats_the_environment_variable_which_beats_the_hub_prefix(clean_environment):
    clean_environment.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/bob/")
    hub = browser_route(8000, 8002)
    assert (hub.http, hub.metrics) == ("/user/bob/proxy/8000", "/user/bob/proxy/8002/metrics")
    assert hub.via == "jupyter-server-proxy under /user/bob/"
    clean_environment.setenv(PUBLIC_URL_ENV, "http://gpu-box:9000")
    from_environment = browser_route(8000, 8002, given_public_url())
    assert (from_environment.http, from_environment.via) == ("http://gpu-box:9000", f"${PUBLIC_URL_ENV}")
    assert browser_route(8000, 8002, given_public_url("http://other:1")).http == "http://other:1"


def test_without_jupyter_or_a_url_there_is_no_browser_route(clean_environment):
    route = browser_route(8000, 8002)
    assert (route.http, route.metrics, route.note) == (None, None, "")


@pytest.mark.parametrize(
    "url",
    [
        "localhost:18000",
        "ftp://box/",
        "http://box/?a=1",
        "http://box/#top",
        "http://box/{host}",
        "no/leading/slash",
        "http://box:99999",
        "http://box:abc",
        "http://b ox/",
        "//elsewhere.example/",
    ],
)
def test_a_url_no_browser_could_use_is_refused_with_its_source_named(clean_environment, url):
    with pytest.raises(tritonnb.SpecError, match="--public-url"):
        given_public_url(url)
    clean_environment.setenv(PUBLIC_URL_ENV, url)
    with pytest.raises(tritonnb.SpecError, match=PUBLIC_URL_ENV):
        tritonnb.start(**port_ports(free_ports()))  # refused before anything starts
    assert tritonnb.server() is None


def test_the_card_status_and_start_message_show_the_browser_url_beside_the_kernel_url(clean_environment):
    from IPython.core.interactiveshell import InteractiveShell

    http, grpc, metrics = free_ports()
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "tritonnb")
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            shell.run_line_magic(
                "triton",
                f"start --http-port {http} --grpc-port {grpc} --metrics-port {metrics} "
                "--public-url https://gpu-box.example/u/{{port}}",  # doubled: IPython expands {x} in magic lines
            )
        assert f"from the browser: https://gpu-box.example/u/{http} (through --public-url)" in printed.getvalue()
        card = tritonnb.bind(lambda x: x + 1, "inc", inputs=["x:float32[2]"], outputs=["y:float32[2]"])
        assert card.infer_url == f"http://127.0.0.1:{http}/v2/models/inc/infer"  # curl and scripts in the kernel
        assert card.browser_infer_url == f"https://gpu-box.example/u/{http}/v2/models/inc/infer"
        page = card._repr_html_()
        assert f'href="https://gpu-box.example/u/{http}/v2/models/inc/config"' in page
        assert f'href="https://gpu-box.example/u/{metrics}/metrics"' in page
        assert f"kernel <code>{card.infer_url}</code>" in page
        assert f"browser {card.browser_infer_url}" in repr(card)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            shell.run_line_magic("triton", "status")
        assert f"browser  https://gpu-box.example/u/{http} (--public-url)" in printed.getvalue()
        shell.run_line_magic("triton", "stop")
        with pytest.raises(UsageError, match="--public-url 'gpu-box:8000' is not a browser URL"):
            shell.run_line_magic("triton", "start --public-url gpu-box:8000")
        assert tritonnb.server() is None
    finally:
        shell.run_line_magic("unload_ext", "tritonnb")


def test_a_card_without_any_route_links_the_kernel_address_and_says_so(clean_environment, triton):
    card = tritonnb.bind(lambda x: x, "same", inputs=["x:float32[2]"], outputs=["y:float32[2]"])
    assert card.browser_infer_url is None
    assert f'href="{triton.http_url}/v2/models/same"' in card._repr_html_()
    assert "open in a browser on this machine only" in card._repr_html_()


@contextlib.contextmanager
def _jupyter_server(tmp_path, base_url: str, proxy: bool):
    """A real Jupyter Server (with or without jupyter-server-proxy) that writes its runtime file to ``tmp_path``."""
    port = free_ports(1)[0]
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"), JUPYTER_CONFIG_DIR=str(tmp_path / "config"))
    command = [
        sys.executable,
        "-m",
        "jupyter_server",
        "--no-browser",
        "--allow-root",
        f"--port={port}",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.base_url={base_url}",
        "--IdentityProvider.token=route-test",
        f"--ServerApp.root_dir={tmp_path}",
    ]
    (tmp_path / "config").mkdir()
    extensions = {"ServerApp": {"jpserver_extensions": {"jupyter_server_proxy": proxy}}}
    (tmp_path / "config" / "jupyter_server_config.json").write_text(json.dumps(extensions))
    with open(tmp_path / "server.log", "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        processes = []
        try:
            deadline = time.monotonic() + 60
            while not list((tmp_path / "rt").glob(f"jpserver-{server.pid}.json")):
                assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
                time.sleep(0.2)
            while True:  # the runtime file can come a moment before the server listens, on a loaded machine
                try:
                    status = f"http://127.0.0.1:{port}{base_url}api/status?token=route-test"
                    urllib.request.urlopen(status, timeout=10).close()
                    break
                except urllib.error.URLError:
                    assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
                    time.sleep(0.2)
            processes = process_tree(server.pid)
            yield server, env["JUPYTER_RUNTIME_DIR"]
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    assert wait_gone(processes) == []


@pytest.mark.parametrize("proxy", [True, False], ids=["with-proxy", "without-proxy"])
def test_the_kernels_own_jupyter_server_is_found_and_its_proxy_checked(clean_environment, tmp_path, proxy):
    with _jupyter_server(tmp_path, "/user/carol/", proxy) as (server, runtime_dir):
        clean_environment.setenv("JUPYTER_RUNTIME_DIR", runtime_dir)
        clean_environment.setenv("JPY_PARENT_PID", str(server.pid))  # what jupyter_client gives the kernels it starts
        route = browser_route(8000, 8002)
        assert RouteProbe(8000, 8002).result() == route  # the same, with the proxy's check on a thread of its own
        # found without importing the Jupyter server (1.5 s of a kernel's first start), as in a fresh kernel
        script = (
            "import sys; from tritonnb.triton.browser_route import jupyter_server_of_this_kernel as find; "
            "print(find()['pid'], 'jupyter_server.serverapp' in sys.modules)"
        )
        found = subprocess.check_output([sys.executable, "-c", script], text=True)
        assert found.split() == [str(server.pid), "False"]
    if proxy:
        assert (route.http, route.via) == ("/user/carol/proxy/8000", "jupyter-server-proxy under /user/carol/")
    else:
        assert route.http is None
        assert "has no jupyter-server-proxy" in route.note


def test_a_runtime_file_left_by_a_server_that_died_is_not_this_kernels_server(clean_environment, tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    info = {"pid": gone.pid, "url": "http://127.0.0.1:1/", "base_url": "/", "token": ""}
    (tmp_path / f"jpserver-{gone.pid}.json").write_text(json.dumps(info))
    (tmp_path / "jpserver-broken.json").write_text("{")  # being written: skipped
    clean_environment.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path))
    clean_environment.setenv("JPY_PARENT_PID", str(gone.pid))
    assert jupyter_server_of_this_kernel() is None
    assert RouteProbe(8000, 8002).result() == browser_route(8000, 8002)


def test_a_given_url_needs_no_probe(clean_environment):
    probe = RouteProbe(8000, 8002, given_public_url("https://gpu-box.example/proxy/{port}"))
    assert probe.result().http == "https://gpu-box.example/proxy/8000"
