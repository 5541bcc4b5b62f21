"""A served model's ``config.pbtxt``, built with Triton's own protobuf schema (tritonclient's ``model_config_pb2``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from tritonnb.signature import ModelSpec, TensorSpec

__all__ = ["TYPE_NAMES", "can_warm_up", "config_text", "model_config", "parse_config", "warmup_sample"]

TYPE_NAMES = {  # spec dtype -> model-config DataType (the protocol name with TYPE_, bytes as TYPE_STRING)
    "float16": pb.TYPE_FP16,
    "float32": pb.TYPE_FP32,
    "float64": pb.TYPE_FP64,
    "int8": pb.TYPE_INT8,
    "int16": pb.TYPE_INT16,
    "int32": pb.TYPE_INT32,
    "int64": pb.TYPE_INT64,
    "uint8": pb.TYPE_UINT8,
    "bool": pb.TYPE_BOOL,
    "bytes": pb.TYPE_STRING,
}


def model_config(
    spec: ModelSpec, backend: str, device: str, warm_up: bool = True, versions: Sequence[int] = ()
) -> pb.ModelConfig:
    """The model config Triton serves ``spec`` with in a repository: backend, batching, instances, warm-up, and a
    version policy that serves ``versions`` side by side (none given: the newest alone)."""
    config = pb.ModelConfig(
        name=spec.name,
        backend=backend,
        max_batch_size=spec.max_batch_size,
        input=[_tensor(pb.ModelInput, s) for s in spec.inputs],
        output=[_tensor(pb.ModelOutput, s) for s in spec.outputs],
        instance_group=[_instance_group(spec.instances, device)],
        model_warmup=[_warmup(spec.name, spec.inputs)] if warm_up and can_warm_up(spec) else [],
        version_policy=_version_policy(versions),
    )
    if spec.batched:
        config.dynamic_batching.max_queue_delay_microseconds = spec.batch_delay_us
    return config


def _version_policy(versions: Sequence[int]) -> pb.ModelVersionPolicy:
    if not versions:
        return pb.ModelVersionPolicy(latest=pb.ModelVersionPolicy.Latest(num_versions=1))
    return pb.ModelVersionPolicy(specific=pb.ModelVersionPolicy.Specific(versions=sorted(set(versions))))


def config_text(config: pb.ModelConfig) -> str:
    """``config.pbtxt`` text (protobuf text format, as Triton reads it)."""
    return text_format.MessageToString(config)


def parse_config(text: str) -> pb.ModelConfig:
    """Parse ``config.pbtxt`` text with Triton's schema (ParseError on a field Triton would not know)."""
    return text_format.Parse(text, pb.ModelConfig())


def _tensor(kind: type, spec: TensorSpec) -> pb.ModelInput | pb.ModelOutput:
    return kind(name=spec.name, data_type=TYPE_NAMES[spec.dtype], dims=list(spec.dims))


def _instance_group(count: int, device: str) -> pb.ModelInstanceGroup:
    if device.startswith("cuda"):  # no gpus list: the notebook's GPU index means nothing on another machine
        return pb.ModelInstanceGroup(kind=pb.ModelInstanceGroup.KIND_GPU, count=count)
    return pb.ModelInstanceGroup(kind=pb.ModelInstanceGroup.KIND_CPU, count=count)


def can_warm_up(spec: ModelSpec) -> bool:
    """Whether a warm-up sample can be generated: zeros fit any number input, but not encoded bytes (an image)."""
    return all(s.dtype != "bytes" for s in spec.inputs)


def warmup_sample(spec: ModelSpec) -> dict[str, np.ndarray]:
    """The arrays of the warm-up sample Triton will send (as a batch of one when the model batches)."""
    shape = [1] if spec.batched else []
    return {s.name: np.zeros([*shape, *(1 if d == -1 else d for d in s.dims)], s.numpy_dtype) for s in spec.inputs}


def _warmup(name: str, inputs: Sequence[TensorSpec]) -> pb.ModelWarmup:
    """One generated sample of zeros (``-1`` dims as 1), so the fleet runs the model once before it is READY.

    Zeros, not random data: they are valid indices for an embedding, where random integers may not be.
    """
    warmup = pb.ModelWarmup(name=f"{name}_warmup", batch_size=1, count=1)
    for spec in inputs:
        sample = warmup.inputs[spec.name]
        sample.data_type = TYPE_NAMES[spec.dtype]
        sample.dims.extend(1 if d == -1 else d for d in spec.dims)
        sample.zero_data = True
    return warmup
