"""Pure-Python pieces: spec parsing, output mapping, call styles, cards. No server needed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tritonnb.binding import ModelSpec
from tritonnb.card import curl_command, example_shape
from tritonnb.served_function import SignatureMismatch, _calls_by_keyword, default_inputs
from tritonnb.signature import SpecError, TensorSpec, as_specs, parse_spec
from tritonnb.torch_bridge import OutputError, outputs_to_numpy, resolve_device


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("x:float32[-1,64]", TensorSpec("x", "float32", (-1, 64))),
        ("img:uint8[3, 224, 224]", TensorSpec("img", "uint8", (3, 224, 224))),
        ("flag:bool", TensorSpec("flag", "bool", (-1,))),
        ("t:string[1]", TensorSpec("t", "bytes", (1,))),
        ("h:fp16[8]", TensorSpec("h", "float16", (8,))),
    ],
)
def test_parse_spec(text, expected):
    assert parse_spec(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x", "bad tensor spec"),
        ("x:float32[a]", "bad dims"),
        ("x:cfloat[1]", "unsupported dtype"),
        ("x:float32[]", "at least one dim"),
        ("x:int8[-2]", "positive or -1"),
        ("1x:int8[1]", "bad tensor spec"),
    ],
)
def test_bad_specs(text, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(text)


def test_duplicate_names_are_rejected():
    with pytest.raises(SpecError, match="repeated: x"):
        as_specs(["x:float32[1]", "x:int8[1]"], "input")


def test_outputs_tensor_tuple_dict_and_casts():
    specs = [TensorSpec("a", "float32", (2,)), TensorSpec("b", "int64", (1,))]
    out = outputs_to_numpy((torch.ones(1, 2, dtype=torch.float64), np.array([[3]], np.int32)), specs)
    assert out["a"].dtype == np.float32 and out["b"].dtype == np.int64
    assert outputs_to_numpy({"b": [[1]], "a": torch.zeros(1, 2)}, specs)["b"].tolist() == [[1]]
    single = [TensorSpec("y", "float32", (1,))]
    assert outputs_to_numpy((torch.ones(1, 1),), single)["y"].shape == (1, 1)
    with pytest.raises(OutputError, match="cannot be safely cast"):
        outputs_to_numpy(torch.ones(1, 1), [TensorSpec("y", "int32", (1,))])
    with pytest.raises(OutputError, match="returned 1 values but 2"):
        outputs_to_numpy((torch.ones(1),), specs)
    with pytest.raises(OutputError, match="missing"):
        outputs_to_numpy({"a": torch.ones(1)}, specs)


def test_call_styles():
    x, y = TensorSpec("x", "float32"), TensorSpec("y", "float32")
    assert _calls_by_keyword(lambda x, y: x, [x, y]) is True
    assert _calls_by_keyword(lambda a, b: a, [x, y]) is False
    assert _calls_by_keyword(lambda **kw: 0, [x, y]) is True
    with pytest.raises(SignatureMismatch, match="cannot take the inputs"):
        _calls_by_keyword(lambda a: a, [x, y])
    assert [s.name for s in default_inputs(lambda image, mask=None: 0)] == ["image", "mask"]


def test_device_resolution():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("gpu")


def test_model_spec_validation_and_example_requests():
    with pytest.raises(ValueError, match="both an input and an output"):
        ModelSpec("m", (TensorSpec("x", "float32"),), (TensorSpec("x", "float32"),))
    spec = ModelSpec("m", (TensorSpec("x", "float32", (-1, 3)),), (TensorSpec("y", "float32"),))
    assert example_shape(spec.inputs[0], batched=True) == [1, 1, 3]
    assert '"shape":[1,1,3]' in curl_command("http://127.0.0.1:8000", spec)
