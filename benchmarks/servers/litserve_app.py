"""LitServe serving the benchmark MLP on the KServe v2 JSON path: batches of up to 64 requests, 1 ms batch timeout.

Started by ``benchmarks.subjects`` as ``python -m benchmarks.servers.litserve_app CONFIG`` (a JSON object). LitServe
runs one API server process and one inference worker on the device (``accelerator`` cpu or cuda); health at
``/health``. Needs ``pip install litserve`` (not a dependency of the project).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import litserve as ls
import numpy as np
import torch

from benchmarks.workload import load_mlp


class MLP(ls.LitAPI):
    """Decodes one sample per request, stacks a batch, runs the MLP, and answers each request with its row."""

    def __init__(self, config: dict) -> None:
        super().__init__(
            max_batch_size=config["batch"],
            batch_timeout=config["batch_timeout_s"],
            api_path=f"/v2/models/{config['model']}/infer",
        )
        self.config = config

    def setup(self, device: str) -> None:
        config = self.config
        self.device = device
        self.model = load_mlp(config["weights"], config["dims"], device, config["threads"])

    def decode_request(self, request: dict) -> np.ndarray:
        spec = request["inputs"][0]
        return np.asarray(spec["data"], dtype=np.float32).reshape(spec["shape"])

    def batch(self, inputs: list[np.ndarray]) -> Any:
        return torch.from_numpy(np.concatenate(inputs)).to(self.device)

    def predict(self, x: Any) -> np.ndarray:
        with torch.inference_mode():
            return self.model(x).cpu().numpy()

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return [row[None] for row in output]

    def encode_response(self, output: np.ndarray) -> dict:
        return {
            "model_name": self.config["model"],
            "model_version": "1",
            "outputs": [
                {"name": "y", "datatype": "FP32", "shape": list(output.shape), "data": output.ravel().tolist()}
            ],
        }


def main() -> None:
    """Serve until SIGINT."""
    config = json.loads(sys.argv[1])
    accelerator = "cuda" if config["device"].startswith("cuda") else "cpu"
    server = ls.LitServer(MLP(config), accelerator=accelerator, devices=1, workers_per_device=1, timeout=30)
    server.run(
        host="127.0.0.1", port=config["port"], num_api_servers=1, log_level="warning", generate_client_file=False
    )


if __name__ == "__main__":
    main()
