from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ScoreItem(_message.Message):
    __slots__ = ("completion", "reference")
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    completion: str
    reference: str
    def __init__(self, completion: _Optional[str] = ..., reference: _Optional[str] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("verifier", "items", "deadline_ms")
    VERIFIER_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    verifier: str
    items: _containers.RepeatedCompositeFieldContainer[ScoreItem]
    deadline_ms: int
    def __init__(self, verifier: _Optional[str] = ..., items: _Optional[_Iterable[_Union[ScoreItem, _Mapping]]] = ..., deadline_ms: _Optional[int] = ...) -> None: ...

class Score(_message.Message):
    __slots__ = ("reward", "status", "detail")
    REWARD_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    reward: float
    status: str
    detail: str
    def __init__(self, reward: _Optional[float] = ..., status: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("scores",)
    SCORES_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedCompositeFieldContainer[Score]
    def __init__(self, scores: _Optional[_Iterable[_Union[Score, _Mapping]]] = ...) -> None: ...
