"""A small synchronous client of the gateway's REST API (what the CLI uses)."""

from __future__ import annotations

from typing import Any

import httpx


class GatewayError(RuntimeError):
    """The gateway refused a request or could not be reached; the message says which and why."""


class GatewayClient:
    """`GatewayClient(url, token).submit(spec_yaml)` and friends; every call raises GatewayError on failure."""

    def __init__(self, url: str, token: str, timeout_s: float = 30.0):
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout_s
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, path: str, **kw) -> Any:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise GatewayError(f"cannot reach the gateway at {self.url}: {exc}") from None
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            if isinstance(detail, dict) and "problems" in detail:
                detail = "\n".join(f"  {p['field']}: {p['error']}" for p in detail["problems"])
            raise GatewayError(f"{method} {path}: {r.status_code} {detail}")
        return r.json()

    def healthy(self) -> bool:
        """Whether /healthz answers 200."""
        try:
            return self._http.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def submit(self, spec_yaml: str) -> dict:
        """Queue a job from its YAML text; returns the job record."""
        return self._call("POST", "/v1/jobs", content=spec_yaml, headers={"Content-Type": "application/yaml"})

    def jobs(self) -> list[dict]:
        """All jobs."""
        return self._call("GET", "/v1/jobs")

    def job(self, job_id: str) -> dict:
        """One job with its spec and last step record."""
        return self._call("GET", f"/v1/jobs/{job_id}")

    def control(self, job_id: str, kind: str) -> dict:
        """pause, resume or cancel."""
        return self._call("POST", f"/v1/jobs/{job_id}:{kind}")

    def set_knobs(self, job_id: str, knobs: dict) -> dict:
        """Change live knobs."""
        return self._call("PATCH", f"/v1/jobs/{job_id}", json=knobs)

    def metrics(self, job_id: str, last: int = 100) -> list[dict]:
        """The newest step records, oldest first."""
        return self._call("GET", f"/v1/jobs/{job_id}/metrics", params={"last": last})

    def versions(self, job_id: str, last: int = 10_000) -> list[dict]:
        """Published versions, oldest first."""
        return self._call("GET", f"/v1/jobs/{job_id}/versions", params={"last": last})

    def pods(self, job_id: str | None = None) -> list[dict]:
        """Rollout pods with a recent heartbeat."""
        return self._call("GET", "/v1/pods", params={"job": job_id} if job_id else None)
