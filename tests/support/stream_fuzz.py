"""Hypothesis strategies for hostile stream entries: messages built from their descriptors with wild values,
valid encodings of the wrong message type, and raw field maps that are no entry at all."""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

from asympo.bus import encode
from asympo.bus.codec import REQUIRED_FIELDS
from asympo.proto.v1 import bus_pb2

F = FieldDescriptor
INT_RANGES = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1), F.TYPE_SINT32: (-(2**31), 2**31 - 1), F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1), F.TYPE_SINT64: (-(2**63), 2**63 - 1), F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1), F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1), F.TYPE_FIXED64: (0, 2**64 - 1),
}  # fmt: skip
# Every message a stream of a job carries, and a few more that may land on the wrong one.
STREAM_TYPES = (bus_pb2.PromptTask, bus_pb2.ScoredGroup, bus_pb2.PolicyVersion, bus_pb2.ControlEvent,
                bus_pb2.EvalTask, bus_pb2.EvalResult)  # fmt: skip
OTHER_TYPES = (*STREAM_TYPES, bus_pb2.Completion, bus_pb2.SamplingParams, bus_pb2.EvalPrompt, bus_pb2.Timings)
# Values a reader may treat specially, drawn besides random ones.
WORDS = {
    "kind": ["pause", "resume", "cancel", "set"],
    "key": ["temperature", "max_new_tokens", "algorithm.steps"],
    "verifier": ["", "exact", "math"],
    "eval_id": ["v0-0", "v1-0", "v0-99"],
}
# Numbers the example job really uses, so that some messages get past the first check of their reader.
PLAUSIBLE = {"group_size": [8], "chunks": [7], "samples": [0], "max_new_tokens": [6], "version": [0, 1]}


def _ints(field: FieldDescriptor) -> st.SearchStrategy[int]:
    lo, hi = INT_RANGES[field.type]
    plausible = st.sampled_from(PLAUSIBLE.get(field.name, [1]))
    return st.one_of(st.integers(0, 300), st.integers(lo, hi), st.sampled_from([lo, hi, -1, 0, 1]), plausible)


def _floats(field: FieldDescriptor) -> st.SearchStrategy[float]:
    wide = st.floats(allow_nan=True, allow_infinity=True, width=32 if field.type == F.TYPE_FLOAT else 64)
    return st.one_of(
        st.floats(0, 2), wide, st.sampled_from([float("nan"), float("inf"), -float("inf"), -0.0])
    )


def _text(field: FieldDescriptor, job_id: str) -> st.SearchStrategy[str]:
    if field.name == "job_id":
        # Mostly the right job, so that the checks behind the job check are reached too.
        return st.sampled_from([job_id, job_id, job_id, "", "other-job", job_id + "x"])
    # Protobuf strings are UTF-8: a lone surrogate cannot even be put into a message.
    chars = st.characters(codec="utf-8")
    long = st.tuples(chars, st.integers(1_000, 20_000)).map(lambda t: t[0] * t[1])
    words = st.sampled_from(WORDS.get(field.name, ["x"]))
    return st.one_of(st.text(chars, min_size=1, max_size=30), long, words, words)


def _scalar(field: FieldDescriptor, job_id: str) -> st.SearchStrategy:
    if field.type in INT_RANGES:
        return _ints(field)
    if field.type in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
        return _floats(field)
    if field.type == F.TYPE_STRING:
        return _text(field, job_id)
    if field.type == F.TYPE_BYTES:
        return st.binary(max_size=64)
    if field.type == F.TYPE_BOOL:
        return st.booleans()
    raise NotImplementedError(f"no strategy for field {field.full_name} of type {field.type}")


def _field(field: FieldDescriptor, job_id: str, depth: int) -> st.SearchStrategy:
    one = (
        messages(field.message_type._concrete_class, job_id, depth + 1)
        if field.type == F.TYPE_MESSAGE
        else _scalar(field, job_id)
    )
    if not field.is_repeated:
        return one
    if field.type == F.TYPE_MESSAGE:
        return st.lists(one, max_size=4 if depth == 0 else 2)
    # Random repeated lengths: a few values, or one value many times over.
    many = st.tuples(one, st.integers(100, 5_000)).map(lambda t: [t[0]] * t[1])
    return st.one_of(st.lists(one, max_size=12), many)


