"""Logging and metrics setup shared by every asympo service: JSON-lines logs, a Prometheus exporter."""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from threading import Thread
from typing import IO

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged as a field.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per record: ts, level, service, logger, msg, the record's extra fields, exc."""

    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        """The record as a single line of JSON."""
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and not key.startswith("_") and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        # default=str: a stray non-JSON value in `extra` must not cost the whole log line.
        return json.dumps(out, default=str, ensure_ascii=False)


class _OwnHandler(logging.StreamHandler):
    """Marks the handler setup_logging installed, so a second call replaces it instead of doubling lines."""


def setup_logging(service: str, level: str | int = "INFO", stream: IO[str] | None = None) -> logging.Logger:
    """Send every log record of the process to stdout (or `stream`) as JSON lines tagged with `service`."""
    if isinstance(level, str):
        resolved = logging.getLevelName(level.upper())
        if not isinstance(resolved, int):
            raise ValueError(f"unknown log level {level!r}: use DEBUG, INFO, WARNING, ERROR or CRITICAL")
        level = resolved
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _OwnHandler)]:
        root.removeHandler(handler)
    handler = _OwnHandler(stream if stream is not None else sys.stdout)
    handler.setFormatter(JsonLinesFormatter(service))
    root.addHandler(handler)
    root.setLevel(level)
    return logging.getLogger(service)


@dataclass
class MetricsServer:
    """A running Prometheus exporter: `port` is the bound port (useful when 0 was asked for)."""

    port: int
    _server: object
    _thread: Thread

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_metrics_server(
    port: int, registry: CollectorRegistry | None = None, addr: str = "0.0.0.0"
) -> MetricsServer:
    """Serve `registry` (default: the global one) at http://addr:port/metrics; port 0 picks a free port."""
    server, thread = start_http_server(
        port, addr=addr, registry=registry if registry is not None else REGISTRY
    )
    return MetricsServer(port=server.server_port, _server=server, _thread=thread)
