"""The protos: checked-in stubs are current, and the bus contract (docs/architecture.md, "Messages") holds."""

import pickle
import struct

import pytest
from google.protobuf import descriptor_pb2

from asympo.proto import codegen
from asympo.proto.v1 import bus_pb2, learner_pb2, reward_pb2, rollout_pb2

# Field names and numbers are a contract: tools outside the project read them.
BUS_CONTRACT = {
    "SamplingParams": {"max_new_tokens": 1, "temperature": 2, "top_p": 3, "seed": 4, "stop_token_ids": 5},
    "PromptTask": {
        "job_id": 1, "prompt_id": 2, "prompt": 3, "prompt_token_ids": 4, "reference": 5,
        "group_size": 6, "sampling": 7, "dispatch_version": 8, "verifier": 9,
    },
    "Completion": {"token_ids": 1, "text": 2, "reward": 3, "finish_reason": 4, "reward_status": 5},
    "Timings": {"queued_s": 1, "generate_s": 2, "score_s": 3, "reload_s": 4, "publish_s": 5},
    "ScoredGroup": {
        "job_id": 1, "prompt_id": 2, "prompt_token_ids": 3, "completions": 4, "gen_version_start": 5,
        "gen_version_end": 6, "pod": 7, "timings": 8,
    },
    "PolicyVersion": {
        "job_id": 1, "version": 2, "uri": 3, "sha256": 4, "bytes": 5, "step": 6, "created_at": 7,
    },
    "ControlEvent": {"job_id": 1, "kind": 2, "key": 3, "value": 4},
    # Held-out evaluation through the rollout pods (docs/architecture.md, "Evaluation").
    "EvalPrompt": {"prompt_id": 1, "prompt_token_ids": 2, "reference": 3},
    "EvalTask": {
        "job_id": 1, "eval_id": 2, "version": 3, "step": 4, "prompts": 5, "greedy": 6, "samples": 7,
        "sampling": 8, "verifier": 9, "chunks": 10,
    },
    "EvalResult": {
        "job_id": 1, "eval_id": 2, "version": 3, "served_version": 4, "step": 5, "greedy_rewards": 6,
        "sample_means": 7, "sample_best": 8, "chunks": 9, "pod": 10, "seconds": 11, "generated_tokens": 12,
    },
}  # fmt: skip


def test_checked_in_stubs_match_the_protos(tmp_path):
    written = codegen.generate(tmp_path)
    assert len(written) == 3 * len(codegen.PROTO_FILES)
    stale = [p.name for p in written if p.read_bytes() != (codegen.STUB_DIR / p.name).read_bytes()]
    assert not stale, f"stubs are stale against proto/: {stale}; run `make proto` and commit the result"


@pytest.mark.parametrize("message", sorted(BUS_CONTRACT))
def test_bus_field_names_and_numbers_are_the_contract(message):
    fields = {f.name: f.number for f in bus_pb2.DESCRIPTOR.message_types_by_name[message].fields}
    for name, number in BUS_CONTRACT[message].items():
        assert fields.get(name) == number, (
            f"{message}.{name} must be field {number}, found {fields.get(name)}"
        )


def test_completions_carry_no_log_probs_and_field_6_stays_retired():
    """The bus never carries behavior log-probs: the field is gone and its number and name are reserved."""
    proto = descriptor_pb2.DescriptorProto()
    bus_pb2.Completion.DESCRIPTOR.CopyToProto(proto)
    assert "behavior_logprobs" not in bus_pb2.Completion.DESCRIPTOR.fields_by_name
    assert [(r.start, r.end) for r in proto.reserved_range] == [(6, 7)]  # end is exclusive
    assert list(proto.reserved_name) == ["behavior_logprobs"]
    # A completion from a pod of an earlier release still decodes; its log-probs are ignored.
    old = bus_pb2.Completion(token_ids=[4, 5], reward=1.0).SerializeToString()
    old += bytes([6 << 3 | 2, 8]) + struct.pack("<2f", -0.5, -1.25)  # field 6, packed floats
    c = bus_pb2.Completion.FromString(old)
    assert list(c.token_ids) == [4, 5] and c.reward == 1.0


def test_services_have_the_rpcs_of_the_architecture():
    rpcs = {
        (svc.name, m.name)
        for mod in (reward_pb2, rollout_pb2, learner_pb2)
        for svc in mod.DESCRIPTOR.services_by_name.values()
        for m in svc.methods
    }
    assert rpcs == {
        ("RewardService", "Score"),
        ("RolloutService", "Status"),
        ("RolloutService", "Generate"),
        ("RolloutService", "FetchWeights"),
        ("LearnerService", "Status"),
        ("LearnerService", "FetchWeights"),
    }
    fetch = learner_pb2.DESCRIPTOR.services_by_name["LearnerService"].methods_by_name["FetchWeights"]
    assert fetch.server_streaming and not fetch.client_streaming
    # The peer relay speaks the learner's stream: one receiver for both sources.
    relay = rollout_pb2.DESCRIPTOR.services_by_name["RolloutService"].methods_by_name["FetchWeights"]
    assert relay.server_streaming and not relay.client_streaming
    assert relay.input_type is fetch.input_type and relay.output_type is fetch.output_type


def test_messages_round_trip_and_pickle():
    group = bus_pb2.ScoredGroup(
        job_id="j1",
        prompt_id="p7",
        prompt_token_ids=[1, 2, 3],
        completions=[bus_pb2.Completion(token_ids=[4, 5], text="45", reward=1.0, reward_status="ok")],
        gen_version_start=3,
        gen_version_end=4,
        timings=bus_pb2.Timings(generate_s=0.5),
    )
    assert bus_pb2.ScoredGroup.FromString(group.SerializeToString()) == group
    assert pickle.loads(pickle.dumps(group)) == group
    assert type(group).__module__ == "asympo.proto.v1.bus_pb2"
