"""The three systems benchmarks/peer_trl.py compares, each run on one job spec: TRL, the reference loop, the stack.

Each runner returns the same figures: `samples` (responses trained), `wall_seconds` (what was timed),
`samples_per_s`, `initial_accuracy` and `final_accuracy` (held-out greedy, asympo's evaluation), and
`cpu_seconds`: the CPU time (user + system, every thread and process) the whole run took, evaluations
included, which tells how much of the machine a system needs per sample however it overlaps its work.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from asympo.jobs.spec import JobSpec
from asympo.models.evaluate import greedy_accuracy
from asympo.models.loading import load_policy, resolve_model_path
from asympo.models.prompts import Prompter
from asympo.reference.loop import VERIFIERS, run_reference
from asympo.tasks import build_task
from benchmarks.stack_job import cpu_used, run_to_end, stack_cpu, stack_up


def verifier(name: str) -> Callable[[str, str], float]:
    """The job's verifier as the reference loop runs it; others from the reward service's own registry.

    The reference loop has only `exact` in-process; the reward service's verifier (e.g. `math` for the
    SmolLM2 job) is added to its table so that all three systems score with the same code.
    """
    if name not in VERIFIERS:
        from services.reward.verifiers import resolve

        scorer = resolve(name)
        VERIFIERS[name] = lambda completion, reference: scorer(completion, reference).reward
    return VERIFIERS[name]


def _trl_prompt(prompter: Prompter, text: str):
    """What TRL is given for a problem: the plain text, or the chat messages it renders with the template."""
    task = prompter.task
    if not task.chat_template:
        return text
    system = [{"role": "system", "content": task.system_prompt}] if task.system_prompt is not None else []
    return [*system, {"role": "user", "content": text}]


def _trl_ids(tokenizer, prompt) -> list[int]:
    # How TRL 1.16 tokenizes a prompt (GRPOTrainer._tokenize_prompts), to check it sees asympo's ids.
    if isinstance(prompt, str):
        return tokenizer(text=[prompt])["input_ids"][0]
    return tokenizer.apply_chat_template(
        [prompt], add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"][0]


def run_trl(spec: JobSpec, cache: Path, work: Path, micro_batch: int | None = None) -> dict:
    """TRL's GRPOTrainer on the job: samples/s over trainer.train() alone, accuracy before and after."""
    import warnings

    from datasets import Dataset
    from transformers.utils import logging as hf_logging

    # TRL warns on import that it was tested with vLLM <= 0.31; this benchmark does not use TRL's vLLM path.
    warnings.filterwarnings("ignore", message="TRL currently supports vLLM")
    from trl import GRPOConfig, GRPOTrainer

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    algo, sampling = spec.algorithm, spec.sampling
    per_step = algo.prompts_per_step * algo.group_size
    micro = micro_batch or per_step
    if per_step % micro or micro % algo.group_size:
        raise ValueError(f"--trl-micro-batch {micro} must divide {per_step} and be a multiple of G")
    model_dir = resolve_model_path(spec, cache, progress=False)
    model, tokenizer = load_policy(model_dir, spec.model.dtype)
    prompter = Prompter.for_model(tokenizer, model_dir, spec.task)
    verify = verifier(spec.verifier)
    task = build_task(spec.task)
    # The prompts the reference loop and the stack's dispatcher draw, in their order (shuffle_dataset off).
    stream = task.train_stream(seed=spec.seed)
    problems = [next(stream) for _ in range(algo.steps * algo.prompts_per_step)]
    rows = [{"prompt": _trl_prompt(prompter, p.prompt), "reference": p.reference} for p in problems]
    for p, row in zip(problems[: algo.prompts_per_step], rows):
        if _trl_ids(tokenizer, row["prompt"]) != prompter.ids(p.prompt):
            raise RuntimeError(f"TRL would tokenize {p.prompt!r} differently from asympo")
    heldout, eval_tokens = task.heldout(), spec.eval.max_new_tokens or sampling.max_new_tokens
    initial = greedy_accuracy(model, prompter, heldout, eval_tokens, verify=verify)
    scored: list[int] = []

    def reward(completions, reference, **_) -> list[float]:
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        scored.append(len(texts))
        return [float(verify(t, r)) for t, r in zip(texts, reference)]

    # One optimizer step = one generation batch of prompts_per_step x G completions: TRL's batch sizes count
    # completions, and steps_per_generation defaults to gradient_accumulation_steps.
    config = GRPOConfig(
        output_dir=str(work / "trl"), use_cpu=True, seed=spec.seed, data_seed=spec.seed, max_steps=algo.steps,
        per_device_train_batch_size=micro, gradient_accumulation_steps=per_step // micro,
        num_generations=algo.group_size, max_completion_length=sampling.max_new_tokens,
        temperature=sampling.temperature, top_p=sampling.top_p, top_k=0, learning_rate=algo.lr,
        weight_decay=algo.weight_decay, max_grad_norm=algo.grad_clip, optim="adamw_torch",
        lr_scheduler_type="constant", warmup_steps=0, beta=0.0, num_iterations=1, shuffle_dataset=False,
        # TRL's defaults would be bf16 autocast and gradient checkpointing; asympo trains in float32 without.
        bf16=False, gradient_checkpointing=False,
        eval_strategy="no", save_strategy="no", report_to="none", logging_steps=algo.steps, disable_tqdm=True,
    )  # fmt: skip
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=Dataset.from_list(rows),
                          processing_class=tokenizer)  # fmt: skip
    t0 = time.perf_counter()
    out = trainer.train()
    wall = time.perf_counter() - t0
    trained = trainer.accelerator.unwrap_model(trainer.model)
    final = greedy_accuracy(trained, prompter, heldout, eval_tokens, verify=verify)
    samples = sum(scored)
    return {
        "samples": samples,
        "wall_seconds": wall,
        "samples_per_s": samples / wall,
        "initial_accuracy": initial,
        "final_accuracy": final,
        "optimizer_steps": trainer.state.global_step,
        "trl_train_runtime": out.metrics.get("train_runtime"),
        "trl_train_samples_per_second": out.metrics.get("train_samples_per_second"),
        "config": {
            "per_device_train_batch_size": micro,
            "gradient_accumulation_steps": per_step // micro,
            "generation_batch_size": config.generation_batch_size,
            "steps_per_generation": config.steps_per_generation,
            "loss_type": config.loss_type,
            "scale_rewards": config.scale_rewards,
        },  # fmt: skip
    }


