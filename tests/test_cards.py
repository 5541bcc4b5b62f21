"""Every example on a card works as shown, for models that take bytes too: the curl sends real bytes from a file as
Triton's binary tensor data, the Python snippets read that file, and ``tritonnb.card(name)`` is the card shown."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

import tritonnb

PNG_LIKE = bytes(range(256)) * 3 + b"\x00\n'\"$`\\"  # every byte value, NULs, quotes and shell characters


def measure(data, k):
    """The length and the first byte of each bytes element, and k back."""
    lengths = np.array([[len(item)] for item in data.reshape(-1)], dtype=np.int64)
    firsts = np.array([[item[0] if item else -1] for item in data.reshape(-1)], dtype=np.int64)
    return {"size": lengths, "first": firsts, "k2": k * 2}


def test_every_example_of_a_bytes_model_card_works(triton, tmp_path):
    card = tritonnb.bind(
        measure,
        "measure",
        inputs=["data:bytes[1]", "k:int32[1]"],
        outputs=["size:int64[1]", "first:int64[1]", "k2:int32[1]"],
    )
    assert tritonnb.card("measure") is card
    (tmp_path / "data.bin").write_bytes(PNG_LIKE)  # the file the card's examples read by default
    assert card.generate_curl is None  # JSON strings cannot carry these bytes

    reply = subprocess.run(["bash", "-c", card.curl], cwd=tmp_path, capture_output=True, text=True, check=True)
    outputs = {o["name"]: o["data"] for o in json.loads(reply.stdout)["outputs"]}
    assert outputs == {"size": [len(PNG_LIKE)], "first": [0], "k2": [2]}

    other = tmp_path / "elsewhere" / "with space.bin"
    other.parent.mkdir()
    other.write_bytes(b"\xff" * 5)
    reply = subprocess.run(
        ["bash", "-c", card.curl_command(files={"data": str(other)})], capture_output=True, text=True
    )
    assert {o["name"]: o["data"] for o in json.loads(reply.stdout)["outputs"]}["size"] == [5]

    snippet = subprocess.run([sys.executable, "-c", card.python], cwd=tmp_path, capture_output=True, text=True)
    assert snippet.returncode == 0, snippet.stderr
    assert snippet.stdout.splitlines() == [f"size [[{len(PNG_LIKE)}]]", "first [[0]]", "k2 [[2]]"]
    assert "data.bin" in repr(card) and "bytes read from data.bin" in card._repr_html_()
    tritonnb.unbind("measure")


def test_a_bytes_stream_card_streams_real_bytes(triton, tmp_path):
    def chunks(data):
        for item in data.reshape(-1):
            yield {"size": np.array([len(item)], dtype=np.int64)}

    card = tritonnb.bind(chunks, "chunks", inputs=["data:bytes[1]"], outputs=["size:int64[1]"])
    (tmp_path / "data.bin").write_bytes(PNG_LIKE)
    snippet = subprocess.run([sys.executable, "-c", card.python], cwd=tmp_path, capture_output=True, text=True)
    assert snippet.returncode == 0, snippet.stderr
    assert snippet.stdout.split() == ["size", f"[{len(PNG_LIKE)}]"]
    tritonnb.unbind("chunks")
