"""The Redis stream bus: keys, entry codec, consumer groups, admission counters, de-duplication."""

from asympo.bus.codec import SCHEMA_VERSION, EntryError, decode, encode
from asympo.bus.connection import connect, redis_url
from asympo.bus.dedup import SeenPrompts
from asympo.bus.flow import Flow, admission_limit, dispatch, mark_consumed, read_flow
from asympo.bus.keys import GROUP_LEARNER, GROUP_ROLLOUT, JOBS, QUEUE, JobKeys
from asympo.bus.policy_stream import newest_version
from asympo.bus.stream_io import publish, read_all
from asympo.bus.streams import Delivery, StreamConsumer

__all__ = [
    "GROUP_LEARNER",
    "GROUP_ROLLOUT",
    "JOBS",
    "QUEUE",
    "SCHEMA_VERSION",
    "Delivery",
    "EntryError",
    "Flow",
    "JobKeys",
    "SeenPrompts",
    "StreamConsumer",
    "admission_limit",
    "connect",
    "decode",
    "dispatch",
    "encode",
    "mark_consumed",
    "newest_version",
    "publish",
    "read_all",
    "read_flow",
    "redis_url",
]
