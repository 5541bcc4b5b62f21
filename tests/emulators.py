"""Object store emulators on loopback for the cloud repository tests: moto's S3 server, gcp-storage-emulator (GCS) and
Azurite (Azure Blob Storage, installed by scripts/setup.sh into .azurite/ with npm). Each starts on a free port with a
bucket (Azure: a container) named ``BUCKET``, and is stopped by its pid afterwards."""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import shutil
import subprocess
import sys
import time

import psutil
from helpers import free_ports, port_is_listening, wait_gone

ROOT = pathlib.Path(__file__).resolve().parent.parent
AZURITE = ROOT / ".azurite" / "node_modules" / ".bin" / "azurite-blob"
AZURITE_ACCOUNT = "devstoreaccount1"  # Azurite's well-known development account and key
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
BUCKET = "tritonnb"
START_TIMEOUT_S = 60.0
MOTO_SERVER = "import sys; from moto.server import main; main(sys.argv[1:])"


@dataclasses.dataclass
class Emulator:
    """A running emulator: its process, port, the environment a client needs to reach it, and its bucket's URL."""

    scheme: str
    process: subprocess.Popen
    port: int
    env: dict[str, str]
    log: pathlib.Path

    @property
    def bucket_url(self) -> str:
        """``s3://tritonnb``, ``gs://tritonnb`` or ``as://devstoreaccount1/tritonnb``."""
        return f"as://{AZURITE_ACCOUNT}/{BUCKET}" if self.scheme == "as" else f"{self.scheme}://{BUCKET}"


def commands(ports: dict[str, int]) -> dict[str, list[str]]:
    """Each emulator's command line, serving on its port of 127.0.0.1, in memory."""
    if not AZURITE.exists() or shutil.which("node") is None:
        raise AssertionError(f"no Azurite at {AZURITE} (or no node): bash scripts/test.sh installs it")
    return {
        # through this Python, not scripts beside it: a venv with system site-packages may take them from there
        "s3": [sys.executable, "-c", MOTO_SERVER, "-H", "127.0.0.1", "-p", str(ports["s3"])],
        "gs": [
            *(sys.executable, "-m", "gcp_storage_emulator", "start", "-H", "127.0.0.1", "--port", str(ports["gs"])),
            *("--in-memory", "--default-bucket", BUCKET, "-q"),
        ],
        "as": [
            *(str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(ports["as"]), "--inMemoryPersistence"),
            *("--silent", "--skipApiVersionCheck", "--disableTelemetry"),
        ],
    }


def client_env(ports: dict[str, int]) -> dict[str, str]:
    """The variables that point each cloud's clients (and so tritonnb and Triton) at the emulators."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",  # moto takes any key
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{ports['s3']}",
        "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{ports['gs']}",
        "AZURE_STORAGE_CONNECTION_STRING": (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{ports['as']}/{AZURITE_ACCOUNT};"
        ),
    }


def start(folder: pathlib.Path) -> dict[str, Emulator]:
    """Start the three emulators side by side, in ``folder`` (their logs), and wait until each listens."""
    ports = dict(zip(("s3", "gs", "as"), free_ports(3)))
    env = client_env(ports)
    emulators: dict[str, Emulator] = {}
    try:
        for scheme, command in commands(ports).items():
            log = folder / f"{scheme}-emulator.log"
            with log.open("wb") as sink:
                process = subprocess.Popen(
                    command, cwd=folder, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
            emulators[scheme] = Emulator(scheme, process, ports[scheme], env, log)
        deadline = time.monotonic() + START_TIMEOUT_S
        for emulator in emulators.values():
            while not port_is_listening(emulator.port):
                if emulator.process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the {emulator.scheme} emulator did not start:\n{emulator.log.read_text()}")
                time.sleep(0.05)
        _create_buckets(env)
    except BaseException:
        stop(emulators.values())
        raise
    return emulators


def _create_buckets(env: dict[str, str]) -> None:
    """The S3 bucket and the Azure container (the GCS emulator makes its default bucket itself)."""
    import adlfs
    import s3fs

    s3 = s3fs.S3FileSystem(
        endpoint_url=env["AWS_ENDPOINT_URL"], key=env["AWS_ACCESS_KEY_ID"], secret=env["AWS_SECRET_ACCESS_KEY"]
    )
    s3.mkdir(BUCKET)
    adlfs.AzureBlobFileSystem(connection_string=env["AZURE_STORAGE_CONNECTION_STRING"]).mkdir(BUCKET)


def stop(emulators) -> list[psutil.Process]:
    """Stop the emulators (and anything they started) by pid; return the processes still alive after."""
    processes: list[psutil.Process] = []
    for emulator in emulators:
        try:
            root = psutil.Process(emulator.process.pid)
            processes += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    alive = wait_gone(processes, timeout=10)
    for process in alive:
        process.kill()
    for emulator in emulators:
        emulator.process.wait(timeout=10)  # reaped: no zombie left
    return wait_gone(alive, timeout=5)
