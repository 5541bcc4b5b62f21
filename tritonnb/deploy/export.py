"""Export a served model to a Triton model repository, with what runs it on docker compose and Kubernetes.

``DIR/NAME/config.pbtxt`` and ``DIR/NAME/<version>/`` are Triton's own repository format:
``tritonserver --model-repository DIR`` loads them as they are. Around them: ``docker-compose.yml``, a
``Dockerfile``, ``serve_here.sh``, a ``README.md`` and ``kubernetes-*.yaml``. They are files, not folders: tritonserver
takes every folder of a repository for a model and will not start if one fails to load.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import pathlib
import re
import time
from typing import TYPE_CHECKING, Any

from tritonnb.deploy.compose import ExportedModel, Runtime, template
from tritonnb.errors import ExportError, NoServerError, SpecError, UnknownModelError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tritonnb.deploy.capture import Capture, PortableFunction
    from tritonnb.serving.binding import ModelSlot, ServedVersion
    from tritonnb.signature import ModelSpec

__all__ = ["BACKENDS", "FORMATS", "ExportResult", "export"]

BACKENDS = {"python": "python", "torchscript": "pytorch"}  # export format -> the Triton backend that serves it
FORMATS = tuple(BACKENDS)


@dataclasses.dataclass
class ExportResult:
    """What an export wrote."""

    name: str
    version: int  # the newest written
    model_format: str
    directory: pathlib.Path
    files: list[pathlib.Path]
    notes: list[str]
    versions: list[int] = dataclasses.field(default_factory=list)  # every version written

    @property
    def version_dir(self) -> pathlib.Path:
        """``DIR/NAME/<version>`` (of the newest version written)."""
        return self.directory / self.name / str(self.version)

    def __repr__(self) -> str:
        several = len(self.versions) > 1
        which = f"versions {', '.join(map(str, self.versions))}" if several else f"version {self.version}"
        lines = [f"exported {self.name!r} {which} ({self.model_format}) to {self.directory}"]
        lines += [f"  {path.relative_to(self.directory)}" for path in self.files]
        lines += [f"note: {note}" for note in self.notes]
        lines.append(f"serve it: tritonserver --model-repository={self.directory}  (more in README.md)")
        return "\n".join(lines)


def export(
    name: str,
    directory: str | pathlib.Path,
    *,
    version: int | None = None,
    model_format: str = "python",
    force: bool = False,
) -> ExportResult:
    """Write the served model ``name`` as version ``version`` (default: the next one) of ``DIR/name``; a model served
    as several versions side by side is written as those versions (``version``: that one alone).

    ``model_format``: ``python`` (a python-backend model with the function and all it uses) or ``torchscript`` (the
    function traced for Triton's PyTorch backend, no Python needed). An existing version is replaced only with
    ``force``, and only if the versions that stay take the same inputs, outputs and batching (one config serves them
    all); the config's version policy serves every version of the folder side by side. Everything is written to a
    staging folder first: on any error nothing is left half-written.
    """
    from tritonnb.deploy import layout
    from tritonnb.deploy.capture import PortableFunction
    from tritonnb.deploy.model_config import can_warm_up, config_text, model_config
    from tritonnb.serving import server as session
    from tritonnb.serving.served_function import calls_by_keyword

    if model_format not in FORMATS:
        raise SpecError(f"unknown export format {model_format!r}; use one of {', '.join(FORMATS)}")
    server = session.server()
    if server is None:
        raise NoServerError(f"no Triton server runs, so no model {name!r} to export; serve it first")
    slot = server.models.get(name)
    if slot is None or not slot.versions:
        raise UnknownModelError.among(name, [n for n, s in server.models.items() if s.versions])
    if slot.spec.stream:
        raise ExportError(
            f"model {name!r} streams, and export writes models that answer once: a streaming (decoupled) model is "
            "not exported yet"
        )
    repository = layout.repository_at(directory)
    repository.check_writable()
    backend = BACKENDS[model_format]
    repository.check_backend(name, backend)
    chosen = _versions_to_write(slot, repository, version, force)

    spec = slot.spec
    runtime = Runtime.here()
    notes: list[str] = []
    warm_up = can_warm_up(spec)
    if not warm_up:
        notes.append("no model_warmup: a bytes input cannot be generated (add one with input_data_file)")
    version_files: dict[int, dict[str, bytes]] = {}
    for number, served in chosen.items():
        function = PortableFunction(served.fn, spec.inputs, spec.outputs, calls_by_keyword(served.fn, spec.inputs))
        version_files[number] = _model_files(function, spec, served.device, model_format, runtime, notes)
        failure = _fails_on_warmup_sample(function, spec, served.device) if warm_up else None
        if failure:  # Triton fails the model's load when its warm-up fails: better none than a fleet that won't start
            warm_up = False
            notes.append(f"no model_warmup: version {number} fails on Triton's zero sample ({failure})")
    gpu = any(served.device.startswith("cuda") for served in chosen.values())
    side_by_side = sorted({*repository.versions(name), *chosen})
    config = model_config(spec, backend, "cuda" if gpu else "cpu", warm_up, side_by_side)
    repository.check_signature(name, config, replaced=chosen)
    strings = any(s.dtype == "bytes" for s in (*spec.inputs, *spec.outputs))
    models = repository.models_after(ExportedModel(name, backend, gpu, strings))
    if strings and backend == "python" and runtime.numpy_requirement(models) == "numpy<2":
        notes.append(
            f"bytes tensors: the image's Python gets numpy<2 (this notebook has {runtime.numpy}): Triton 2.51's "
            "python-backend stub reads and writes bytes through numpy 1's C API; serve_here.sh needs numpy<2 too"
        )
    requirements = _repository_requirements(repository, models, name, list(version_files.values()), notes)
    around = _fleet_files(repository.name, models, runtime, requirements)
    written = repository.write(name, version_files, config_text(config), around, notes)
    numbers = sorted(version_files)
    return ExportResult(name, numbers[-1], model_format, repository.path, written, notes, numbers)


def _versions_to_write(slot: ModelSlot, repository: Any, version: int | None, force: bool) -> dict[int, ServedVersion]:
    """The served versions to write, by the version number each gets: a model served as one version gets
    ``version`` or the repository's next; one served as several keeps their numbers (``version``: that one)."""
    if len(slot.versions) == 1:
        return {repository.version_to_write(slot.name, version, force): next(iter(slot.versions.values()))}
    slot.require_version(version)
    numbers = sorted(slot.versions) if version is None else [version]
    existing = [n for n in numbers if n in repository.versions(slot.name)]
    if existing and not force:
        raise ExportError(
            f"version(s) {', '.join(map(str, existing))} of {slot.name!r} exist in {repository.path}; force=True "
            "(--force) replaces them"
        )
    return {number: slot.versions[number] for number in numbers}


def _model_files(
    function: PortableFunction,
    spec: ModelSpec,
    device: str,
    model_format: str,
    runtime: Runtime,
    notes: list[str] | None = None,
) -> dict[str, bytes]:
    """The version folder's files, all built in memory (an error here leaves the disk untouched); what the user
    should know about them goes to ``notes``."""
    metadata: dict[str, Any] = {
        "exported_by": "tritonnb",
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "format": model_format,
        "function": getattr(function.fn, "__qualname__", repr(function.fn)),
        "device": device,
        "python": runtime.python,
    }
    if model_format == "torchscript":
        from tritonnb.deploy.torchscript import MODEL_FILE, traced_model

        files = {MODEL_FILE: traced_model(function.fn, function.by_keyword, spec, device)}
    else:
        from tritonnb.deploy.capture import FUNCTION_FILE, capture

        captured = capture(function)
        metadata.update(torch=runtime.torch, cloudpickle=runtime.cloudpickle)
        metadata.update(carried_modules=list(captured.carried), requirements=list(captured.requirements))
        _capture_notes(captured, notes if notes is not None else [])
        files = {
            FUNCTION_FILE: captured.data,
            "model.py": template("model.py").encode(),
            "source.py": _source_of(function.fn).encode(),
        }
    files["export.json"] = (json.dumps(metadata, indent=2) + "\n").encode()
    return files


def _capture_notes(captured: Capture, notes: list[str]) -> None:
    """What the user should know about the modules and packages a python-format export carries or needs."""
    if captured.carried:
        notes.append(
            f"modules beside the notebook carried inside function.pt: {', '.join(captured.carried)} "
            "(re-export after changing them)"
        )
    if captured.requirements:
        notes.append(f"installed packages it uses, in requirements.txt: {', '.join(captured.requirements)}")
    if captured.unresolved:
        notes.append(
            f"modules it uses that no installed distribution claims: {', '.join(captured.unresolved)}; the image "
            "must provide them (add them to requirements.txt or the Dockerfile)"
        )


def _repository_requirements(
    repository: Any, models: list[ExportedModel], name: str, exported: Sequence[dict[str, bytes]], notes: list[str]
) -> list[str]:
    """requirements.txt's pins: this export's (of each version it writes), and those of the newest version of each
    other python model of the repository (from its export.json); a package pinned at two versions keeps this
    export's, with a note."""
    pins = {key: pin for files in exported for key, pin in _pins_of(files.get("export.json")).items()}
    path = getattr(repository, "path", None)
    for model in models:
        if model.name == name or model.backend != "python" or path is None:
            continue
        versions = sorted(
            (p for p in (path / model.name).glob("*/export.json") if p.parent.name.isdigit()),
            key=lambda p: int(p.parent.name),
        )
        for key, pin in _pins_of(versions[-1].read_bytes() if versions else None).items():
            if key in pins and pins[key] != pin:
                notes.append(f"requirements.txt: {pins[key]} kept; model {model.name!r} was exported with {pin}")
            pins.setdefault(key, pin)
    return sorted(pins.values(), key=str.lower)


def _pins_of(export_json: bytes | None) -> dict[str, str]:
    """Distribution (lower case) -> its ``name==version`` line, from an export.json's requirements."""
    try:
        requirements = json.loads(export_json or b"{}").get("requirements", [])
    except (ValueError, AttributeError):
        return {}
    return {re.sub(r"[-_.]+", "-", str(line).split("==")[0]).lower(): str(line) for line in requirements}


def _fails_on_warmup_sample(function: PortableFunction, spec: ModelSpec, device: str) -> str | None:
    """Why the function fails on the zero warm-up sample Triton would send, or None if it runs."""
    from tritonnb.deploy.model_config import warmup_sample

    try:
        function(warmup_sample(spec), 1 if spec.batched else None, device)
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return None


def _source_of(fn: Any) -> str:
    """The function's source, for reading (what runs is in function.pt)."""
    header = "# The exported function's source, for reading: what runs is function.pt (see model.py).\n\n"
    try:
        return header + inspect.getsource(fn)
    except (OSError, TypeError):
        return header + f"# the source of {getattr(fn, '__qualname__', fn)!r} is not available\n"


def _fleet_files(
    repository: str, models: list[ExportedModel], runtime: Runtime, requirements: Sequence[str] = ()
) -> dict[str, str]:
    """Everything around the models: compose, Dockerfile, local script, README, Kubernetes manifests, and for
    python-format models the pinned packages they use (requirements.txt, which the Dockerfile installs)."""
    from tritonnb.deploy import compose, kubernetes

    k8s = kubernetes.manifests(repository, models)
    python = any(m.backend == "python" for m in models)
    return {
        **({compose.REQUIREMENTS_FILE: compose.requirements_file(requirements)} if python else {}),
        "docker-compose.yml": compose.compose_file(repository, models),
        "Dockerfile": compose.dockerfile(models, runtime),
        ".dockerignore": "kubernetes-*.yaml\n*.new\n.tritonnb-*\n.ipynb_checkpoints\n",
        "serve_here.sh": compose.serve_here(),
        "README.md": compose.readme(repository, models),
        **k8s,
    }