def messages(cls: type[Message], job_id: str, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of `cls` with each field unset or drawn from a wide range (huge, negative, NaN, long, unicode)."""
    descriptor: Descriptor = cls.DESCRIPTOR
    if depth > 2:
        return st.just(cls())
    # The fields readers check first are always drawn, so that most messages reach the checks behind them.
    always = {"job_id", *REQUIRED_FIELDS.get(cls, ())} if depth == 0 else set()
    fields = {f.name: _field(f, job_id, depth) for f in descriptor.fields}
    required = {k: v for k, v in fields.items() if k in always}
    optional = {k: v for k, v in fields.items() if k not in always}
    return st.fixed_dictionaries(required, optional=optional).map(lambda kw: cls(**kw))


def templates(job_id: str) -> dict[type[Message], Message]:
    """A usable-looking message of each stream's type, shaped like the example job's (vocabulary of 18)."""
    sampling = bus_pb2.SamplingParams(
        max_new_tokens=6, temperature=1.0, top_p=1.0, seed=7, stop_token_ids=[1]
    )
    completion = bus_pb2.Completion(token_ids=[3, 4, 1], text="12", reward=1.0, finish_reason="stop")
    prompt = bus_pb2.EvalPrompt(prompt_id="h0", prompt_token_ids=[3, 4, 5, 6], reference="12")
    return {
        bus_pb2.PromptTask: bus_pb2.PromptTask(
            job_id=job_id, prompt_id="fuzz-0", prompt="5+7=", prompt_token_ids=[3, 4, 5, 6], reference="12",
            group_size=8, sampling=sampling, dispatch_version=0, verifier="exact",
        ),
        bus_pb2.ScoredGroup: bus_pb2.ScoredGroup(
            job_id=job_id, prompt_id="fuzz-0", prompt_token_ids=[3, 4, 5, 6], completions=[completion] * 8, pod="fuzz",
        ),
        bus_pb2.PolicyVersion: bus_pb2.PolicyVersion(
            job_id=job_id, version=1, uri="file:///nowhere/v1", sha256="ab" * 32, bytes=1000, step=1, created_at=1.0,
        ),
        bus_pb2.ControlEvent: bus_pb2.ControlEvent(job_id=job_id, kind="set", key="temperature", value="0.9"),
        bus_pb2.EvalTask: bus_pb2.EvalTask(
            job_id=job_id, eval_id="v0-0", version=0, prompts=[prompt] * 2, greedy=sampling, sampling=sampling,
            verifier="exact", chunks=7,
        ),
        bus_pb2.EvalResult: bus_pb2.EvalResult(
            job_id=job_id, eval_id="v0-0", version=0, served_version=0, greedy_rewards=[1.0] * 32, chunks=7,
            pod="fuzz", seconds=1.0,
        ),
    }  # fmt: skip


def mutants(cls: type[Message], job_id: str) -> st.SearchStrategy[Message]:
    """The template of `cls` with one to three fields replaced by wild values (or cleared)."""
    template = templates(job_id)[cls]
    fields = {f.name: _field(f, job_id, 0) for f in cls.DESCRIPTOR.fields}

    def mutate(changes: dict) -> Message:
        message = cls()
        message.CopyFrom(template)
        for name, value in changes.items():
            message.ClearField(name)
            if value is not None:
                message.MergeFrom(cls(**{name: value}))
        return message

    names = st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=3, unique=True)
    changes = names.flatmap(lambda ns: st.fixed_dictionaries({n: st.none() | fields[n] for n in ns}))
    return changes.map(mutate)


def garbage_fields(job_id: str) -> st.SearchStrategy[dict]:
    """Field maps that are no usable entry: no payload, random bytes, wrong schema versions, odd names."""
    valid_pb = messages(bus_pb2.PromptTask, job_id).map(lambda m: m.SerializeToString())
    names = st.one_of(st.sampled_from(["pb", "v", "data", "json", "op"]), st.binary(min_size=1, max_size=8))
    return st.one_of(
        st.dictionaries(names, st.binary(max_size=200), min_size=1, max_size=4),
        st.fixed_dictionaries({"pb": st.binary(max_size=300), "v": st.just(b"1")}),
        st.fixed_dictionaries({"pb": valid_pb, "v": st.sampled_from([b"0", b"2", b"", b"1.0", b"\xff"])}),
        st.fixed_dictionaries({"pb": valid_pb}),
        st.fixed_dictionaries({"v": st.just(b"1"), "data": st.binary(max_size=50)}),
    )


def entries(cls: type[Message], job_id: str) -> st.SearchStrategy[dict]:
    """Stream entries for a stream of `cls`: wild messages of its type, usable-looking ones with a few wild
    fields (some with an unknown extra entry field), valid encodings of another type, or garbage field maps."""
    right = messages(cls, job_id).map(encode)
    near = mutants(cls, job_id).map(encode)
    wrong = st.sampled_from([c for c in OTHER_TYPES if c is not cls]).flatmap(lambda c: messages(c, job_id))
    extra = st.tuples(near, st.binary(max_size=20)).map(lambda t: {**t[0], "unknown": t[1]})
    kinds = (
        [right] * 3 + [near] * 3 + [wrong.map(encode), extra, garbage_fields(job_id), garbage_fields(job_id)]
    )
    return st.integers(0, len(kinds) - 1).flatmap(lambda i: kinds[i])
