"""Raw PyTriton serving the benchmark MLP: ``@batch``, ``max_batch_size=64``, dynamic batching without delay.

Started by ``benchmarks.subjects`` as ``python -m benchmarks.servers.raw_pytriton CONFIG`` (a JSON object); under
numpy 2 with the Python of a numpy 1 environment (see ``subjects.pytriton_python``). Writes the access token to
``token_file`` once the model serves; with ``timer_file``, adds each call of the function to that ``CallTimer``.
Stops on SIGINT.

PyTriton itself is used as it comes, with one correction for that numpy 1 environment: its package then lies outside
the environment's own site-packages, which PyTriton takes for an editable install (it would look for tritonserver's
libraries in a folder only a source checkout has); ``regular_install_layout`` points it at the wheel's library folder.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

import numpy as np
import torch
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig
from pytriton.utils import distribution

from benchmarks.workload import CallTimer, load_mlp


def regular_install_layout() -> None:
    """Where PyTriton guesses an editable install but has no source checkout's library folder, it is a regular
    install seen from another environment: make ``get_libs_path`` return the wheel's ``nvidia_pytriton.libs``."""
    checkout_libs = distribution.get_root_module_path() / "tritonserver" / "external_libs"
    if distribution.is_editable_install() and not checkout_libs.is_dir():
        distribution.is_editable_install = lambda: False


def main() -> None:
    """Serve until SIGINT."""
    config = json.loads(sys.argv[1])
    device, features = config["device"], config["dims"][0]
    model = load_mlp(config["weights"], config["dims"], device, config["threads"])
    timer = CallTimer(pathlib.Path(config["timer_file"])) if config.get("timer_file") else None
    sync = timer is not None and device.startswith("cuda")

    @batch
    def infer(x: np.ndarray) -> dict[str, np.ndarray]:
        began = time.perf_counter_ns()
        with torch.inference_mode():
            y = model(torch.from_numpy(x).to(device)).cpu().numpy()
        if timer is not None:
            if sync:
                torch.cuda.synchronize(device)
            timer.add(time.perf_counter_ns() - began)
        return {"y": y}

    regular_install_layout()
    triton_config = TritonConfig(
        http_address="127.0.0.1",
        http_port=config["http_port"],
        grpc_address="127.0.0.1",
        grpc_port=config["grpc_port"],
        metrics_address="127.0.0.1",
        metrics_port=config["metrics_port"],
        exit_timeout_secs=2,
        log_file=config["log_file"],
    )
    with Triton(config=triton_config) as triton:
        triton.bind(
            model_name=config["model"],
            infer_func=infer,
            inputs=[Tensor(name="x", dtype=np.float32, shape=(features,))],
            outputs=[Tensor(name="y", dtype=np.float32, shape=(features,))],
            config=ModelConfig(
                max_batch_size=64, batching=True, batcher=DynamicBatcher(max_queue_delay_microseconds=0)
            ),
        )
        pathlib.Path(config["token_file"]).write_text(triton.get_access_token())
        triton.serve()


if __name__ == "__main__":
    main()
