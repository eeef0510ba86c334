"""Fixtures of the integration tests: a learner process, and a fresh tiny model per test module."""

import pytest

from asympo.jobs.spec import TinyModelSpec
from asympo.models.tiny import build_model, build_tokenizer
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


@pytest.fixture(scope="module")
def tiny():
    """A fresh tiny model and its tokenizer, per test module (the weights tests change and write them)."""
    tok = build_tokenizer()
    return build_model(TinyModelSpec(), tok), tok
