"""A TCP proxy in front of a real Redis that can lose one reply: the command reaches Redis and runs, then
the connection drops before its reply comes back, as a network failure after EXEC would.

    with RedisProxy(redis_url) as proxy:         # proxy.url goes to the clients under test
        proxy.lose_reply_after(b"EXEC")          # the next command containing EXEC: run, then drop
        ...
        proxy.wait_lost()                        # it happened (counted in proxy.lost)

Runs its own event loop in a thread, so clients of any loop (a test's, a service process's) can use it.
"""

from __future__ import annotations

import asyncio
import threading
from urllib.parse import urlparse

from asympo.runtime.ports import free_port


class RedisProxy:
    """Forwards loopback TCP to a Redis server; `lose_reply_after(marker)` drops one reply."""

    def __init__(self, redis_url: str, port: int | None = None):
        parsed = urlparse(redis_url)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 6379)
        self.port = port or free_port()
        self.url = redis_url.replace(f":{parsed.port}", f":{self.port}", 1)
        self.lost = 0
        self._marker: bytes | None = None
        self._lost_event = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._server = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> RedisProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._client, "127.0.0.1", self.port), self._loop
        ).result(10)
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def lose_reply_after(self, marker: bytes) -> None:
        """Arm: the next client write containing `marker` (e.g. b"EXEC", b"EVALSHA") is run, its reply lost."""
        self._lost_event.clear()
        self._marker = marker

    def wait_lost(self, timeout_s: float = 30.0) -> bool:
        """Whether an armed loss happened within the timeout."""
        return self._lost_event.wait(timeout_s)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        back = asyncio.ensure_future(self._pipe(up_reader, writer))
        try:
            while data := await reader.read(65536):
                marker = self._marker
                armed = marker is not None and b"\r\n" + marker + b"\r\n" in data.upper()
                if armed:
                    # Stop relaying replies first, so this command's reply cannot slip through.
                    self._marker = None
                    back.cancel()
                    await asyncio.gather(back, return_exceptions=True)
                up_writer.write(data)
                await up_writer.drain()
                if armed:
                    await up_reader.read(65536)  # Redis has run it and answered; the answer is lost
                    self.lost += 1
                    self._lost_event.set()
                    break
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            back.cancel()
            for w in (writer, up_writer):
                w.close()

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except asyncio.CancelledError:
            return  # stopped on purpose (a lost reply): the caller closes both sides
        except OSError:
            pass
        dst.close()  # Redis went away: the client sees its connection close, as without a proxy
