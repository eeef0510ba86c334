"""Fixtures of the integration tests that run a learner process."""

import pytest

from tests.support.learner_run import LearnerRun


@pytest.fixture
async def learner_run(redis, redis_server, tmp_path, tiny_cache, tiny_model_path, example_spec, job_keys):
    runs = []

    def make(job_id: str | None = None, **overrides) -> LearnerRun:
        spec = example_spec.model_copy(deep=True)
        for dotted, value in overrides.items():
            section, name = dotted.split("__")
            setattr(getattr(spec, section), name, value)
        run = LearnerRun(redis, redis_server.url, tmp_path, tiny_cache, spec, job_id or job_keys.job_id)
        runs.append(run)
        return run

    yield make
    for run in runs:
        await run.stop_sampler()
        if run.learner is not None:
            run.learner.kill()
