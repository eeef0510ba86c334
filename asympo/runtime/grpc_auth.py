"""Authentication and optional TLS of asympo's internal gRPC.

Every RPC except the standard health service must carry the metadata `authorization: Bearer <token>`,
the token the services share (`$ASYMPO_GRPC_TOKEN`); a call without it fails UNAUTHENTICATED, a call
with another token PERMISSION_DENIED. Health stays open because probes (kubelet, Docker HEALTHCHECK)
cannot send metadata. TLS is off unless a service is given a certificate and key; a client CA on top
makes the server require client certificates (mTLS).
"""

from __future__ import annotations

import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

import grpc
from pydantic import Field, FilePath, field_validator, model_validator
from pydantic_settings import BaseSettings

from asympo.runtime.placeholder_secrets import check_secret
from asympo.runtime.private_files import saved_secret

GRPC_TOKEN_ENV = "ASYMPO_GRPC_TOKEN"
MIN_TOKEN_CHARS = 16
HEALTH_METHOD_PREFIX = "/grpc.health.v1.Health/"
# Metadata values travel as HTTP/2 header text: printable ASCII, and no spaces so "Bearer x" parses.
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")


def resolve_token(value: str | None) -> str:
    """The token given, else $ASYMPO_GRPC_TOKEN; ValueError when there is none or it is unusable."""
    return check_token(value or os.environ.get(GRPC_TOKEN_ENV))


def check_token(value: str | None) -> str:
    """`value` if it can serve as the gRPC token; ValueError naming what is wrong otherwise."""
    if not value:
        raise ValueError(
            f"no gRPC token: set {GRPC_TOKEN_ENV} (or --grpc-token); asympo services never serve gRPC open"
        )
    if len(value) < MIN_TOKEN_CHARS:
        raise ValueError(f"the gRPC token must be at least {MIN_TOKEN_CHARS} characters")
    if not _TOKEN_CHARS.fullmatch(value):
        raise ValueError("the gRPC token must be printable ASCII without spaces (it is sent as metadata)")
    return value


class GrpcSecuritySettings(BaseSettings):
    """The token and TLS files of a gRPC service; each service's settings class derives from it."""

    grpc_token: str | None = Field(
        None, repr=False, description=f"token every gRPC call must carry (default ${GRPC_TOKEN_ENV})"
    )
    tls_cert: FilePath | None = Field(None, description="PEM certificate chain: serve gRPC over TLS")
    tls_key: FilePath | None = Field(None, description="PEM private key of tls_cert")
    tls_client_ca: FilePath | None = Field(
        None, description="PEM CA bundle: require client certificates it signed (mTLS)"
    )

    @field_validator("grpc_token")
    @classmethod
    def _token(cls, value: str | None) -> str:
        return check_secret(resolve_token(value), "the gRPC token")

    @model_validator(mode="after")
    def _tls_pair(self):
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca needs tls_cert and tls_key: client certificates need TLS")
        return self


def server_credentials(settings: GrpcSecuritySettings) -> grpc.ServerCredentials | None:
    """TLS credentials from the settings' files, or None to serve plaintext."""
    if settings.tls_cert is None:
        return None
    ca = settings.tls_client_ca
    return grpc.ssl_server_credentials(
        [(Path(settings.tls_key).read_bytes(), Path(settings.tls_cert).read_bytes())],
        root_certificates=Path(ca).read_bytes() if ca else None,
        require_client_auth=ca is not None,
    )


def _refusal(handler: grpc.RpcMethodHandler | None, code: grpc.StatusCode, details: str):
    """A handler of the same streaming kind as `handler` that only aborts; it never parses the request."""

    async def refuse(request, context):
        await context.abort(code, details)

    if handler is None:
        return grpc.unary_unary_rpc_method_handler(refuse)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Admits an RPC only with `authorization: Bearer <token>` metadata; the health service is exempt."""

    def __init__(self, token: str):
        self._token = check_token(token).encode()

    async def intercept_service(self, continuation, handler_call_details):
        """Hand the call on, or refuse it (UNAUTHENTICATED without a bearer token, PERMISSION_DENIED with a wrong one)."""
        handler = await continuation(handler_call_details)
        if handler_call_details.method.startswith(HEALTH_METHOD_PREFIX):
            return handler
        values = [v for k, v in handler_call_details.invocation_metadata or () if k == "authorization"]
        scheme, _, token = (values[0] if values else "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _refusal(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                f"missing 'authorization: Bearer <token>' metadata (the services' shared ${GRPC_TOKEN_ENV})",
            )
        # Constant time, so the answer's timing tells a guesser nothing about how much of it matched.
        if not hmac.compare_digest(token.strip().encode(), self._token):
            return _refusal(handler, grpc.StatusCode.PERMISSION_DENIED, "wrong gRPC token")
        return handler


@dataclass(frozen=True)
class ClientAuth:
    """What a client of an asympo service presents: the token, and TLS files (no `ca`: plaintext)."""

    token: str | None = None
    ca: Path | None = None  # CA bundle that signed the servers' certificates
    cert: Path | None = None  # client certificate and key, for servers that require them (mTLS)
    key: Path | None = None

    def __repr__(self) -> str:
        return f"ClientAuth(token={'***' if self.token else None}, ca={self.ca}, cert={self.cert})"

    @classmethod
    def from_env(cls) -> ClientAuth:
        """The token of $ASYMPO_GRPC_TOKEN (none when unset), over plaintext."""
        return cls(token=os.environ.get(GRPC_TOKEN_ENV) or None)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata to send with every call."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def credentials(self) -> grpc.ChannelCredentials | None:
        """TLS channel credentials, or None for plaintext."""
        if self.ca is None:
            return None
        key = Path(self.key).read_bytes() if self.key else None
        cert = Path(self.cert).read_bytes() if self.cert else None
        return grpc.ssl_channel_credentials(Path(self.ca).read_bytes(), key, cert)

    def channel(self, target: str, options=()) -> grpc.Channel:
        """A blocking channel to `target`, over TLS when `ca` is set."""
        creds = self.credentials()
        if creds is None:
            return grpc.insecure_channel(target, options=options)
        return grpc.secure_channel(target, creds, options=options)

    def aio_channel(self, target: str, options=()) -> grpc.aio.Channel:
        """An asyncio channel to `target`, over TLS when `ca` is set."""
        creds = self.credentials()
        if creds is None:
            return grpc.aio.insecure_channel(target, options=options)
        return grpc.aio.secure_channel(target, creds, options=options)


def client_auth(settings) -> ClientAuth:
    """How a service calls its peers: its own token; TLS when its settings name a `tls_ca`."""
    ca = getattr(settings, "tls_ca", None)
    if ca is None:
        return ClientAuth(token=settings.grpc_token)
    return ClientAuth(settings.grpc_token, Path(ca), settings.tls_cert, settings.tls_key)


def saved_token(path: Path) -> tuple[str, bool]:
    """The token stored in `path`, or a new one written there readable by the owner only; (token, created)."""
    return saved_secret(path, lambda: secrets.token_urlsafe(24))
