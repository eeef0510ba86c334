"""Holding claimed stream entries while slow work (a long generation) runs, so no peer takes them over."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence

import redis.asyncio as aioredis

from asympo.bus.connection import RETRYABLE

log = logging.getLogger(__name__)

# Reset the idle time of entries this consumer still owns, without counting a delivery (XCLAIM JUSTID);
# an entry a peer has meanwhile taken over is left to that peer.
_RENEW = """
local renewed = 0
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    renewed = renewed + 1
  end
end
return renewed
"""


class Lease:
    """Renews a consumer's claim on its pending entries a few times per claim window."""

    def __init__(self, redis: aioredis.Redis, stream: str, group: str, consumer: str, claim_idle_s: float):
        self.redis = redis
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.claim_idle_s = claim_idle_s

    async def renew(self, entry_ids: Sequence[str]) -> int:
        """Reset the idle time of the entries this consumer still holds; returns how many it holds."""
        if not entry_ids:
            return 0
        return int(await self.redis.eval(_RENEW, 1, self.stream, self.group, self.consumer, *entry_ids))

    @contextlib.asynccontextmanager
    async def holding(self, entry_ids: Sequence[str]) -> AsyncIterator[None]:
        """Keep the entries claimed while the body works on them, however long it takes.

        Peers reclaim entries idle longer than claim_idle_s; renewing a few times per window keeps
        slow work (long generations) with its consumer, while a consumer that dies stops renewing and
        its entries become reclaimable one window later.
        """
        ids = list(entry_ids)

        async def renew_forever() -> None:
            while True:
                await asyncio.sleep(self.claim_idle_s / 3)
                try:
                    await self.renew(ids)
                except RETRYABLE as exc:
                    log.warning("could not renew the claim on %d entries: %s", len(ids), exc)

        renewer = asyncio.ensure_future(renew_forever())
        try:
            yield
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
