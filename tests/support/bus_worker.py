"""A rollout-like consumer process for the kill test: reads a batch, reports it, never ACKs."""

import asyncio
import json
import sys
import time

from asympo.bus import GROUP_ROLLOUT, JobKeys, StreamConsumer, connect
from asympo.proto.v1 import bus_pb2


async def main(url: str, job_id: str, count: int) -> None:
    keys = JobKeys(job_id)
    redis = connect(url)
    consumer = StreamConsumer(
        redis,
        keys.prompts,
        GROUP_ROLLOUT,
        "doomed-pod",
        bus_pb2.PromptTask,
        dead_stream=keys.dead,
        job_id=job_id,
    )
    got = []
    while len(got) < count:
        got += await consumer.read(count - len(got), block_ms=500)
    print(json.dumps([d.entry_id for d in got]), flush=True)
    time.sleep(3600)  # "mid-batch": holding the entries when it is killed


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
