"""Stream entries: {pb: serialized bus.proto message, v: schema version}, decoded and checked."""

from __future__ import annotations

from google.protobuf.message import DecodeError as _ProtoDecodeError
from google.protobuf.message import Message

from asympo.proto.v1 import bus_pb2

SCHEMA_VERSION = "1"

# Fields an entry of each type must carry to be usable; garbage that happens to parse fails here.
REQUIRED_FIELDS: dict[type[Message], tuple[str, ...]] = {
    bus_pb2.PromptTask: ("job_id", "prompt_id"),
    bus_pb2.ScoredGroup: ("job_id", "prompt_id"),
    bus_pb2.PolicyVersion: ("job_id",),
    bus_pb2.ControlEvent: ("job_id", "kind"),
}


class EntryError(ValueError):
    """An entry that cannot be used; `reason` is what the dead-letter stream records."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def encode(message: Message) -> dict[str, bytes]:
    """The stream entry fields for a message."""
    return {"pb": message.SerializeToString(), "v": SCHEMA_VERSION.encode()}


def decode(fields: dict, message_type: type[Message], job_id: str | None = None) -> Message:
    """Parse and check an entry; raises EntryError naming what is wrong with it."""
    # Field names are bytes from Redis and any bytes at all in a hostile entry: never let them raise.
    fields = {
        (k.decode(errors="replace") if isinstance(k, bytes) else k): v for k, v in (fields or {}).items()
    }
    version = fields.get("v")
    if version is None:
        raise EntryError("missing schema version field 'v'")
    version = version.decode(errors="replace") if isinstance(version, bytes) else str(version)
    if version != SCHEMA_VERSION:
        raise EntryError(f"unsupported schema version {version!r} (this build reads {SCHEMA_VERSION!r})")
    payload = fields.get("pb")
    if payload is None:
        raise EntryError("missing payload field 'pb'")
    if isinstance(payload, str):
        payload = payload.encode()
    message = message_type()
    try:
        message.ParseFromString(payload)
    except _ProtoDecodeError as exc:
        raise EntryError(f"undecodable {message_type.__name__} payload ({exc})") from None
    for name in REQUIRED_FIELDS.get(message_type, ()):
        if not getattr(message, name):
            raise EntryError(
                f"undecodable {message_type.__name__} payload (required field {name!r} is empty)"
            )
    if job_id is not None and getattr(message, "job_id", job_id) != job_id:
        raise EntryError(f"entry belongs to job {message.job_id!r}, not {job_id!r}")
    return message
