"""The RolloutService gRPC servicer: Status of the pod, Generate for evaluation and smoke tests, and
FetchWeights, relaying the versions this pod fetched to peer pods."""

from __future__ import annotations

import asyncio

import grpc

from asympo.proto.v1 import bus_pb2, rollout_pb2, rollout_pb2_grpc
from asympo.runtime.grpc_server import GrpcServer
from asympo.weights.transfer import fetch_weights_rpc

from .batches import MAX_GROUP_SIZE
from .engines import GenRequest
from .pod import RolloutPod
from .served import NotServing
from .settings import RolloutSettings

SERVICE_NAME = rollout_pb2.DESCRIPTOR.services_by_name["RolloutService"].full_name


def over_cap(request: rollout_pb2.GenerateRequest, s: RolloutSettings) -> str | None:
    """Why a Generate request exceeds the pod's caps (naming the setting), or None if it does not."""
    n = request.n or 1
    if not 1 <= n <= MAX_GROUP_SIZE:
        return f"n must be in 1..{MAX_GROUP_SIZE}, got {n}"
    if len(request.prompts) > s.generate_max_prompts:
        return f"{len(request.prompts)} prompts; the limit is {s.generate_max_prompts} (generate_max_prompts)"
    if len(request.prompts) * n > s.generate_max_completions:
        return (
            f"{len(request.prompts)} prompts × n={n} completions; the limit is {s.generate_max_completions} "
            "(generate_max_completions)"
        )
    if request.sampling.max_new_tokens > s.generate_max_new_tokens:
        return (
            f"max_new_tokens {request.sampling.max_new_tokens}; the limit is {s.generate_max_new_tokens} "
            "(generate_max_new_tokens)"
        )
    for i, prompt in enumerate(request.prompts):
        if len(prompt) > s.generate_max_prompt_chars:
            return (
                f"prompts[{i}] has {len(prompt)} characters; the limit is {s.generate_max_prompt_chars} "
                "(generate_max_prompt_chars)"
            )
    return None


def grpc_server(pod: RolloutPod) -> GrpcServer:
    """The pod's gRPC server, not yet started: RolloutService behind the token check, TLS per settings."""
    server = GrpcServer.for_service(pod.settings)
    server.add_service(
        rollout_pb2_grpc.add_RolloutServiceServicer_to_server, RolloutServicer(pod), SERVICE_NAME
    )
    return server


class RolloutServicer(rollout_pb2_grpc.RolloutServiceServicer):
    """Answers from the pod's live state; Generate shares the engine with the batch loop."""

    def __init__(self, pod: RolloutPod):
        self.pod = pod

    async def Status(self, request, context) -> rollout_pb2.RolloutStatus:
        """Which job and version this pod serves, with which engine, how fast."""
        pod = self.pod
        return rollout_pb2.RolloutStatus(
            pod=pod.settings.pod,
            job_id=pod.job.job_id if pod.job else "",
            served_version=pod.model.version.version if pod.model.version else -1,
            weights_sha256=pod.model.version.sha256 if pod.model.version else "",
            engine=pod.model.engine.name if pod.model.engine else "",
            tokens_per_s=pod.rate.per_s(),
        )

    async def Generate(self, request: rollout_pb2.GenerateRequest, context) -> rollout_pb2.GenerateResponse:
        """n completions per prompt with the served weights (no rewards)."""
        pod = self.pod
        n = request.n or 1
        # Checked before the engine is touched: an oversized request costs nothing but this answer.
        problem = over_cap(request, pod.settings)
        if problem is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        sp = request.sampling
        async with pod.model.lock:
            try:
                pod.model.serving()
            except NotServing as exc:
                # A broken engine holds weights of no known version: answering from it would be a lie.
                code = (
                    grpc.StatusCode.UNAVAILABLE if pod.model.broken else grpc.StatusCode.FAILED_PRECONDITION
                )
                await context.abort(code, str(exc))
            tokenizer = pod.model.engine.tokenizer
            requests = [
                GenRequest.from_sampling(
                    tokenizer(p).input_ids, n, sp, seed=sp.seed, default_max_new_tokens=64
                )
                for p in request.prompts
            ]
            if any(not r.prompt_token_ids for r in requests):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty prompt")
            # temperature 0 = greedy, as in vLLM; the hf engine treats it the same way below.
            groups = await asyncio.to_thread(pod.model.engine.generate, requests) if requests else []
            version = pod.model.version.version
        return rollout_pb2.GenerateResponse(
            outputs=[
                rollout_pb2.PromptCompletions(
                    completions=[
                        bus_pb2.Completion(token_ids=s.token_ids, text=s.text, finish_reason=s.finish_reason)
                        for s in group
                    ]
                )
                for group in groups
            ],
            served_version=version,
        )

    async def FetchWeights(self, request, context):
        """Relay a complete fetched copy (--weights-dir) of the served job's version to a peer pod."""
        s = self.pod.settings
        if not s.advertise_address:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"pod {s.pod} does not serve versions to peers (no advertise_address)",
            )
        job = self.pod.job.job_id if self.pod.job else None
        async for chunk in fetch_weights_rpc(
            request, context, s.weights_dir, serving=job, who="pod", fetched_only=True
        ):
            yield chunk
