"""Run a service (`python -m services.<name>`) as a real subprocess and read its JSON-lines log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from asympo.runtime.grpc_auth import GRPC_TOKEN_ENV, ClientAuth

REPO = Path(__file__).resolve().parents[2]
# The gRPC token of services the tests start, unless $ASYMPO_GRPC_TOKEN names another (tests/conftest.py
# sets it to this one, so in-process clients send the same).
TEST_GRPC_TOKEN = "asympo-test-grpc-token-0123456789"


def grpc_metadata() -> tuple[tuple[str, str], ...]:
    """The metadata a test's own stub calls carry to authenticate to the services it started."""
    return ClientAuth(os.environ.get(GRPC_TOKEN_ENV) or TEST_GRPC_TOKEN).metadata


class ServiceProcess:
    """A service subprocess; `lines` collects its output, `records` the JSON ones, ports come from 'serving'."""

    def __init__(
        self, module: str, *flags: str, env: dict | None = None, start_timeout_s: float = 120.0,
        launcher: tuple[str, ...] = (), metrics_flag: bool = True,
    ):  # fmt: skip
        # launcher: e.g. ("torch.distributed.run", "--nproc-per-node", "2", "-m") to start it under torchrun;
        # metrics_flag=False for the gateway, which serves /metrics on its own port.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *launcher, module, "--host", "127.0.0.1", "--port", "0",
             *(["--metrics-port", "0"] if metrics_flag else []), *flags],
            cwd=REPO, env={GRPC_TOKEN_ENV: TEST_GRPC_TOKEN, **os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.module = module
        self.lines: list[str] = []
        self.records: list[dict] = []
        self.serving = threading.Event()
        self.port = self.metrics_port = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self.serving.wait(start_timeout_s):
            self.proc.kill()
            raise AssertionError(f"{module} did not start:\n" + "".join(self.lines[-60:]))
        self.target = f"127.0.0.1:{self.port}"

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            try:
                record = json.loads(line)
            except ValueError:
                continue
            self.records.append(record)
            if record.get("msg") == "serving":
                self.port, self.metrics_port = record["port"], record["metrics_port"]
                self.serving.set()

    def wait_for_log(self, msg: str, timeout_s: float = 60.0, **fields) -> dict:
        """The first log record with this message (and these fields), waiting for it to appear."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for r in list(self.records):
                if r.get("msg") == msg and all(r.get(k) == v for k, v in fields.items()):
                    return r
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(
            f"no log record {msg!r} {fields} from {self.module}:\n" + "".join(self.lines[-60:])
        )

    def metrics(self) -> dict:
        """Every sample of the /metrics page: (name, sorted label items) → value."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            text = r.read().decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def metric(self, name: str, **labels) -> float:
        """One sample's value (0 when the sample does not exist yet)."""
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM, wait, and return the exit code (SIGKILL if it does not stop in time)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def wait_exit(self, timeout_s: float = 300.0) -> int:
        """Wait until the process has exited and all of its output has been read; its exit code."""
        code = self.proc.wait(timeout_s)
        self._reader.join(timeout_s)
        return code

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up."""
        self.proc.kill()
        self.proc.wait(10)
