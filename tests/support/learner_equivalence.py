"""Run under torchrun: train the tiny model two steps on a fixed global batch, save loss and weights.

torchrun --nproc-per-node N -m tests.support.learner_equivalence OUT.pt
"""

import random
import sys

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from asympo.jobs.spec import AlgorithmSpec, TinyModelSpec
from asympo.models.tiny import build_model, build_tokenizer
from asympo.proto.v1 import bus_pb2
from asympo.runtime.process_exit import leave
from services.learner.distributed import init_world, shutdown
from services.learner.trainer import Trainer, shard_model

GROUPS, G = 8, 4


def global_batch(step: int, vocab: int) -> list[bus_pb2.ScoredGroup]:
    rng = random.Random(step)
    groups = []
    for i in range(GROUPS):
        prompt = [rng.randrange(3, vocab) for _ in range(rng.randint(3, 7))]
        completions = []
        for _ in range(G):
            tokens = [rng.randrange(3, vocab) for _ in range(rng.randint(1, 9))]
            completions.append(bus_pb2.Completion(token_ids=tokens, reward=float(rng.random() < 0.4)))
        # grpo: from step 1 on, the first 3 groups (all on rank 0 with 2 ranks) come from version 0, a
        # version behind: their behavior log-probs are recomputed with its weights while rank 1 idles.
        version = 0 if i < 3 else step
        groups.append(bus_pb2.ScoredGroup(job_id="eq", prompt_id=f"s{step}-{i}", prompt_token_ids=prompt,
                                          completions=completions, gen_version_start=version))  # fmt: skip
    return groups


def main(out: str) -> None:
    world = init_world("cpu")
    results = {}
    for loss in ("asympo", "spo", "gpg", "grpo"):
        torch.manual_seed(0)
        tok = build_tokenizer()
        model = shard_model(build_model(TinyModelSpec(), tok), world)
        if "initial" not in results:
            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            # Cloned: on one rank the "full" state dict may alias the live parameters.
            initial = get_model_state_dict(model, options=options)
            results["initial"] = {k: v.detach().clone() for k, v in initial.items()}
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        # Small micro-batches so both world sizes use several, in different groupings; update gauges on
        # step 2 only.
        trainer = Trainer(
            model, opt, world, AlgorithmSpec(loss=loss), tok.pad_token_id, micro_batch_rows=5, gauges_every=2
        )
        losses = []
        if trainer.behavior is not None:
            trainer.behavior.record(0, keep=3)
        for step in range(2):
            batch = global_batch(step, len(tok))
            share = len(batch) // world.size
            mine = batch[world.rank * share : (world.rank + 1) * share]
            staleness = [i % 3 for i in range(len(batch))][world.rank * share : (world.rank + 1) * share]
            losses.append(trainer.step(mine, step=step + 1, staleness=staleness))
            if trainer.behavior is not None:
                trainer.behavior.record(step + 1, keep=3)
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        results[loss] = {"stats": losses, "state": state}
    if world.rank == 0:
        torch.save(results, out)
    shutdown()
    leave(0)  # not a normal return: see asympo.runtime.process_exit


if __name__ == "__main__":
    main(sys.argv[1])
