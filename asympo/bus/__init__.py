"""The Redis stream bus: keys, entry codec, consumer groups, counters, de-duplication, the learner's lease."""

from asympo.bus.codec import SCHEMA_VERSION, EntryError, decode, encode
from asympo.bus.connection import connect, redis_url
from asympo.bus.dedup import SeenPrompts
from asympo.bus.fence import Fence, Fenced, JobLease
from asympo.bus.flow import Flow, PositionMoved, admission_limit, dispatch, read_flow, reconcile
from asympo.bus.keys import GROUP_LEARNER, GROUP_ROLLOUT, JOBS, QUEUE, JobKeys
from asympo.bus.ledger import Ledger
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
    "Fence",
    "Fenced",
    "Flow",
    "JobLease",
    "Ledger",
    "PositionMoved",
    "JobKeys",
    "SeenPrompts",
    "StreamConsumer",
    "admission_limit",
    "connect",
    "decode",
    "dispatch",
    "encode",
    "newest_version",
    "publish",
    "read_all",
    "read_flow",
    "reconcile",
    "redis_url",
]
