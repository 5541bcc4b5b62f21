"""Existing Triton model repositories (``DIR/<model>/config.pbtxt``, ``DIR/<model>/<version>/...``) served beside
the notebook's models: the folders (or object store URLs: ``s3://``, ``gs://``, ``as://``) are checked before
tritonserver starts; their models are loaded after."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import re
from collections.abc import Callable, Sequence
from typing import Any

from tritonnb.errors import SpecError, TritonnbError
from tritonnb.observe.remote_spec import remote_spec
from tritonnb.signature import ModelSpec, version_list
from tritonnb.states import ModelState
from tritonnb.triton.model_control import ModelControl
from tritonnb.triton.object_store import Store, StorePath, StoreURL, is_store_url

__all__ = [
    "LAYOUT",
    "Location",
    "RepositoryModel",
    "RepositoryModels",
    "failure_text",
    "find_models",
    "index_states",
    "models_in",
    "needs_auto_complete",
    "repository_paths",
    "triton_reason",
]

LAYOUT = "DIR/<model>/config.pbtxt and DIR/<model>/<version>/<model file>"
_COMMENT = re.compile(r"#[^\n]*")
Location = pathlib.Path | StorePath  # a repository folder, or a repository in an object store
_FIELD = {name: re.compile(rf"\b{name}\s*[:\[{{]") for name in ("input", "output", "backend", "platform")}


@dataclasses.dataclass
class RepositoryModel:
    """A model of a served repository, as Triton last reported it."""

    name: str
    repository: Location
    state: ModelState = ModelState.UNAVAILABLE
    version: str = ""  # the versions Triton serves, e.g. "1" or "1,2"
    reason: str = ""  # why it is not ready, from Triton (or tritonnb when it was not loaded)
    spec: ModelSpec | None = None  # as the server reports it once loaded (None: not loaded, or a dtype not handled)

    def as_dict(self) -> dict[str, str]:
        """Plain data for ``Server.status()``."""
        return {"state": self.state, "version": self.version, "repository": str(self.repository), "reason": self.reason}


def repository_paths(value: str | os.PathLike | Sequence[str | os.PathLike] | None) -> tuple[Location, ...]:
    """One repository folder or several (absolute paths), or object store URLs (``StorePath``); SpecError for one
    that is missing or holds no model, for a store that cannot be read (credentials, bucket), or for a model name
    found in two of them (Triton would refuse to load it)."""
    if value is None:
        return ()
    folders = [value] if isinstance(value, (str, os.PathLike)) else list(value)
    paths: list[Location] = []
    for folder in folders:
        path: Location
        if is_store_url(folder):
            path = store_root(str(folder))
        else:
            path = pathlib.Path(os.path.abspath(pathlib.Path(folder).expanduser()))  # links kept: Triton uses the path
            if not path.is_dir():
                raise SpecError(f"model repository {str(folder)!r} is not a folder (expected {LAYOUT})")
        if not models_in(path):
            raise SpecError(f"model repository {str(path)!r} holds no model (expected {LAYOUT})")
        if path not in paths:
            paths.append(path)
    _, left_out = find_models(paths)
    if left_out:
        raise SpecError(next(iter(left_out.values())))
    return tuple(paths)


def store_root(url: str) -> StorePath:
    """A repository in an object store, checked: the URL, the credentials, the bucket (SpecError naming each)."""
    try:
        store = Store(StoreURL.parse(url), SpecError)
    except ValueError as error:
        raise SpecError(f"model repository {url!r}: {error}") from None
    store.check_bucket()
    return StorePath(store)


def refresh(repositories: Sequence[Location]) -> None:
    """Read the listings of the object store repositories again (folders on disk are always read afresh)."""
    for repository in repositories:
        if isinstance(repository, StorePath):
            repository.store.refresh()


def models_in(repository: Location) -> list[str]:
    """The model folders of a repository: subfolders (not hidden) with a ``config.pbtxt`` or a numbered version
    folder, sorted by name; none if the folder is gone."""
    try:
        entries = sorted(repository.iterdir(), key=lambda entry: entry.name)
    except OSError:
        return []
    return [entry.name for entry in entries if not entry.name.startswith(".") and _is_model(entry)]


def _is_model(folder: Location) -> bool:
    if not folder.is_dir():
        return False
    if (folder / "config.pbtxt").is_file():
        return True
    return any(child.is_dir() and child.name.isdigit() for child in folder.iterdir())


def _is_python(folder: Location) -> bool:
    """Whether a model runs on the python backend: its config says so, or a version folder holds a model.py."""
    try:
        config = _COMMENT.sub("", (folder / "config.pbtxt").read_text())
    except OSError:
        config = ""
    return bool(re.search(r'\bbackend\s*:\s*"python"', config)) or any(folder.glob("[0-9]*/model.py"))


def find_models(repositories: Sequence[Location]) -> tuple[dict[str, Location], dict[str, str]]:
    """Every model of the repositories, by name, with its repository; and the models left out, with why: a name
    that Triton would confuse with one found in an earlier repository (names compare case-insensitively), or a
    python backend model in a path with whitespace (its stub cannot start there, and the load would hang)."""
    found: dict[str, Location] = {}
    left_out: dict[str, str] = {}
    for repository in repositories:
        for name in models_in(repository):
            clash = next((n for n in found if n.lower() == name.lower()), None)
            if clash is not None:
                left_out[name] = (
                    f"model {name!r} of {str(repository)!r} clashes with model {clash!r} of {str(found[clash])!r}: "
                    "Triton cannot serve both; rename one, or serve one of the repositories"
                )
            elif _has_whitespace(repository / name) and _is_python(repository / name):
                left_out[name] = (
                    f"model {name!r} of {str(repository)!r} uses the python backend, whose stub cannot start from a "
                    "path with whitespace: move or link the repository to a path without"
                )
            else:
                found[name] = repository
    return found, left_out


def _has_whitespace(folder: Location) -> bool:
    """Whether a folder on disk has whitespace in its path (Triton copies a store's model to a folder of its own)."""
    return isinstance(folder, pathlib.Path) and re.search(r"\s", str(folder)) is not None


def needs_auto_complete(repositories: Sequence[Location]) -> bool:
    """Whether a model's config leaves out what Triton's auto-complete fills in (inputs, outputs, backend), or is
    missing: those models only load with auto-complete on, as in a plain tritonserver."""
    for repository in repositories:
        for name in models_in(repository):
            try:
                text = _COMMENT.sub("", (repository / name / "config.pbtxt").read_text())
            except OSError:
                return True
            has = {field: bool(pattern.search(text)) for field, pattern in _FIELD.items()}
            if not (has["input"] and has["output"] and (has["backend"] or has["platform"])):
                return True
    return False


def triton_reason(message: str) -> str:
    """Triton's message about a model that failed to load, without the import machinery's frames."""
    lines = [line for line in message.strip().rstrip(";").rstrip().splitlines() if "<frozen " not in line]
    return "\n".join(lines).strip()


def index_states(index: Sequence[dict[str, Any]]) -> dict[str, tuple[ModelState, str, str]]:
    """Triton's repository index (one entry per model version) as state, versions and reason per model: READY if
    any version is, the ready versions joined by commas."""
    entries: dict[str, list[dict[str, Any]]] = {}
    for entry in index:
        entries.setdefault(entry["name"], []).append(entry)
    states = {}
    for name, versions in entries.items():
        ready = [str(v.get("version", "")) for v in versions if v.get("state") == "READY"]
        if ready:
            states[name] = (ModelState.READY, version_list(ready), "")
        else:
            last = versions[-1]
            reason = triton_reason(last.get("reason", ""))
            states[name] = (ModelState.from_triton(last.get("state")), str(last.get("version", "")), reason)
    return states


class RepositoryModels:
    """The models of the served repositories, loaded by name through model control, with their states."""

    def __init__(self, repositories: Sequence[Location], control: ModelControl, log: Callable[[str], None]):
        self.repositories = tuple(repositories)
        self.models: dict[str, RepositoryModel] = {}
        self._control = control
        self._log = log

    def load(self, notebook_models: Sequence[str]) -> dict[str, str]:
        """Load the repositories' models, found again in their folders (a model added since is served too), except
        those whose name clashes with one of ``notebook_models``; return those not loaded, with why."""
        from tritonclient.utils import InferenceServerException

        if not self.repositories:
            return {}
        refresh(self.repositories)
        try:
            found, unloaded = find_models(self.repositories)
        except TritonnbError as error:  # an object store that cannot be read now
            self._log(f"[tritonnb] not loaded: {error}")
            return {"": str(error)}
        models: dict[str, RepositoryModel] = {}
        for name, repository in found.items():
            notebook = next((n for n in notebook_models if n.lower() == name.lower()), None)
            if notebook is not None:
                unloaded[name] = (
                    f"model {name!r} of {str(repository)!r} clashes with the notebook's model {notebook!r}: "
                    "rename one of them"
                )
                continue
            models[name] = RepositoryModel(name, repository)
            self._log(f"[tritonnb] loading model {name!r} from the model repository {repository}")
            try:
                self._control.load_model(name)
            except InferenceServerException as error:
                unloaded[name] = f"model {name!r} of {str(repository)!r}: {triton_reason(error.message())}"
        self.models = models
        self.refresh()
        for name, model in models.items():
            if model.state == ModelState.READY:
                with contextlib.suppress(TritonnbError):  # a dtype tritonnb does not handle: shown without spec
                    model.spec = remote_spec(self._control.http_url, name, self._control.token())
        for why in unloaded.values():
            self._log(f"[tritonnb] not loaded: {why}")
        return unloaded

    def refresh(self) -> None:
        """The models' states, versions and reasons, from Triton's repository index."""
        if not self.models:
            return
        try:
            states = index_states(self._control.repository_index())
        except Exception:  # tritonserver went away meanwhile: say so
            states = {}
        for name, model in self.models.items():
            model.state, model.version, model.reason = states.get(
                name, (ModelState.UNAVAILABLE, model.version, model.reason)
            )

    def mark_unavailable(self) -> None:
        """Every model UNAVAILABLE (the server is not running)."""
        for model in self.models.values():
            model.state = ModelState.UNAVAILABLE

    def clashing_with(self, name: str) -> RepositoryModel | None:
        """The repository model Triton would confuse with ``name`` (names are case-insensitive), if any."""
        return next((m for m in self.models.values() if m.name.lower() == name.lower()), None)


def failure_text(unloaded: dict[str, str]) -> str:
    """Why models of the repositories were not loaded, one line each."""
    lines = [f"- {why}" for why in unloaded.values()]
    return "\n".join(["these models of the model repositories were not loaded:", *lines])
