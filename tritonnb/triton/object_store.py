"""Model repositories in object stores (``s3://``, ``gs://``, ``as://``): read, list and write them with fsspec (s3fs,
gcsfs, adlfs), with credentials from each cloud's usual environment variables and files, and every failure of a
cloud client turned into one clear error naming the bucket, the path and what is missing.

URLs are Triton's own: ``s3://bucket/path`` (or ``s3://http://host:port/bucket/path`` for another endpoint),
``gs://bucket/path``, ``as://account/container/path``. ``StorePath`` is a small read-only pathlib look-alike over a
store, so code written for repository folders on disk reads a bucket the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import os
import pathlib
import posixpath
import re
from collections.abc import Iterator
from typing import Any

from tritonnb.errors import TritonnbError

__all__ = [
    "CREDENTIALS",
    "SCHEMES",
    "Store",
    "StorePath",
    "StoreURL",
    "is_store_url",
]

SCHEMES = {"s3": "Amazon S3", "gs": "Google Cloud Storage", "as": "Azure Blob Storage"}
# what each cloud reads its credentials from, for the messages
CREDENTIALS = {
    "s3": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile in ~/.aws/credentials (AWS_PROFILE)",
    "gs": "GOOGLE_APPLICATION_CREDENTIALS (a service account's key file), or `gcloud auth application-default login`",
    "as": "AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT with AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN",
}
EXTRA = {
    "s3": "s3fs",
    "gs": "gcsfs",
    "as": "adlfs",
}  # the fsspec implementation each needs (pip install 'tritonnb[cloud]')
_URL = re.compile(r"^(s3|gs|as)://(.*)$")
_S3_ENDPOINT = re.compile(r"^(https?://[^/]+)/(.*)$")  # Triton's s3://http://host:port/bucket/path
_DEFAULT_PORTS = {"http": 80, "https": 443}
ADC_FILE = "application_default_credentials.json"  # where `gcloud auth application-default login` writes


def is_store_url(value: object) -> bool:
    """Whether ``value`` is a string naming an object store (``s3://``, ``gs://``, ``as://``)."""
    return isinstance(value, str) and _URL.match(value) is not None


@dataclasses.dataclass(frozen=True)
class StoreURL:
    """Where a repository lies in an object store."""

    scheme: str  # s3, gs or as
    bucket: str  # the bucket (Azure: the container)
    key: str = ""  # the path inside it, without leading or trailing slash ('' for the bucket itself)
    account: str = ""  # Azure: the storage account
    endpoint: str = ""  # S3: an endpoint named in the URL (Triton's s3://http://host:port/bucket/path form)

    @classmethod
    def parse(cls, url: str) -> StoreURL:
        """The parts of ``url``; ValueError naming what is wrong with it."""
        match = _URL.match(url)
        if match is None:
            raise ValueError(f"{url!r} is not an object store URL (s3://, gs:// or as://)")
        scheme, rest = match.groups()
        endpoint = account = ""
        if scheme == "s3" and (endpoint_match := _S3_ENDPOINT.match(rest)):
            endpoint, rest = endpoint_match.groups()
        parts = [part for part in rest.split("/") if part]
        if scheme == "as":
            if len(parts) < 2:
                raise ValueError(
                    f"{url!r}: an Azure URL names the account and the container: as://ACCOUNT/CONTAINER/PATH"
                )
            account, parts = parts[0], parts[1:]
        if not parts:
            raise ValueError(f"{url!r} names no bucket")
        return cls(scheme, parts[0], "/".join(parts[1:]), account, endpoint)

    def __str__(self) -> str:
        head = {"s3": self.endpoint, "as": self.account}.get(self.scheme, "")
        return f"{self.scheme}://" + "/".join(part for part in (head, self.bucket, self.key) if part)

    @property
    def cloud(self) -> str:
        """The service, in words."""
        return SCHEMES[self.scheme]

    @property
    def fs_path(self) -> str:
        """The path as fsspec takes it: ``bucket/key``."""
        return f"{self.bucket}/{self.key}" if self.key else self.bucket

    def child(self, relative: str) -> StoreURL:
        """The URL of ``relative`` (a POSIX path) inside this one."""
        key = posixpath.normpath(posixpath.join(self.key, relative)).lstrip("/") if relative else self.key
        return dataclasses.replace(self, key="" if key == "." else key)


class Store:
    """One repository in an object store, reached through fsspec; every failure is raised as ``error``.

    The listing (every object under the URL) is read once and kept until ``refresh()``: object stores have no
    folders, so a folder is any prefix of an object's key.
    """

    def __init__(self, url: StoreURL, error: type[TritonnbError]) -> None:
        self.url = url
        self.error = error
        self._fs: Any = None
        self._keys: frozenset[str] | None = None

    # -- reading and writing ---------------------------------------------------------------------------
    @property
    def fs(self) -> Any:
        """The fsspec file system, made on first use from the environment's credentials."""
        if self._fs is None:
            self._fs = _file_system(self.url, self.error)
        return self._fs

    def objects(self) -> frozenset[str]:
        """Every object under the URL, as a POSIX path relative to it."""
        if self._keys is None:
            prefix = self.url.fs_path.rstrip("/") + "/"
            with self.failures("cannot list"):
                found = self.fs.find(self.url.fs_path, detail=False)
            self._keys = frozenset(path[len(prefix) :] for path in found if path.startswith(prefix))
        return self._keys

    def refresh(self) -> None:
        """Read the listing again on next use (after a write, or to see what others wrote)."""
        self._keys = None
        if self._fs is not None:
            self._fs.invalidate_cache()

    def read(self, relative: str) -> bytes:
        """The bytes of one object; FileNotFoundError if there is none."""
        if relative not in self.objects():
            raise FileNotFoundError(f"{self.url.child(relative)}: no such object")
        with self.failures("cannot read", relative):
            return bytes(self.fs.cat_file(self._full(relative)))

    def write(self, files: dict[str, bytes]) -> None:
        """Write objects (relative path -> bytes), side by side."""
        if files:
            with self.failures("cannot write to"):
                self.fs.pipe({self._full(relative): data for relative, data in files.items()})
            self.refresh()

    def remove(self, relatives: list[str]) -> None:
        """Remove objects."""
        if relatives:
            with self.failures("cannot remove objects of"):
                self.fs.rm([self._full(relative) for relative in relatives])
            self.refresh()

    def download(self, destination: pathlib.Path) -> None:
        """Copy every object under the URL into ``destination`` (created), keeping the relative paths."""
        keys = sorted(self.objects())
        destination.mkdir(parents=True, exist_ok=True)
        for relative in {posixpath.dirname(key) for key in keys if "/" in key}:
            (destination / relative).mkdir(parents=True, exist_ok=True)
        if keys:
            with self.failures("cannot download"):
                self.fs.get([self._full(key) for key in keys], [str(destination / key) for key in keys])

    def _full(self, relative: str) -> str:
        return self.url.child(relative).fs_path

    # -- checks ----------------------------------------------------------------------------------------
    def check_bucket(self) -> None:
        """``error`` unless the credentials work and the bucket (Azure: container) exists."""
        bucket = f"{'container' if self.url.scheme == 'as' else 'bucket'} {self.url.bucket!r}"
        with self.failures("cannot reach"):
            try:
                self.fs.ls(self.url.bucket, detail=False)  # its top level (exists() takes a refusal for absence)
            except FileNotFoundError:
                raise self.error(
                    f"{bucket} does not exist ({self.url.cloud}, for {self.url}): create it first"
                ) from None

    def check_writable(self) -> None:
        """``error`` unless an object can be written under the URL (one is written and removed)."""
        self.check_bucket()
        probe = f".tritonnb-write-check-{os.getpid()}"
        self.write({probe: b""})
        self.remove([probe])

    @contextlib.contextmanager
    def failures(self, action: str, relative: str = "") -> Iterator[None]:
        """Turn a cloud client's exception into ``error``: "<action> <url>: <why>", with the credentials to check."""
        try:
            yield
        except TritonnbError:
            raise
        except Exception as failure:
            where = self.url.child(relative) if relative else self.url
            raise self.error(f"{action} {where}: {_why(failure, self.url)}") from None

    # -- what Triton needs -----------------------------------------------------------------------------
    @property
    def triton_reads_it(self) -> bool:
        """Whether tritonserver reads this store itself; else tritonnb serves a local copy (see ``download``).

        Triton 2.51's Azure file system only reaches ``https://<account>.blob.core.windows.net`` with an account key
        (and aborts tritonserver when that host cannot be reached), so Azure repositories are copied; S3 (any
        endpoint, in the URL) and GCS (``CLOUD_STORAGE_EMULATOR_ENDPOINT`` for another endpoint) are read natively.
        """
        return self.url.scheme in ("s3", "gs")

    def triton_url(self) -> str:
        """The URL as tritonserver takes it: for S3, an endpoint from ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``
        goes into the URL (Triton reads no endpoint variable), with its port spelled out (Triton requires one)."""
        url = self.url
        if url.scheme == "s3":
            endpoint = url.endpoint or _s3_endpoint()
            if endpoint:
                return str(dataclasses.replace(url, endpoint=_with_port(endpoint)))
        return str(url)

    def triton_environment(self) -> dict[str, str]:
        """Variables tritonserver needs beyond this process's environment to read the store as fsspec does here."""
        env: dict[str, str] = {}
        if self.url.scheme == "gs":
            emulator = os.environ.get("STORAGE_EMULATOR_HOST")
            if emulator and not os.environ.get("CLOUD_STORAGE_EMULATOR_ENDPOINT"):  # google-cloud-cpp's name for it
                env["CLOUD_STORAGE_EMULATOR_ENDPOINT"] = emulator if "://" in emulator else f"http://{emulator}"
            adc = _gcloud_adc_file()
            if not emulator and not os.environ.get("GOOGLE_APPLICATION_CREDENTIALS") and adc.is_file():
                env["GOOGLE_APPLICATION_CREDENTIALS"] = str(adc)  # Triton reads no gcloud login but this variable
        if self.url.scheme == "s3" and os.environ.get("AWS_REGION") and not os.environ.get("AWS_DEFAULT_REGION"):
            env["AWS_DEFAULT_REGION"] = os.environ["AWS_REGION"]  # the one Triton reads
        return env


def _s3_endpoint() -> str:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""


def _with_port(endpoint: str) -> str:
    """``scheme://host:port`` (Triton's S3 URL needs the port), without a trailing path."""
    scheme, _, rest = endpoint.rstrip("/").partition("://")
    host = rest.split("/", 1)[0]
    return f"{scheme}://{host}" if ":" in host else f"{scheme}://{host}:{_DEFAULT_PORTS.get(scheme, 443)}"


def _gcloud_adc_file() -> pathlib.Path:
    config = os.environ.get("CLOUDSDK_CONFIG") or os.path.join(os.path.expanduser("~"), ".config", "gcloud")
    return pathlib.Path(config) / ADC_FILE


# -- file systems, from each cloud's environment -------------------------------------------------------
def _file_system(url: StoreURL, error: type[TritonnbError]) -> Any:
    """The fsspec file system for ``url`` with the environment's credentials; ``error`` when they are missing."""
    try:
        if url.scheme == "s3":
            return _s3(url, error)
        if url.scheme == "gs":
            return _gcs(url, error)
        return _azure(url, error)
    except ImportError as missing:
        raise error(
            f"{url}: reading and writing {url.cloud} needs {EXTRA[url.scheme]} ({missing.name} is not installed): "
            "pip install 'tritonnb[cloud]'"
        ) from None


def _missing(url: StoreURL, error: type[TritonnbError], what: str) -> TritonnbError:
    place = f"{'container' if url.scheme == 'as' else 'bucket'} {url.bucket!r}, path {url.key or '/'!r}"
    return error(f"no {what} for {url} ({place}): set {CREDENTIALS[url.scheme]}")


def _s3(url: StoreURL, error: type[TritonnbError]) -> Any:
    import botocore.session
    import s3fs

    if botocore.session.Session().get_credentials() is None:
        raise _missing(url, error, "AWS credentials")
    endpoint = url.endpoint or _s3_endpoint() or None
    return s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True, use_listings_cache=False)


