"""The repository folder on disk (or in an object store): its models and versions, and writing one export all at once
or not at all."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Collection

from tritonnb.deploy.compose import ExportedModel
from tritonnb.deploy.model_config import TYPE_NAMES, parse_config, pb
from tritonnb.errors import ExportError, SpecError
from tritonnb.triton.object_store import Store, StorePath, StoreURL, is_store_url

__all__ = ["GENERATED", "Repository", "StoreRepository", "repository_at"]

GENERATED = ".tritonnb-generated.json"  # digests of the files around the models as last written


class Repository:
    """A Triton model repository folder (it need not exist yet)."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path.expanduser().resolve()

    @property
    def name(self) -> str:
        """The folder's name, used for the image and Kubernetes objects."""
        return self.path.name

    def check_writable(self) -> None:
        """ExportError unless the folder (or the nearest existing parent that would hold it) can be written."""
        existing = self.path
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise ExportError(f"cannot export to {self.path}: {existing} is not a directory")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ExportError(f"cannot export to {self.path}: {existing} is not writable")

    def versions(self, name: str) -> list[int]:
        """The version folders of model ``name``, in order."""
        folder = self.path / name
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())

    def config(self, name: str) -> pb.ModelConfig | None:
        """Model ``name``'s config as written, or None if it has none."""
        path = self.path / name / "config.pbtxt"
        return parse_config(path.read_text()) if path.is_file() else None

    def check_backend(self, name: str, backend: str) -> None:
        """ExportError when ``DIR/name`` already holds a model of another backend (one config serves all versions)."""
        config = self.config(name)
        if config is not None and config.backend != backend:
            raise ExportError(
                f"{self.path / name} holds a {config.backend} model and one config.pbtxt serves all its versions; "
                f"export this {backend} one under another name or to another folder"
            )

    def check_signature(self, name: str, config: pb.ModelConfig, replaced: Collection[int]) -> None:
        """ExportError when versions of ``name`` that stay (all but ``replaced``) were written with other inputs,
        outputs or batching than ``config``: one config.pbtxt serves every version, so theirs would change too."""
        existing = self.config(name)
        staying = [v for v in self.versions(name) if v not in replaced]
        if existing is None or not staying or _signature(existing) == _signature(config):
            return
        raise ExportError(
            f"versions {', '.join(map(str, staying))} of {name!r} in {self.path} take {_signature_text(existing)}; "
            f"this export takes {_signature_text(config)}. One config.pbtxt serves every version of a model: export "
            "it under another name or to another folder, or replace those versions too"
        )

    def version_to_write(self, name: str, version: int | None, force: bool) -> int:
        """The version number to write: ``version``, or the next one; ExportError if it exists and not ``force``."""
        versions = self.versions(name)
        if version is None:
            return (versions[-1] + 1) if versions else 1
        if version < 1:
            raise SpecError(f"versions are numbered from 1, got {version}")
        if version in versions and not force:
            raise ExportError(
                f"version {version} of {name!r} exists in {self.path}; force=True (--force) replaces it, "
                f"or leave the version out to add version {versions[-1] + 1}"
            )
        return version

    def models_after(self, exported: ExportedModel) -> list[ExportedModel]:
        """Every model of the repository once ``exported`` is written, by name."""
        models = {exported.name: exported}
        for config_path in sorted(self.path.glob("*/config.pbtxt")):
            name = config_path.parent.name
            if name not in models:
                config = parse_config(config_path.read_text())
                gpu = any(g.kind == g.KIND_GPU for g in config.instance_group)
                strings = any(t.data_type == TYPE_NAMES["bytes"] for t in (*config.input, *config.output))
                models[name] = ExportedModel(name, config.backend, gpu, strings)
        return sorted(models.values(), key=lambda m: m.name)

    def write(
        self,
        name: str,
        versions: dict[int, dict[str, bytes]],
        config: str,
        around: dict[str, str],
        notes: list[str],
    ) -> list[pathlib.Path]:
        """Write the version folders (their files by version number), the model's config and the files around the
        models; return what was written.

        Everything is written to a staging folder first and moved into place with renames; an error (or an
        interrupt) undoes the moves, so the repository is left as it was. The staging folder sits beside the
        repository, not in it: tritonserver would take a folder in it for a model. A file around the models that
        the user changed since the last export is kept, and the new one is written beside it as ``<file>.new``.
        """
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            staging = self._staging_folder()
        except OSError as error:
            raise ExportError(f"cannot export to {self.path}: {error}") from None
        model_dir = self.path / name
        undo: list[tuple[pathlib.Path, pathlib.Path | None]] = []  # (moved here, from there or None if new)
        try:
            for version, files in versions.items():
                _write_tree(staging / "versions" / str(version), files)
            (staging / "config.pbtxt").write_text(config)
            around_targets = self._around_targets(around, notes)
            _write_tree(staging / "around", {rel: text.encode() for rel, text in around.items()})
            if not model_dir.exists():
                model_dir.mkdir()
                undo.append((model_dir, None))
            for source, destination in [
                *((staging / "versions" / str(version), model_dir / str(version)) for version in versions),
                (staging / "config.pbtxt", model_dir / "config.pbtxt"),
                *((staging / "around" / rel, self.path / dest) for rel, dest in around_targets.items()),
            ]:
                destination.parent.mkdir(parents=True, exist_ok=True)
                if destination.exists():
                    kept = staging / "replaced" / str(len(undo))
                    kept.parent.mkdir(exist_ok=True)
                    destination.rename(kept)
                    undo.append((destination, kept))
                else:
                    undo.append((destination, None))
                source.rename(destination)
            (self.path / "serve_here.sh").chmod(0o755)
            digests = self._digests()
            digests.update({rel: _digest(text.encode()) for rel, text in around.items()})  # as generated
            (self.path / GENERATED).write_text(json.dumps(digests, indent=2, sort_keys=True) + "\n")
        except BaseException as error:
            for moved, previous in reversed(undo):
                _remove(moved)
                if previous is not None:
                    previous.rename(moved)
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(error, OSError):
                raise ExportError(f"cannot export {name!r} to {self.path}: {error}") from None
            raise
        shutil.rmtree(staging, ignore_errors=True)
        return (
            [model_dir / str(version) / rel for version, files in sorted(versions.items()) for rel in sorted(files)]
            + [model_dir / "config.pbtxt"]
            + [self.path / dest for dest in around_targets.values()]
        )

    def _staging_folder(self) -> pathlib.Path:
        """A new folder on the repository's file system (so renames are atomic), beside it if its parent allows."""
        beside = os.stat(self.path.parent).st_dev == os.stat(self.path).st_dev  # not when the folder is a mount
        for parent in (self.path.parent, self.path) if beside else (self.path,):
            try:
                return pathlib.Path(tempfile.mkdtemp(prefix=f".{self.path.name}.tritonnb-export-", dir=parent))
            except OSError:
                continue
        raise OSError(f"no folder to stage the export in, beside or in {self.path}")

    def _around_targets(self, around: dict[str, str], notes: list[str]) -> dict[str, str]:
        """Where each file around the models goes: its own path, or ``<path>.new`` when the user changed it."""
        digests = self._digests()
        targets = {}
        for rel in around:
            current = self.path / rel
            changed = current.exists() and digests.get(rel) != _digest(current.read_bytes())
            targets[rel] = f"{rel}.new" if changed else rel
            if changed:
                notes.append(f"{rel} was changed by hand since the last export: kept; the new one is {rel}.new")
        return targets

    def _digests(self) -> dict[str, str]:
        with contextlib.suppress(OSError, ValueError):
            return dict(json.loads((self.path / GENERATED).read_text()))
        return {}


