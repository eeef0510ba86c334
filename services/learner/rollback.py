"""Rolling back to a checkpoint: the step records after it are superseded and their prompts dropped.

A restarted learner resumes from its newest loadable checkpoint (step S, version V). Step records
after S describe updates that are gone, so they are superseded (their prompts counted as dropped,
`rolled_back`), as are evaluations of versions after V and any final record. One fenced script does it
(`asympo.bus.ledger`), and a `rollback` record says which steps were superseded.
"""

from __future__ import annotations

import json
import logging
import time

from .job_context import JobContext

log = logging.getLogger(__name__)


async def roll_back(ctx: JobContext) -> None:
    """Supersede the records of steps after the restored checkpoint (rank 0)."""
    s, v = ctx.progress.step, ctx.progress.version
    ids, prompts, steps = [], [], []
    cursor = "+"
    while True:
        page = await ctx.redis.xrevrange(ctx.keys.steps, max=cursor, count=200)
        if cursor != "+":
            page = page[1:]  # the cursor entry itself was on the previous page
        if not page:
            break
        done = False
        for raw_id, fields in page:
            entry_id, record = raw_id.decode(), json.loads(fields[b"json"])
            if record.get("prompt_ids") is not None and record["step"] <= s:
                done = True  # records before it are all older than the checkpoint
                break
            if (
                record.get("prompt_ids") is not None
                or record.get("final")
                or (record.get("eval") and record.get("version", 0) > v)
            ):
                ids.append(entry_id)
                prompts += record.get("prompt_ids") or []
                if record.get("prompt_ids") is not None:
                    steps.append(record["step"])
        if done:
            break
        cursor = page[-1][0].decode()
    if not ids:
        return
    record = {"rollback": True, "step": s, "version": v, "superseded_steps": sorted(steps),
              "rolled_back_prompts": len(prompts), "time": time.time()}  # fmt: skip
    await ctx.ledger.roll_back(ids, prompts, record)
    ctx.metrics.groups_dropped.labels("rolled_back").inc(len(prompts))
    log.warning("rolled back to the checkpoint: later steps are superseded, their prompts dropped",
                extra={"step": s, "superseded_steps": len(steps), "rolled_back_prompts": len(prompts)})  # fmt: skip
