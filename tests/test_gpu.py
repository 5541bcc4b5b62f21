"""The GPU lane: CUDA functions served for real. Marked ``gpu``: they run where torch sees a CUDA device
(``scripts/test_gpu.sh``) and are skipped, and counted as skipped, elsewhere.

``TRITONNB_GPU_TEST_DEVICE=cpu`` runs the tests that do not need CUDA itself on the CPU instead, to check the tests.
"""

from __future__ import annotations

import gc
import os
import pathlib
import time

import numpy as np
import pytest
import torch
from helpers import fp32, infer_json

import tritonnb

pytestmark = pytest.mark.gpu
DEVICE = os.environ.get("TRITONNB_GPU_TEST_DEVICE", "cuda:0")
needs_cuda = pytest.mark.skipif(not DEVICE.startswith("cuda"), reason="a CUDA-only behaviour")
NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
MiB = 2**20


def _settled_memory() -> int:
    """CUDA memory held by tensors once nothing runs and garbage is collected."""
    gc.collect()
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated()


def test_a_cuda_function_gets_its_inputs_on_the_device_and_answers_on_the_host(triton):
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3).to(DEVICE).eval()
    seen: list[str] = []

    def classify(x):
        seen.append(str(x.device))
        return net(x)

    card = tritonnb.bind(classify, "classify", inputs=["x:float32[4]"], outputs=["y:float32[3]"], device=DEVICE)
    assert card.device == DEVICE
    x = torch.randn(5, 4)
    served = tritonnb.client("classify")(x)["y"]
    assert isinstance(served, np.ndarray) and served.dtype == np.float32
    with torch.no_grad():
        np.testing.assert_allclose(served, net(x.to(DEVICE)).cpu().numpy(), rtol=1e-5, atol=1e-6)
    assert set(seen) == {str(torch.device(DEVICE))}


def test_a_module_moved_to_the_gpu_by_the_served_function_trains_afterwards(triton):
    """The quickstart's old failure: ``net.to(x.device)`` inside the function made inference tensors of net's
    weights on CUDA, and the notebook's next training step failed."""
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))  # on the CPU

    def moves(x):
        return net.to(x.device)(x)

    tritonnb.bind(moves, "moves", inputs=["x:float32[4]"], outputs=["y:float32[2]"], device=DEVICE)
    tritonnb.client("moves")(np.ones((3, 4), np.float32))
    assert all(p.device == torch.device(DEVICE) and not p.is_inference() for p in net.parameters())
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    loss = net(torch.randn(16, 4, device=DEVICE)).square().mean()
    loss.backward()
    optimizer.step()
    tritonnb.unbind("moves")


def test_the_device_flag_picks_the_gpu_and_refuses_one_that_is_not_there(shell):
    last = f"cuda:{torch.cuda.device_count() - 1}" if DEVICE.startswith("cuda") else "cpu"
    shell.run_cell("import torch")
    shell.run_cell_magic(
        "triton_model",
        f"where --input x:float32[2] --output y:float32[2] --device {last}",
        f"def where(x):\n    assert str(x.device) == str(torch.device({last!r})), x.device\n    return x + 1\n",
    )
    assert tritonnb.client("where")(np.zeros((1, 2), np.float32))["y"].tolist() == [[1, 1]]
    assert tritonnb.server().models["where"].device == last
    missing = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(tritonnb.SpecError, match="does not exist" if DEVICE.startswith("cuda") else "no CUDA"):
        tritonnb.bind(lambda x: x, "nowhere", inputs=["x:float32[2]"], outputs=["y:float32[2]"], device=missing)
    assert tritonnb.client("where")(np.zeros((1, 2), np.float32))["y"].tolist() == [[1, 1]]
    shell.run_line_magic("triton", "unbind where")


@needs_cuda
def test_out_of_memory_fails_that_request_only(triton):
    free, _ = torch.cuda.mem_get_info(torch.device(DEVICE))

    def greedy(x):
        if bool((x > 0).any()):
            torch.empty(free * 4, dtype=torch.uint8, device=x.device)  # more than the GPU has
        return x * 2

    tritonnb.bind(greedy, "greedy", inputs=["x:float32[4]"], outputs=["y:float32[4]"], device=DEVICE)
    tritonnb.bind(lambda x: x + 1, "bystander", inputs=["x:float32[4]"], outputs=["y:float32[4]"], device=DEVICE)
    status, body = infer_json(triton.http_url, "greedy", [fp32("x", [1, 4], [1, 1, 1, 1])])
    assert status >= 400 and "OutOfMemoryError" in body["error"] and "greedy" in body["error"], body
    status, body = infer_json(triton.http_url, "greedy", [fp32("x", [1, 4], [0, 0, 0, 0])])
    assert status == 200 and body["outputs"][0]["data"] == [0, 0, 0, 0]  # the same model serves the next request
    assert tritonnb.client("bystander")(np.zeros((1, 4), np.float32))["y"].tolist() == [[1, 1, 1, 1]]
    assert triton.state == "READY"
    tritonnb.unbind("greedy")
    tritonnb.unbind("bystander")