def _gcs(url: StoreURL, error: type[TritonnbError]) -> Any:
    from gcsfs.core import GCSFileSystem  # the JSON API client: gcsfs.GCSFileSystem may probe a gRPC control plane

    if os.environ.get("STORAGE_EMULATOR_HOST"):  # an emulator (gcsfs sends its requests there) takes no credentials
        return GCSFileSystem(token="anon", skip_instance_cache=True)
    key_file = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if key_file and not os.path.isfile(key_file):
        raise error(f"GOOGLE_APPLICATION_CREDENTIALS names {key_file}, which is not a file (for {url})")
    import google.auth
    import google.auth.exceptions

    try:
        google.auth.default(scopes=["https://www.googleapis.com/auth/devstorage.read_write"])
    except google.auth.exceptions.DefaultCredentialsError:
        raise _missing(url, error, "Google Cloud credentials") from None
    return GCSFileSystem(token="google_default", skip_instance_cache=True)


def _azure(url: StoreURL, error: type[TritonnbError]) -> Any:
    import adlfs

    connection = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    if connection:
        fields = dict(part.split("=", 1) for part in connection.split(";") if "=" in part)
        named = fields.get("AccountName", "")
        if named and named != url.account:
            raise error(
                f"AZURE_STORAGE_CONNECTION_STRING is for the storage account {named!r}, and {url} names the account "
                f"{url.account!r}"
            )
        return adlfs.AzureBlobFileSystem(connection_string=connection, skip_instance_cache=True)
    named = os.environ.get("AZURE_STORAGE_ACCOUNT", "")
    if named and named != url.account:
        raise error(f"AZURE_STORAGE_ACCOUNT is {named!r}, and {url} names the account {url.account!r}")
    key, sas = os.environ.get("AZURE_STORAGE_KEY"), os.environ.get("AZURE_STORAGE_SAS_TOKEN")
    if not key and not sas:
        raise _missing(url, error, "Azure Storage credentials")
    return adlfs.AzureBlobFileSystem(account_name=url.account, account_key=key, sas_token=sas, skip_instance_cache=True)


