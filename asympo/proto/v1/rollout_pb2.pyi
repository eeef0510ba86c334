from asympo.proto.v1 import bus_pb2 as _bus_pb2
from asympo.proto.v1 import learner_pb2 as _learner_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RolloutStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RolloutStatus(_message.Message):
    __slots__ = ("pod", "job_id", "served_version", "weights_sha256", "engine", "tokens_per_s")
    POD_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SERVED_VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    pod: str
    job_id: str
    served_version: int
    weights_sha256: str
    engine: str
    tokens_per_s: float
    def __init__(self, pod: _Optional[str] = ..., job_id: _Optional[str] = ..., served_version: _Optional[int] = ..., weights_sha256: _Optional[str] = ..., engine: _Optional[str] = ..., tokens_per_s: _Optional[float] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("prompts", "sampling", "n")
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    prompts: _containers.RepeatedScalarFieldContainer[str]
    sampling: _bus_pb2.SamplingParams
    n: int
    def __init__(self, prompts: _Optional[_Iterable[str]] = ..., sampling: _Optional[_Union[_bus_pb2.SamplingParams, _Mapping]] = ..., n: _Optional[int] = ...) -> None: ...

class PromptCompletions(_message.Message):
    __slots__ = ("completions",)
    COMPLETIONS_FIELD_NUMBER: _ClassVar[int]
    completions: _containers.RepeatedCompositeFieldContainer[_bus_pb2.Completion]
    def __init__(self, completions: _Optional[_Iterable[_Union[_bus_pb2.Completion, _Mapping]]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("outputs", "served_version")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    SERVED_VERSION_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[PromptCompletions]
    served_version: int
    def __init__(self, outputs: _Optional[_Iterable[_Union[PromptCompletions, _Mapping]]] = ..., served_version: _Optional[int] = ...) -> None: ...
