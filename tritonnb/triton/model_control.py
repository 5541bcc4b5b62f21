"""Triton's model-control API, over gRPC with the server's access token: load, unload, readiness, the index."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from tritonnb.http_get import GRPC_ACCESS_TOKEN_HEADER, answers_ok, token_headers

__all__ = ["GRPC_ACCESS_TOKEN_HEADER", "ModelControl"]


class ModelControl:
    """Loads and unloads models on one tritonserver; ``token`` gives its current access token (new on each start)."""

    def __init__(self, grpc_target: str, http_url: str, token: Callable[[], str]) -> None:
        self.grpc_target = grpc_target  # host:port, as tritonclient takes it
        self.http_url = http_url
        self._token = token

    @contextlib.contextmanager
    def client(self) -> Iterator[Any]:
        """A gRPC client for one exchange, closed afterwards."""
        import tritonclient.grpc as grpcclient

        with contextlib.closing(grpcclient.InferenceServerClient(self.grpc_target)) as client:
            yield client

    def token(self) -> str:
        """The server's current access token (new on each start)."""
        return self._token()

    def headers(self) -> dict[str, str]:
        """The gRPC header carrying the access token that model control requires."""
        return token_headers(self._token(), grpc=True)

    def server_ready(self) -> bool:
        """Whether the gRPC endpoint says the server is ready."""
        from tritonclient.utils import InferenceServerException

        try:
            with self.client() as client:
                return bool(client.is_server_ready(client_timeout=1.0))
        except InferenceServerException:
            return False

    def load_model(self, name: str, config: str | None = None, files: dict[str, bytes] | None = None) -> None:
        """Load (or reload) a model, from ``config`` and ``files`` or else from the repository; returns when ready."""
        with self.client() as client:
            if config is None:
                client.load_model(name, headers=self.headers())
            else:
                client.load_model(name, headers=self.headers(), config=config, files=files)

    def unload_model(self, name: str) -> None:
        """Ask Triton to unload a model."""
        with self.client() as client:
            client.unload_model(name, headers=self.headers())

    def is_model_ready(self, name: str) -> bool:
        """Whether Triton reports the model ready (with the token: a private server may restrict it)."""
        return answers_ok(f"{self.http_url}/v2/models/{name}/ready", token_headers(self._token()))

    def repository_index(self) -> list[dict[str, Any]]:
        """Triton's repository index: one entry per model version, with its state and reason."""
        with self.client() as client:
            index = client.get_model_repository_index(headers=self.headers(), as_json=True)
        return index.get("models", [])
