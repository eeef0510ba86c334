"""The LearnerService gRPC servicer (rank 0): training status, and weight streaming for pods."""

from __future__ import annotations

from collections.abc import Callable

from asympo.proto.v1 import learner_pb2, learner_pb2_grpc
from asympo.runtime.grpc_server import GrpcServer
from asympo.weights.transfer import fetch_weights_rpc

from .job import JobRun
from .settings import LearnerSettings

SERVICE_NAME = learner_pb2.DESCRIPTOR.services_by_name["LearnerService"].full_name


class LearnerServicer(learner_pb2_grpc.LearnerServiceServicer):
    """Answers from the job run in progress (none between jobs)."""

    def __init__(self, settings: LearnerSettings, current: Callable[[], JobRun | None]):
        self.settings = settings
        self.current = current

    async def Status(self, request, context) -> learner_pb2.LearnerStatus:
        """Job, step, version and the staleness of the groups trained since this process started."""
        run = self.current()
        if run is None:
            return learner_pb2.LearnerStatus()
        counts = run.staleness_counts
        n = sum(counts.values())
        return learner_pb2.LearnerStatus(
            job_id=run.job_id,
            step=run.progress.step,
            version=run.progress.version,
            staleness=learner_pb2.StalenessStats(
                mean=sum(k * v for k, v in counts.items()) / n if n else 0.0,
                max=max(counts, default=0),
                histogram=counts,
                dropped_stale=run.progress.dropped.get("stale", 0),
            ),
        )

    def serving(self) -> str | None:
        """The job whose weights this learner hands out: the one it runs (or last ran), else --job-id."""
        run = self.current()
        return run.job_id if run is not None else self.settings.job_id

    async def FetchWeights(self, request, context):
        """Stream the files of a stored version of the job served here; anything else is refused."""
        async for chunk in fetch_weights_rpc(
            request, context, self.settings.weight_store, serving=self.serving()
        ):
            yield chunk


def grpc_server(settings: LearnerSettings, current: Callable[[], JobRun | None]) -> GrpcServer:
    """Rank 0's gRPC server, not yet started: LearnerService behind the token check, TLS per settings."""
    server = GrpcServer.for_service(settings)
    server.add_service(
        learner_pb2_grpc.add_LearnerServiceServicer_to_server,
        LearnerServicer(settings, current),
        SERVICE_NAME,
    )
    return server
