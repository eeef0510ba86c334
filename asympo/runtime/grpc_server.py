"""The serving scaffold every asympo gRPC service shares: a grpc.aio server with the standard health
service, the shared-token check (asympo.runtime.grpc_auth), optional TLS, a bound-port report, and a
graceful stop on SIGTERM/SIGINT.

    server = GrpcServer.for_service(settings)   # settings.host/port, its token required, TLS if configured
    server.add_service(reward_pb2_grpc.add_RewardServiceServicer_to_server, servicer, "asympo.v1.RewardService")
    port = await server.start()
    await server.serve_until_signal(grace_s=10)   # returns after a clean stop; the process then exits 0
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from asympo.runtime.grpc_auth import GrpcSecuritySettings, TokenInterceptor, check_token, server_credentials

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class GrpcServer:
    """A grpc.aio server bound to host:port that answers grpc.health.v1 for itself and its services.

    With a `token`, every RPC but health must carry it (TokenInterceptor); with `credentials`, it serves
    TLS. Services build theirs with `for_service`, which requires the token; bare servers are for tests.
    """

    def __init__(
        self,
        host: str = "0.0.0.0",
        port: int = 0,
        options: Sequence[tuple[str, Any]] = (),
        *,
        token: str | None = None,
        credentials: grpc.ServerCredentials | None = None,
    ):
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self.service_names: list[str] = []
        self.health = health.aio.HealthServicer()
        self.tls = credentials is not None
        self._credentials = credentials
        interceptors = [TokenInterceptor(token)] if token is not None else []
        # gRPC turns SO_REUSEPORT on by default: a second service started on a taken port would then
        # silently share its traffic instead of failing. Callers may still pass ("grpc.so_reuseport", 1).
        self._server = grpc.aio.server(
            options=list({"grpc.so_reuseport": 0, **dict(options)}.items()), interceptors=interceptors
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        self._stopping: asyncio.Task | None = None
        # Our own "terminated" flag: cancelling a pending grpc.aio wait_for_termination() (grpcio 1.85)
        # also cancels a later stop(), so the server's own waiter is never used.
        self._terminated = asyncio.Event()

    @classmethod
    def for_service(
        cls, settings: GrpcSecuritySettings, options: Sequence[tuple[str, Any]] = ()
    ) -> GrpcServer:
        """A service's server: its settings' host and port, its token required, TLS when it has a certificate."""
        return cls(
            settings.host,
            settings.port,
            options,
            token=check_token(settings.grpc_token),
            credentials=server_credentials(settings),
        )

    def add_service(self, add_to_server: Callable[[Any, Any], None], servicer: Any, name: str) -> None:
        """Register a servicer (with its generated `add_*_to_server`) under its full proto service name."""
        if self.port is not None:
            raise RuntimeError("add services before start()")
        add_to_server(servicer, self._server)
        self.service_names.append(name)

    async def start(self) -> int:
        """Bind, start serving, report SERVING for the server and every service; returns the bound port."""
        address = (
            f"[{self.host}]:{self.requested_port}"
            if ":" in self.host
            else f"{self.host}:{self.requested_port}"
        )
        try:
            if self._credentials is None:
                port = self._server.add_insecure_port(address)
            else:
                port = self._server.add_secure_port(address, self._credentials)
        except RuntimeError:  # grpcio raises here (older versions return 0) when the bind fails
            port = 0
        if port == 0:
            await self._server.stop(None)  # release the half-built server now, not in a destructor later
            raise OSError(f"cannot bind gRPC server to {address} (port in use or address unavailable)")
        await self._server.start()
        self.port = port
        for name in ["", *self.service_names]:
            await self.health.set(name, SERVING)
        return port

    async def set_serving(self, name: str, serving: bool) -> None:
        """Report one service SERVING or NOT_SERVING (e.g. while it cannot do its work); ignored once stopping."""
        await self.health.set(name, SERVING if serving else NOT_SERVING)

    async def stop(self, grace_s: float | None = 10.0) -> None:
        """Report NOT_SERVING, refuse new RPCs, give in-flight ones `grace_s` seconds, then cancel them."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop(grace_s))
        # shield: a caller that is itself cancelled must not abort the shutdown halfway.
        await asyncio.shield(self._stopping)

    async def _stop(self, grace_s: float | None) -> None:
        # NOT_SERVING first, so load balancers and probes steer new work away during the grace period.
        await self.health.enter_graceful_shutdown()
        try:
            await self._server.stop(grace_s)
        finally:
            self._terminated.set()

    async def wait(self) -> None:
        """Wait until the server has stopped."""
        await self._terminated.wait()

    async def serve_until_signal(
        self, grace_s: float = 10.0, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)
    ) -> int | None:
        """Serve until one of `signals` arrives (or the server stops), then stop gracefully; returns the signal.

        A second signal during the grace period cancels the in-flight RPCs at once.
        """
        loop = asyncio.get_running_loop()
        received: asyncio.Queue[int] = asyncio.Queue()
        for sig in signals:
            loop.add_signal_handler(sig, received.put_nowait, sig)
        try:
            first = asyncio.ensure_future(received.get())
            terminated = asyncio.ensure_future(self.wait())
            await asyncio.wait([first, terminated], return_when=asyncio.FIRST_COMPLETED)
            terminated.cancel()
            if not first.done():
                first.cancel()
                return None
            sig = first.result()
            log.info(
                "signal received, stopping", extra={"signal": signal.Signals(sig).name, "grace_s": grace_s}
            )
            stopping = asyncio.ensure_future(self.stop(grace_s))
            again = asyncio.ensure_future(received.get())
            await asyncio.wait([stopping, again], return_when=asyncio.FIRST_COMPLETED)
            if again.done():
                log.warning("second signal, cancelling in-flight RPCs")
                await self._server.stop(0)
            else:
                again.cancel()
            await stopping
            return sig
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
