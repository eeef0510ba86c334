from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LearnerStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StalenessStats(_message.Message):
    __slots__ = ("mean", "max", "histogram", "dropped_stale")
    class HistogramEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    MEAN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    HISTOGRAM_FIELD_NUMBER: _ClassVar[int]
    DROPPED_STALE_FIELD_NUMBER: _ClassVar[int]
    mean: float
    max: int
    histogram: _containers.ScalarMap[int, int]
    dropped_stale: int
    def __init__(self, mean: _Optional[float] = ..., max: _Optional[int] = ..., histogram: _Optional[_Mapping[int, int]] = ..., dropped_stale: _Optional[int] = ...) -> None: ...

class LearnerStatus(_message.Message):
    __slots__ = ("job_id", "step", "version", "staleness")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STALENESS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    step: int
    version: int
    staleness: StalenessStats
    def __init__(self, job_id: _Optional[str] = ..., step: _Optional[int] = ..., version: _Optional[int] = ..., staleness: _Optional[_Union[StalenessStats, _Mapping]] = ...) -> None: ...

class FetchWeightsRequest(_message.Message):
    __slots__ = ("job_id", "version")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    version: int
    def __init__(self, job_id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class WeightChunk(_message.Message):
    __slots__ = ("path", "offset", "data", "file_size", "sha256", "version")
    PATH_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    FILE_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    path: str
    offset: int
    data: bytes
    file_size: int
    sha256: str
    version: int
    def __init__(self, path: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., file_size: _Optional[int] = ..., sha256: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...
