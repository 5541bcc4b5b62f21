"""Triton python-backend model for a function exported from a notebook with ``tritonnb.export``.

The function, with everything it used in the notebook (closures, helper functions, constants, the weights of its torch
modules), is in ``function.pt`` beside this file; ``source.py`` shows its code. Loading it needs torch, numpy and
cloudpickle, and the Python minor version the notebook ran (``export.json`` says which). tritonnb is not needed.

Modules of the notebook's own (``.py`` files beside it) are inside ``function.pt`` too; the installed packages the
function uses are listed in the repository's ``requirements.txt``. ``function.pt`` is loaded with this model's own
folders off ``sys.path``: the python backend puts them there, and a module of the notebook named ``model`` or
``source`` must never resolve to this file or to ``source.py``.

Requests that Triton batches together run as one call; if that call fails, each request runs again on its own, so a
bad request fails alone.

Under numpy 2, numeric tensors move through DLPack: the python-backend stub of Triton 2.51 (the one nvidia-pytriton
carries) builds its numpy arrays through numpy 1's C API, which numpy 2 changed. Bytes tensors have no DLPack form, so
a model with bytes tensors needs numpy<2. That stub marks a consumed capsule ``used_dlpack`` where the DLPack protocol
says ``used_dltensor``, and numpy's capsule destructor then logged a traceback for every output: ``_tensor`` gives the
capsule the protocol's name itself.
"""

import ctypes
import json
import os
import pathlib
import sys

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

FUNCTION_FILE = "function.pt"
DLPACK = int(np.__version__.split(".")[0]) >= 2
USED_CAPSULE = ctypes.c_char_p(b"used_dltensor")  # kept for good: a capsule keeps the pointer to its name


class TritonPythonModel:
    """Runs the exported function on each batch of requests."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.batched = config["max_batch_size"] > 0
        self.inputs = [spec["name"] for spec in config["input"]]
        strings = [t["name"] for t in config["input"] + config["output"] if t["data_type"] == "TYPE_STRING"]
        if DLPACK and strings:
            raise pb_utils.TritonModelException(
                f"bytes tensors ({', '.join(strings)}) need numpy<2 here (this Python has numpy {np.__version__}): "
                "Triton 2.51's python-backend stub reads and writes them through numpy 1's C API"
            )
        gpu = args["model_instance_kind"] == "GPU"
        self.device = f"cuda:{args['model_instance_device_id']}" if gpu else "cpu"
        if gpu:
            torch.cuda.set_device(self.device)  # so code that says "cuda" means this instance's GPU
        path = pathlib.Path(args["model_repository"]) / args["model_version"] / FUNCTION_FILE
        self.function = _load(path, self.device)

    def execute(self, requests: list) -> list:
        arrays = [{n: _array(pb_utils.get_input_tensor_by_name(r, n)) for n in self.inputs} for r in requests]
        if self.batched and len(requests) > 1:
            try:
                return self._split(self._run(_merged(arrays)), [len(a[self.inputs[0]]) for a in arrays])
            except Exception:  # run each request on its own below, so only the bad one fails
                pass
        return [self._respond(a) for a in arrays]

    def _run(self, arrays: dict) -> dict:
        batch = len(arrays[self.inputs[0]]) if self.batched else None
        return self.function(arrays, batch, self.device)

    def _respond(self, arrays: dict) -> "pb_utils.InferenceResponse":
        try:
            outputs = self._run(arrays)
        except Exception as error:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(error).__name__}: {error}"))
        return pb_utils.InferenceResponse([_tensor(n, v) for n, v in outputs.items()])

    def _split(self, outputs: dict, sizes: list) -> list:
        responses, start = [], 0
        for size in sizes:
            tensors = [_tensor(n, v[start : start + size]) for n, v in outputs.items()]
            responses.append(pb_utils.InferenceResponse(tensors))
            start += size
        return responses


def _load(path: pathlib.Path, device: str) -> object:
    """``function.pt``, unpickled with the model's folder and version folder off ``sys.path``."""
    own = {os.path.realpath(path.parent), os.path.realpath(path.parent.parent)}
    saved = list(sys.path)
    sys.path[:] = [p for p in saved if os.path.realpath(p or ".") not in own]
    try:
        return torch.load(path, map_location=device, weights_only=False)
    finally:
        sys.path[:] = saved


def _merged(arrays: list) -> dict:
    return {name: np.concatenate([a[name] for a in arrays]) for name in arrays[0]}


def _array(tensor: "pb_utils.Tensor") -> np.ndarray:
    """An input as a numpy array (through DLPack under numpy 2)."""
    return np.from_dlpack(tensor) if DLPACK else tensor.as_numpy()


def _tensor(name: str, array: np.ndarray) -> "pb_utils.Tensor":
    """An output tensor (through DLPack under numpy 2)."""
    if DLPACK:
        capsule = np.require(array, requirements="CW").__dlpack__()  # DLPack: no read-only
        tensor = pb_utils.Tensor.from_dlpack(name, capsule)
        ctypes.pythonapi.PyCapsule_SetName(ctypes.py_object(capsule), USED_CAPSULE)  # consumed: the tensor frees it
        return tensor
    return pb_utils.Tensor(name, array)
