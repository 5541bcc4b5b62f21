"""A callable client for a served model: numpy arrays or torch tensors in, a dict of numpy arrays out."""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np

from tritonnb import state
from tritonnb.errors import InputError
from tritonnb.signature import DTYPES
from tritonnb.torch_bridge import host_array

_DTYPE_BY_TRITON = {triton: name for name, (_, triton) in DTYPES.items()}


class ModelClient:
    """Calls model ``name`` over HTTP; inputs by position (declared order) or by name."""

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.url = url.removeprefix("http://")
        self._local = threading.local()  # one tritonclient per thread (they are not thread-safe)
        self._inputs: list[tuple[str, str]] | None = None
        self._lock = threading.Lock()
        self._generation = 0  # close() starts a new one: older connections are not used again
        self._open: weakref.WeakSet[Any] = weakref.WeakSet()  # every thread's; gone with its thread
        self._busy: set[Any] = set()  # those in a call now
        with state.lock:
            state.clients.add(self)

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        """This thread's tritonclient, held busy for one call; a ``close()`` meanwhile closes it when the call ends."""
        import tritonclient.http as httpclient

        with self._lock:
            client = getattr(self._local, "client", None)
            if client is None or self._local.generation != self._generation:
                client = self._local.client = httpclient.InferenceServerClient(self.url)
                self._local.generation = self._generation
                self._open.add(client)
            self._busy.add(client)
        try:
            yield client
        finally:
            with self._lock:
                self._busy.discard(client)
                stale = self._local.generation != self._generation
            if stale:
                client.close()

    def close(self) -> None:
        """Close the kept-alive connections (tritonserver's stop waits for open ones); one in a call closes when the
        call returns. The next call opens a new one."""
        with self._lock:
            self._generation += 1
            idle = [client for client in self._open if client not in self._busy]
            self._open = weakref.WeakSet()
        for client in idle:
            client.close()

    def input_names(self) -> list[tuple[str, str]]:
        """The model's inputs as (name, Triton datatype), read once from its metadata."""
        if self._inputs is None:
            with self._connection() as client:
                metadata = client.get_model_metadata(self.name)
            self._inputs = [(i["name"], i["datatype"]) for i in metadata["inputs"]]
        return self._inputs

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, np.ndarray]:
        """Run one inference; arrays must carry the batch dim when the model batches."""
        import tritonclient.http as httpclient

        declared = self.input_names()
        if len(args) > len(declared):
            raise InputError(f"model {self.name!r} takes {len(declared)} inputs, got {len(args)}")
        values = dict(zip([n for n, _ in declared], args))
        overlap = set(values) & set(kwargs)
        if overlap:
            raise InputError(f"inputs given twice: {sorted(overlap)}")
        values.update(kwargs)
        unknown = set(values) - {n for n, _ in declared}
        missing = [n for n, _ in declared if n not in values]
        if unknown or missing:
            raise InputError(
                f"model {self.name!r} takes inputs {[n for n, _ in declared]}; "
                f"missing {missing}, unknown {sorted(unknown)}"
            )
        infer_inputs = []
        for name, datatype in declared:
            try:
                array = host_array(values[name], _DTYPE_BY_TRITON[datatype])
            except TypeError as error:
                raise InputError(f"input {name!r} ({datatype}): {error}") from None
            infer_input = httpclient.InferInput(name, list(array.shape), datatype)
            infer_input.set_data_from_numpy(array)
            infer_inputs.append(infer_input)
        with self._connection() as client:
            result = client.infer(self.name, infer_inputs)
        return {output["name"]: result.as_numpy(output["name"]) for output in result.get_response()["outputs"]}
