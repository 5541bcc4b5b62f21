"""FastAPI + uvicorn (one worker, an ``async def`` handler) serving the benchmark MLP on the KServe v2 JSON path.

Started by ``benchmarks.subjects`` as ``python -m benchmarks.servers.fastapi_app CONFIG`` (a JSON object). No
batching: each request runs the model on its own sample, on the event loop.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Request, Response

from benchmarks.workload import load_mlp


def main() -> None:
    """Serve until SIGINT."""
    config = json.loads(sys.argv[1])
    device, name = config["device"], config["model"]
    model = load_mlp(config["weights"], config["dims"], device, config["threads"])
    app = FastAPI()

    @app.get("/v2/health/ready")
    async def ready() -> dict:
        return {}

    @app.post(f"/v2/models/{name}/infer")
    async def infer(request: Request) -> Response:
        spec = json.loads(await request.body())["inputs"][0]
        x = np.asarray(spec["data"], dtype=np.float32).reshape(spec["shape"])
        with torch.inference_mode():
            y = model(torch.from_numpy(x).to(device)).cpu().numpy()
        body = {
            "model_name": name,
            "model_version": "1",
            "outputs": [{"name": "y", "datatype": "FP32", "shape": list(y.shape), "data": y.ravel().tolist()}],
        }
        return Response(json.dumps(body), media_type="application/json")

    uvicorn.run(app, host="127.0.0.1", port=config["port"], workers=1, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