@needs_cuda
def test_gpu_memory_returns_to_its_baseline_after_rebinds_and_unbind(triton):
    net = torch.nn.Linear(256, 256).to(DEVICE).eval()
    baseline = _settled_memory()
    x = np.ones((8, 256), np.float32)
    for round_ in range(20):
        width = 256 if round_ % 2 else 128  # a swap in place, then a reload with another signature, in turn

        def fn(x, scale=float(round_ + 1)):
            return net(torch.nn.functional.pad(x, (0, 256 - x.shape[1]))) * scale

        tritonnb.bind(fn, "rebound", inputs=[f"x:float32[{width}]"], outputs=["y:float32[256]"], device=DEVICE)
        tritonnb.client("rebound")(x[:, :width])
    after_rebinds = _settled_memory()
    tritonnb.unbind("rebound")
    time.sleep(1)  # the last generation's threads retire
    after_unbind = _settled_memory()
    print(
        f"\nCUDA memory allocated: baseline {baseline / MiB:.2f} MiB, after 20 re-binds "
        f"{after_rebinds / MiB:.2f} MiB, after unbind {after_unbind / MiB:.2f} MiB"
    )
    assert abs(after_rebinds - baseline) <= MiB
    assert abs(after_unbind - baseline) <= MiB


def test_a_stream_from_a_cuda_generator(triton):
    def count(n):
        step = torch.ones(1, device=n.device)
        total = torch.zeros(1, device=n.device)
        for _ in range(int(n.item())):
            total = total + step
            yield total  # a CUDA tensor: sent from the host

    tritonnb.bind(count, "count", inputs=["n:int32[1]"], outputs=["total:float32[1]"], device=DEVICE)
    assert [o["total"].item() for o in tritonnb.client("count").stream(np.array([4], np.int32))] == [1, 2, 3, 4]
    tritonnb.unbind("count")


@needs_cuda
def test_gpu_figures_reach_metrics_and_the_panel(triton):
    tritonnb.bind(lambda x: x * 2, "busy", inputs=["x:float32[4]"], outputs=["y:float32[4]"], device=DEVICE)
    tritonnb.client("busy")(np.ones((2, 4), np.float32))
    gpus = tritonnb.metrics()["gpus"]
    assert len(gpus) >= 1, "neither Triton's GPU metrics nor NVML gave a figure"
    assert {"utilization", "memory_used_bytes", "memory_total_bytes"} <= set(gpus[0]), gpus[0]
    assert 0 < gpus[0]["memory_used_bytes"] <= gpus[0]["memory_total_bytes"]
    panel = tritonnb.panel(interval_s=0.5)
    try:
        deadline = time.monotonic() + 15
        while "GPU 0" not in panel.host.value and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "GPU 0" in panel.host.value and "no GPU" not in panel.host.value, panel.host.value
    finally:
        panel.close()
    tritonnb.unbind("busy")


@needs_cuda
@pytest.mark.timeout(900)
@pytest.mark.parametrize("notebook", [p.name for p in NOTEBOOKS])
def test_notebook_runs_end_to_end_on_cuda(notebook, tmp_path):
    """Each tutorial, top to bottom, in a real kernel on this GPU machine; its models serve on CUDA."""
    import nbformat
    from nbclient import NotebookClient

    path = pathlib.Path(__file__).parent.parent / "notebooks" / notebook
    executed = nbformat.read(path, as_version=4)
    executed.cells.append(nbformat.v4.new_code_cell("import torch\nprint('CUDA', torch.cuda.is_available())"))
    NotebookClient(
        executed, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    nbformat.write(executed, tmp_path / notebook)
    outputs = [o for c in executed.cells for o in c.get("outputs", [])]
    texts = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)
    texts += "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert not [o for o in outputs if o.output_type == "error"]
    assert "CUDA True" in texts
    if "%%triton_model" in "".join(c.source for c in executed.cells):
        assert "cuda" in texts, "a model of this notebook did not serve on CUDA"
