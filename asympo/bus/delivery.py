"""What a stream consumer hands out (a Delivery) and what it counts (ConsumerStats)."""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf.message import Message


@dataclass
class Delivery:
    """One usable entry handed to a consumer: its stream id, decoded message and delivery count."""

    entry_id: str
    message: Message
    deliveries: int = 1


@dataclass
class ConsumerStats:
    """What a consumer has seen, for metrics."""

    delivered: int = 0
    reclaimed: int = 0
    dead_lettered: int = 0
    dead_reasons: dict[str, int] = field(default_factory=dict)
    reconnects: int = 0