def _why(failure: BaseException, url: StoreURL) -> str:
    """One line on why a cloud call failed, with the credentials to check where they were refused."""
    name = type(failure).__name__
    text = (str(failure).strip().splitlines() or [name])[0]
    if len(text) > 300:
        text = text[:300] + "..."
    if name == "NoCredentialsError":
        return f"no credentials ({text}): set {CREDENTIALS[url.scheme]}"
    if isinstance(failure, PermissionError) or _status(failure) in (401, 403) or _REFUSED.search(f"{name} {text}"):
        return f"access refused ({name}: {text}); check {CREDENTIALS[url.scheme]}"
    if isinstance(failure, FileNotFoundError) or "NotFound" in name:
        return f"not found ({text})"
    return f"{name}: {text}"


_REFUSED = re.compile(r"credential|access ?denied|forbidden|unauthori[sz]ed|authenticat|signature", re.IGNORECASE)


def _status(failure: BaseException) -> int | None:
    """The HTTP status a cloud client's exception carries (Azure: status_code, gcsfs: code), if any."""
    for attribute in ("status_code", "code", "status"):
        value = getattr(failure, attribute, None)
        if isinstance(value, int):
            return value
    return None


class StorePath:
    """A path in a ``Store``: the read-only part of ``pathlib.Path`` that reading a model repository needs (``/``,
    ``name``, ``parent``, ``is_dir``, ``is_file``, ``exists``, ``iterdir``, ``glob``, ``read_bytes``, ``read_text``),
    from the store's listing. ``str()`` is its URL; equal paths name the same URL."""

    def __init__(self, store: Store, relative: str = "") -> None:
        self.store = store
        self.relative = relative.strip("/")

    # -- naming ----------------------------------------------------------------------------------------
    @property
    def url(self) -> StoreURL:
        return self.store.url.child(self.relative)

    def __str__(self) -> str:
        return str(self.url)

    def __repr__(self) -> str:
        return f"StorePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StorePath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __truediv__(self, relative: str | os.PathLike[str]) -> StorePath:
        return StorePath(
            self.store, posixpath.join(self.relative, os.fspath(relative)) if self.relative else str(relative)
        )

    @property
    def name(self) -> str:
        return (
            posixpath.basename(self.relative)
            if self.relative
            else self.store.url.key.rsplit("/", 1)[-1] or (self.store.url.bucket)
        )

    @property
    def parent(self) -> StorePath:
        return StorePath(self.store, posixpath.dirname(self.relative))

    def relative_to(self, other: StorePath) -> pathlib.PurePosixPath:
        """This path relative to ``other`` (one of its parents in the same store)."""
        mine, theirs = pathlib.PurePosixPath(self.relative), pathlib.PurePosixPath(other.relative)
        if other.store.url != self.store.url:
            raise ValueError(f"{self} is not in {other}")
        return mine.relative_to(theirs)

    # -- reading ---------------------------------------------------------------------------------------
    def _below(self) -> list[str]:
        """The keys under this path, relative to it."""
        prefix = f"{self.relative}/" if self.relative else ""
        return [key[len(prefix) :] for key in self.store.objects() if key.startswith(prefix)]

    def is_file(self) -> bool:
        return bool(self.relative) and self.relative in self.store.objects()

    def is_dir(self) -> bool:
        return bool(self._below()) if self.relative else True

    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

    def iterdir(self) -> Iterator[StorePath]:
        if not self.is_dir():
            raise FileNotFoundError(f"{self}: no such folder")
        for child in sorted({key.split("/", 1)[0] for key in self._below()}):
            yield self / child

    def glob(self, pattern: str) -> Iterator[StorePath]:
        """Paths below matching ``pattern`` (one ``fnmatch`` pattern per part, no ``**``), files and folders."""
        parts = pattern.split("/")
        found: set[str] = set()
        for key in self._below():
            pieces = key.split("/")
            if len(pieces) >= len(parts):
                candidate = pieces[: len(parts)]
                if all(fnmatch.fnmatchcase(piece, part) for piece, part in zip(candidate, parts)):
                    found.add("/".join(candidate))
        for relative in sorted(found):
            yield self / relative

    def read_bytes(self) -> bytes:
        return self.store.read(self.relative)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)