class StoreRepository(Repository):
    """A model repository in an object store (``s3://``, ``gs://``, ``as://``; see ``tritonnb.triton.object_store``),
    read through its listing like a folder and written object by object.

    An object store has no rename: the objects are written in the order a reader needs them (the version folders,
    then the model's config, then the files around the models), and a failure (or an interrupt) removes the objects
    written and puts back those replaced, so the repository is left as it was.
    """

    def __init__(self, url: str) -> None:
        try:
            self.store = Store(StoreURL.parse(url), ExportError)
        except ValueError as error:
            raise SpecError(str(error)) from None
        self.path = StorePath(self.store)  # type: ignore[assignment]

    def check_writable(self) -> None:
        """ExportError unless the credentials work, the bucket exists and an object can be written there."""
        self.store.check_writable()

    def write(
        self,
        name: str,
        versions: dict[int, dict[str, bytes]],
        config: str,
        around: dict[str, str],
        notes: list[str],
    ) -> list[pathlib.Path]:
        """As ``Repository.write``, object by object."""
        around_targets = self._around_targets(around, notes)
        digests = {**self._digests(), **{rel: _digest(text.encode()) for rel, text in around.items()}}
        version_objects = {
            f"{name}/{version}/{rel}": data
            for version, files in sorted(versions.items())
            for rel, data in files.items()
        }
        steps = [
            version_objects,
            {f"{name}/config.pbtxt": config.encode()},
            {
                **{dest: around[rel].encode() for rel, dest in around_targets.items()},
                GENERATED: (json.dumps(digests, indent=2, sort_keys=True) + "\n").encode(),
            },
        ]
        before = self.store.objects()
        written = {key for step in steps for key in step}
        replaced = {f"{name}/{number}/" for number in versions}
        stale = sorted(  # files of a replaced version that the new one does not have
            key for key in before if key[: key.find("/", len(name) + 1) + 1] in replaced and key not in written
        )
        kept = {key: self.store.read(key) for key in sorted(before & (written | set(stale)))}
        try:
            for step in steps:
                self.store.write(step)
            self.store.remove(stale)
        except BaseException:
            with contextlib.suppress(Exception):
                self.store.remove(sorted(written - before))
                self.store.write(kept)
            raise
        root = self.path
        return [
            *(root / key for key in version_objects),
            root / name / "config.pbtxt",
            *(root / dest for dest in around_targets.values()),
        ]  # type: ignore[return-value]


def repository_at(directory: str | os.PathLike[str]) -> Repository:
    """The model repository at ``directory``: a folder, or an object store's URL (``s3://``, ``gs://``, ``as://``)."""
    if is_store_url(directory):
        return StoreRepository(str(directory))
    return Repository(pathlib.Path(directory))


def _signature(config: pb.ModelConfig) -> tuple:
    """What every version of a model must agree on: inputs, outputs and batch size."""
    return tuple(config.input), tuple(config.output), config.max_batch_size


def _signature_text(config: pb.ModelConfig) -> str:
    tensors = [f"{t.name}:{pb.DataType.Name(t.data_type)}{list(t.dims)}" for t in (*config.input, *config.output)]
    return f"{', '.join(tensors)} (max batch {config.max_batch_size})"


def _write_tree(root: pathlib.Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _remove(path: pathlib.Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
