"""Which scored groups a step trains on: read, check, de-duplicate, drop the stale and the flat, buffer the rest.

A group is checked before anything else touches it, so one bad group can never fail a step: a group for
a prompt_id the job never dispatched (injected, or replayed after its claim was pruned) is dead-lettered
and counted `foreign`, not as a prompt of the job; a group for a dispatched prompt that breaks a rule of
`asympo.bus.scored.group_problem` (reward finite and within bounds, group_size completions, token ids in
the model's vocabulary, responses no longer than their task's max_new_tokens, prompt and response
within the model's positions) is dead-lettered with the rule and counted `dropped:dead`, after claiming
its prompt, so a later copy of it is a duplicate and not trained.

For `grpo` the learner recomputes behavior log-probs from the weights of the version that generated a
group (behavior.py); a group whose version this rank no longer keeps (after a restart from a checkpoint,
or older than a raised max_staleness allows) is dropped as `no_behavior_version`, here and again when a
step takes its buffered groups.
"""

from __future__ import annotations

import time

from asympo.bus import Delivery, SeenPrompts, StreamConsumer, encode
from asympo.bus.flow import FOREIGN, Origin, forget_dispatched, origins
from asympo.bus.scored import GroupLimits, group_problem

from .behavior import BehaviorPolicies
from .control import JobControl
from .job_context import JobContext

NO_BEHAVIOR_VERSION = "no_behavior_version"


def group_limits(model, spec) -> GroupLimits:
    """What a group must respect to be trained by this model (sharded or not) under this job's spec."""
    rows = [model.get_input_embeddings().num_embeddings]
    head = model.get_output_embeddings()
    if head is not None:
        rows.append(head.weight.shape[0])  # a DTensor's shape is the whole tensor's
    positions = getattr(model.config, "max_position_embeddings", None)
    return GroupLimits(spec.algorithm.group_size, min(rows), positions)


class Admission:
    """This rank's buffer of groups admitted for training, filled from its consumer of the groups stream."""

    def __init__(
        self, ctx: JobContext, consumer: StreamConsumer, control: JobControl, limits: GroupLimits,
        behavior: BehaviorPolicies | None = None,
    ):  # fmt: skip
        self.ctx = ctx
        self.consumer = consumer
        self.control = control
        self.limits = limits
        self.behavior = behavior  # grpo: the versions whose behavior log-probs can be recomputed
        self.seen = SeenPrompts(ctx.redis, ctx.keys, ctx.fence)
        self.buffer: list[Delivery] = []
        # Generated work that reached the learner, used or not (for throughput: tokens generated per second).
        self.read_tokens = 0

    def _stale(self, d: Delivery) -> bool:
        return self.ctx.staleness(d.message.gen_version_start) > self.ctx.max_staleness

    def _unversioned(self, d: Delivery) -> bool:
        return self.behavior is not None and not self.behavior.holds(d.message.gen_version_start)

    async def admit(self, deliveries: list[Delivery], recovered: bool = False) -> None:
        """Sort deliveries into the buffer, dead-lettering bad groups and dropping duplicates, stale and
        (optionally) flat ones; `recovered`: taken back after a restart (their tokens were counted)."""
        if not deliveries:
            return
        if not recovered:
            self.read_tokens += sum(len(c.token_ids) for d in deliveries for c in d.message.completions)
        known: list[tuple[Delivery, Origin]] = []
        for d, origin in zip(deliveries, await origins(self.ctx.redis, self.ctx.keys,
                                                       [d.message.prompt_id for d in deliveries])):  # fmt: skip
            if origin.foreign:
                problem = group_problem(d.message, self.limits, None)
                unknown = f"prompt_id {d.message.prompt_id!r} was never dispatched by this job"
                reason = f"{problem} ({unknown})" if problem else f"unknown_prompt: {unknown}"
                await self.dead_letter(d, reason, foreign=True)
            else:
                known.append((d, origin))
        pairs = [(d.message.prompt_id, d.entry_id) for d, _ in known]
        firsts = await self.seen.claim(pairs, self.ctx.progress.version)
        dropped: dict[str, list[Delivery]] = {
            "duplicate": [],
            "stale": [],
            NO_BEHAVIOR_VERSION: [],
            "zero_variance": [],
        }
        for (d, origin), first in zip(known, firsts):
            g = d.message
            problem = group_problem(g, self.limits, origin.max_new_tokens) if first else None
            if not first:
                dropped["duplicate"].append(d)
            elif problem:
                await self.dead_letter(d, problem)
            elif self._stale(d):
                dropped["stale"].append(d)
            elif self._unversioned(d):
                dropped[NO_BEHAVIOR_VERSION].append(d)
            elif self.ctx.spec.algorithm.drop_zero_variance and len({c.reward for c in g.completions}) <= 1:
                dropped["zero_variance"].append(d)
            else:
                self.buffer.append(d)
        for reason, ds in dropped.items():
            await self.discard(ds, reason)
        # Claimed now: the claim tells a later copy apart from here on.
        claimed = [d.message.prompt_id for (d, o), first in zip(known, firsts) if first and o.max_new_tokens]
        await forget_dispatched(self.ctx.redis, self.ctx.keys, self.ctx.fence, claimed)

    async def dead_letter(self, d: Delivery, reason: str, foreign: bool = False) -> None:
        """Move a group that must not be trained to the dead-letter stream with its reason (ACK + count)."""
        moved = await self.consumer.dead_letters.put(
            d.entry_id, encode(d.message), reason, counter=FOREIGN if foreign else "dropped:dead",
            fence=self.ctx.fence,
        )  # fmt: skip
        if moved:
            self.ctx.metrics.groups_dropped.labels(FOREIGN if foreign else "dead").inc()
            self.ctx.metrics.groups_invalid.labels(reason.split(":")[0]).inc()

    async def discard(self, deliveries: list[Delivery], reason: str) -> None:
        """ACK groups that will not be trained and record them under `reason` (one atomic write)."""
        if not deliveries:
            return
        entries = [(d.entry_id, d.message.prompt_id) for d in deliveries]
        n = await self.ctx.ledger.discard(entries, reason, self.ctx.progress.step)
        self.ctx.metrics.groups_dropped.labels(reason).inc(n)

    async def collect(self, need: int) -> bool:
        """Fill the buffer to `need` usable groups; False if the job stopped meanwhile."""
        # Groups kept from an interrupted step may have gone stale since, or (grpo) been admitted while
        # resuming, before the ring held the version the learner resumed at.
        stale = [d for d in self.buffer if self._stale(d)]
        unversioned = [d for d in self.buffer if not self._stale(d) and self._unversioned(d)]
        self.buffer = [d for d in self.buffer if not self._stale(d) and not self._unversioned(d)]
        await self.discard(stale, "stale")
        await self.discard(unversioned, NO_BEHAVIOR_VERSION)
        last_check = time.monotonic()
        while len(self.buffer) < need:
            batch = await self.consumer.read(need - len(self.buffer), block_ms=500)
            await self.admit(batch)
            if time.monotonic() - last_check > self.ctx.settings.poll_s:
                last_check = time.monotonic()
                # A pause or cancel must not wait until slow pods deliver a step.
                if self.ctx.failure or self.ctx.publication_error or not await self.control.running():
                    return False
        return True

    def take(self, n: int) -> tuple[list[Delivery], int]:
        """The first n buffered groups for a step, and the generated tokens read since the last take."""
        batch, self.buffer = self.buffer[:n], self.buffer[n:]
        tokens, self.read_tokens = self.read_tokens, 0
        return batch, tokens
