from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SamplingParams(_message.Message):
    __slots__ = ("max_new_tokens", "temperature", "top_p", "seed", "stop_token_ids")
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop_token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, max_new_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., stop_token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class PromptTask(_message.Message):
    __slots__ = ("job_id", "prompt_id", "prompt", "prompt_token_ids", "reference", "group_size", "sampling", "dispatch_version", "verifier")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    DISPATCH_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERIFIER_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    prompt_id: str
    prompt: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    reference: str
    group_size: int
    sampling: SamplingParams
    dispatch_version: int
    verifier: str
    def __init__(self, job_id: _Optional[str] = ..., prompt_id: _Optional[str] = ..., prompt: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., reference: _Optional[str] = ..., group_size: _Optional[int] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., dispatch_version: _Optional[int] = ..., verifier: _Optional[str] = ...) -> None: ...

class Completion(_message.Message):
    __slots__ = ("token_ids", "text", "reward", "finish_reason", "reward_status")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    REWARD_STATUS_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    text: str
    reward: float
    finish_reason: str
    reward_status: str
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ..., reward: _Optional[float] = ..., finish_reason: _Optional[str] = ..., reward_status: _Optional[str] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("queued_s", "generate_s", "score_s", "reload_s", "publish_s")
    QUEUED_S_FIELD_NUMBER: _ClassVar[int]
    GENERATE_S_FIELD_NUMBER: _ClassVar[int]
    SCORE_S_FIELD_NUMBER: _ClassVar[int]
    RELOAD_S_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_S_FIELD_NUMBER: _ClassVar[int]
    queued_s: float
    generate_s: float
    score_s: float
    reload_s: float
    publish_s: float
    def __init__(self, queued_s: _Optional[float] = ..., generate_s: _Optional[float] = ..., score_s: _Optional[float] = ..., reload_s: _Optional[float] = ..., publish_s: _Optional[float] = ...) -> None: ...

class ScoredGroup(_message.Message):
    __slots__ = ("job_id", "prompt_id", "prompt_token_ids", "completions", "gen_version_start", "gen_version_end", "pod", "timings")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    COMPLETIONS_FIELD_NUMBER: _ClassVar[int]
    GEN_VERSION_START_FIELD_NUMBER: _ClassVar[int]
    GEN_VERSION_END_FIELD_NUMBER: _ClassVar[int]
    POD_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    prompt_id: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    completions: _containers.RepeatedCompositeFieldContainer[Completion]
    gen_version_start: int
    gen_version_end: int
    pod: str
    timings: Timings
    def __init__(self, job_id: _Optional[str] = ..., prompt_id: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., completions: _Optional[_Iterable[_Union[Completion, _Mapping]]] = ..., gen_version_start: _Optional[int] = ..., gen_version_end: _Optional[int] = ..., pod: _Optional[str] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ...) -> None: ...

class PolicyVersion(_message.Message):
    __slots__ = ("job_id", "version", "uri", "sha256", "bytes", "step", "created_at")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    version: int
    uri: str
    sha256: str
    bytes: int
    step: int
    created_at: float
    def __init__(self, job_id: _Optional[str] = ..., version: _Optional[int] = ..., uri: _Optional[str] = ..., sha256: _Optional[str] = ..., bytes: _Optional[int] = ..., step: _Optional[int] = ..., created_at: _Optional[float] = ...) -> None: ...

class ControlEvent(_message.Message):
    __slots__ = ("job_id", "kind", "key", "value")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    kind: str
    key: str
    value: str
    def __init__(self, job_id: _Optional[str] = ..., kind: _Optional[str] = ..., key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class EvalPrompt(_message.Message):
    __slots__ = ("prompt_id", "prompt_token_ids", "reference")
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    prompt_id: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    reference: str
    def __init__(self, prompt_id: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., reference: _Optional[str] = ...) -> None: ...

class EvalTask(_message.Message):
    __slots__ = ("job_id", "eval_id", "version", "step", "prompts", "greedy", "samples", "sampling", "verifier", "chunks")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    EVAL_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    GREEDY_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    VERIFIER_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    eval_id: str
    version: int
    step: int
    prompts: _containers.RepeatedCompositeFieldContainer[EvalPrompt]
    greedy: SamplingParams
    samples: int
    sampling: SamplingParams
    verifier: str
    chunks: int
    def __init__(self, job_id: _Optional[str] = ..., eval_id: _Optional[str] = ..., version: _Optional[int] = ..., step: _Optional[int] = ..., prompts: _Optional[_Iterable[_Union[EvalPrompt, _Mapping]]] = ..., greedy: _Optional[_Union[SamplingParams, _Mapping]] = ..., samples: _Optional[int] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., verifier: _Optional[str] = ..., chunks: _Optional[int] = ...) -> None: ...

class EvalResult(_message.Message):
    __slots__ = ("job_id", "eval_id", "version", "served_version", "step", "greedy_rewards", "sample_means", "sample_best", "chunks", "pod", "seconds", "generated_tokens")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    EVAL_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVED_VERSION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    GREEDY_REWARDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_MEANS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_BEST_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    POD_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    eval_id: str
    version: int
    served_version: int
    step: int
    greedy_rewards: _containers.RepeatedScalarFieldContainer[float]
    sample_means: _containers.RepeatedScalarFieldContainer[float]
    sample_best: _containers.RepeatedScalarFieldContainer[float]
    chunks: int
    pod: str
    seconds: float
    generated_tokens: int
    def __init__(self, job_id: _Optional[str] = ..., eval_id: _Optional[str] = ..., version: _Optional[int] = ..., served_version: _Optional[int] = ..., step: _Optional[int] = ..., greedy_rewards: _Optional[_Iterable[float]] = ..., sample_means: _Optional[_Iterable[float]] = ..., sample_best: _Optional[_Iterable[float]] = ..., chunks: _Optional[int] = ..., pod: _Optional[str] = ..., seconds: _Optional[float] = ..., generated_tokens: _Optional[int] = ...) -> None: ...