def run_reference_system(spec: JobSpec, cache: Path) -> dict:
    """asympo's single-process reference loop; samples/s over its steps (not its model load or evaluations)."""
    verifier(spec.verifier)
    result = run_reference(spec, label="reference", cache_dir=cache, progress=False)
    algo = spec.algorithm
    samples = 0
    for step in result.steps:
        if not step.get("skipped"):
            groups = algo.prompts_per_step - (step["zero_variance_groups"] if algo.drop_zero_variance else 0)
            samples += groups * algo.group_size
    steps_s = sum(step["seconds"] for step in result.steps)
    return {
        "samples": samples,
        "wall_seconds": steps_s,
        "samples_per_s": samples / steps_s,
        "initial_accuracy": result.initial_accuracy,
        "final_accuracy": result.final_accuracy,
        "seconds_whole_run": result.seconds,
        "samples_per_s_whole_run": samples / result.seconds,
    }


def run_pipeline(spec: JobSpec, cache: Path, home: Path, gateway_port: int, engine: str) -> dict:
    """The job through `asympo up` (REST, Redis, reward, rollout pod, learner); figures from its summary."""
    with stack_up(home, gateway_port, engine, cache) as (_, client):
        before = stack_cpu(home)
        job, records, summary = run_to_end(client, spec, poll_s=3.0)
        cpu = cpu_used(before, stack_cpu(home))
    print(f"  job {summary['job_id']}: {job['state']}", file=sys.stderr)
    steps = [r for r in records if r.get("prompt_ids") is not None and not r.get("final")]
    # The summary's wall starts at the step-0 record, before the pod's engine has started for the job;
    # from the first step on is the stack's steady rate.
    later = sum(r.get("responses", 0) for r in steps[1:])
    steady = later / (steps[-1]["time"] - steps[0]["time"]) if len(steps) > 1 else None
    return {
        "samples": summary["responses_trained"],
        "wall_seconds": summary["wall_seconds"],
        "samples_per_s": summary["samples_per_s"],
        "initial_accuracy": summary["initial_accuracy"],
        "final_accuracy": summary["final_accuracy"],
        "samples_per_s_after_step_1": steady,
        "engine": engine,
        "cpu_seconds": sum(cpu.values()),
        "cpu_seconds_by_part": cpu,
        "summary": summary,  # as the stack reports it: its other throughputs, staleness, drops
    }
