"""The shared telemetry helpers: JSON-lines logging and the Prometheus exporter."""

import io
import json
import logging
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from asympo.runtime.telemetry import setup_logging, start_metrics_server


@pytest.fixture
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_with_extra_fields_and_exceptions(restore_root_logger):
    out = io.StringIO()
    log = setup_logging("svc", "DEBUG", stream=out)
    log.info("hello %s", "world", extra={"port": 5, "obj": object()})
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        logging.getLogger("other").exception("failed")
    setup_logging("svc", "INFO", stream=out)  # a second call replaces the handler, never doubles lines
    logging.getLogger("x").debug("hidden")
    logging.getLogger("x").warning("shown")
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["msg"] for r in records] == ["hello world", "failed", "shown"]
    first = records[0]
    assert (first["service"], first["level"], first["logger"], first["port"]) == ("svc", "INFO", "svc", 5)
    assert first["ts"].endswith("Z") and "object" in first["obj"]
    assert "ZeroDivisionError" in records[1]["exc"]


def test_unknown_level_is_refused(restore_root_logger):
    with pytest.raises(ValueError, match="unknown log level 'LOUD'"):
        setup_logging("svc", "LOUD")


def test_metrics_server_on_a_free_port():
    registry = CollectorRegistry()
    Counter("asympo_test_things", "things", registry=registry).inc(3)
    server = start_metrics_server(0, registry, addr="127.0.0.1")
    try:
        assert server.port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as r:
            assert "asympo_test_things_total 3.0" in r.read().decode()
    finally:
        server.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=2)
