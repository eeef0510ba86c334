"""The learner's side of the rollout protocol, played by a test: a weight store, PolicyVersions and
PromptTasks written to Redis, ScoredGroups and pod records read back; and rollout pods as processes."""

import asyncio
import json
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from asympo.bus import GROUP_ROLLOUT, JobKeys, connect, dispatch, publish
from asympo.jobs.records import JobRecord, list_pods, put_job
from asympo.proto.v1 import bus_pb2
from asympo.tasks import build_task, exact_match
from asympo.weights.store import MANIFEST, write_version
from tests.support.service_process import ServiceProcess


class Learner:
    """The learner's half of the protocol, driven synchronously from the test."""

    def __init__(self, url, store, spec, job_id, model_path):
        self.url, self.store, self.spec = url, store, spec
        self.keys = JobKeys(job_id)
        self.model = AutoModelForCausalLM.from_pretrained(model_path)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.problems = build_task(spec.task).heldout()
        self._run(put_job(self._client(), JobRecord(job_id=job_id, spec=spec, state="running")))

    def _client(self):
        self._redis = connect(self.url)
        return self._redis

    def _run(self, coro):
        async def go():
            try:
                return await coro
            finally:
                await self._redis.aclose()

        return asyncio.run(go())

    def publish_version(self, version, corrupt=False, wrong_probes=False, keep=3):
        pv, path = write_version(
            self.store, self.keys.job_id, version, version, self.model, self.tokenizer, keep=keep
        )
        if wrong_probes:
            # The fingerprint is not part of the digest: the files verify, but the served log-probs
            # will not match what the manifest claims, as with weights the engine failed to load.
            manifest = json.loads((path / MANIFEST).read_text())
            for probe in manifest["probes"]:
                probe["logprobs"] = [lp - 0.5 for lp in probe["logprobs"]]
            (path / MANIFEST).write_text(json.dumps(manifest))
        if corrupt:
            # Cut short, as by a full disk: a pod reading the store in place trusts the content the
            # learner hashed, but sees the size differ from the manifest's (a same-size flip needs
            # full verification: tests/integration/test_weight_trust.py).
            weights = path / "model.safetensors"
            data = weights.read_bytes()
            weights.write_bytes(data[: len(data) // 2])
        self._run(publish(self._client(), self.keys.policy, [pv]))
        return path

    def train_a_little(self, steps=5):
        """Change the weights with real SFT steps so a new version serves different log-probs."""
        opt = torch.optim.AdamW(self.model.parameters(), lr=3e-3)
        self.model.train()
        for p in self.problems[:steps]:
            ids = self.tokenizer(p.prompt + p.reference).input_ids + [self.tokenizer.eos_token_id]
            x = torch.tensor([ids])
            loss = self.model(input_ids=x, labels=x).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.model.eval()

    def dispatch(self, start, count, group_size=8):
        tasks = [
            bus_pb2.PromptTask(
                job_id=self.keys.job_id,
                prompt_id=f"p{i}",
                prompt=p.prompt,
                prompt_token_ids=self.tokenizer(p.prompt).input_ids,
                reference=p.reference,
                group_size=group_size,
                sampling=bus_pb2.SamplingParams(max_new_tokens=6, temperature=1.0, top_p=1.0, seed=i),
                verifier="exact",
            )  # fmt: skip
            for i, p in enumerate(self.problems[start : start + count], start)
        ]
        self._run(dispatch(self._client(), self.keys, tasks))
        return tasks

    def groups(self, expected, timeout_s=240):
        """Wait until `expected` ScoredGroups are on the stream; return them decoded."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            entries = self._run(self._client().xrange(self.keys.groups))
            if len(entries) >= expected:
                return [bus_pb2.ScoredGroup.FromString(f[b"pb"]) for _, f in entries]
            time.sleep(0.3)
        raise AssertionError(f"only {len(entries)} of {expected} groups arrived")

    def pods(self):
        return {p.pod: p for p in self._run(list_pods(self._client(), self.keys.job_id))}

    def wait_pod(self, pod, predicate, timeout_s=240):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.pods().get(pod)
            if status is not None and predicate(status):
                return status
            time.sleep(0.3)
        raise AssertionError(f"pod {pod} never reached the expected state; last: {self.pods().get(pod)}")

    def pending(self, consumer=None):
        async def go():
            client = self._client()
            rows = await client.xpending_range(self.keys.prompts, GROUP_ROLLOUT, "-", "+", 1000)
            return [r for r in rows if consumer is None or r["consumer"].decode() == consumer]

        return self._run(go())


def start_pod(learner, reward_service, engine, name, tmp_path, *extra):
    return ServiceProcess(
        "services.rollout", "--engine", engine, "--pod", name, "--job-id", learner.keys.job_id,
        "--redis-url", learner.url, "--reward-target", reward_service.target, "--poll-s", "0.2",
        "--heartbeat-s", "0.5", "--weights-dir", str(tmp_path / f"weights-{name}"), *extra,
    )  # fmt: skip


def check_groups(groups, tasks, pod_names):
    by_id = {t.prompt_id: t for t in tasks}
    assert sorted(g.prompt_id for g in groups) == sorted(by_id), "missing or duplicate groups"
    for g in groups:
        task = by_id[g.prompt_id]
        assert len(g.completions) == task.group_size and g.pod in pod_names
        assert list(g.prompt_token_ids) == list(task.prompt_token_ids)
        for c in g.completions:
            assert c.reward == float(exact_match(c.text, task.reference))
            expected = "ok" if c.reward == 1.0 else ("unparsable" if not c.text.strip() else "wrong")
            assert c.reward_status == expected, (c.text, c.reward_status)
            assert c.finish_reason in ("stop", "length") and len(c.token_ids) >= 1
        assert g.timings.generate_s > 0 and g.timings.score_s > 0
