"""Tasks: seeded arithmetic with a fixed held-out set, dataset loading, answer matching."""

import itertools
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from asympo.jobs.spec import ArithmeticTaskSpec, DatasetTaskSpec
from asympo.tasks import ArithmeticTask, DatasetError, DatasetTask, build_task, exact_match, load_records


def _solve(prompt: str) -> str:
    expr = prompt.removesuffix("=")
    for op in "+*":
        if op in expr:
            a, b = expr.split(op)
            return str(int(a) + int(b) if op == "+" else int(a) * int(b))
    a, b = expr.split("-", 1) if not expr.startswith("-") else expr[1:].split("-", 1)
    return str(int(a) - int(b))


def test_heldout_is_fixed_sized_and_correct():
    spec = ArithmeticTaskSpec(digits=2, operators=["+"], heldout_size=200)
    a, b = ArithmeticTask(spec).heldout(), ArithmeticTask(spec).heldout()
    assert a == b and len(a) == 200 and len({p.prompt for p in a}) == 200
    for p in a:
        lhs = p.prompt.removesuffix("=").split("+")
        assert all(10 <= int(x) <= 99 for x in lhs)
        assert p.reference == _solve(p.prompt)


@pytest.mark.parametrize("ops", [["+"], ["-"], ["*"], ["+", "-", "*"]])
def test_train_stream_never_yields_heldout_and_ids_are_unique(ops):
    task = ArithmeticTask(ArithmeticTaskSpec(digits=1, operators=ops, heldout_size=20))
    held = {p.prompt for p in task.heldout()}
    drawn = list(itertools.islice(task.train_stream(seed=0), 2000))
    assert not held & {p.prompt for p in drawn}
    assert len({p.prompt_id for p in drawn}) == len(drawn)
    assert all(p.reference == _solve(p.prompt) for p in drawn)
    assert set(task.alphabet) >= set("".join(p.prompt + p.reference for p in drawn))


def test_train_stream_is_seeded():
    task = ArithmeticTask(ArithmeticTaskSpec())
    first = lambda seed: [p.prompt for p in itertools.islice(task.train_stream(seed), 50)]  # noqa: E731
    assert first(1) == first(1) and first(1) != first(2)


def test_heldout_depends_on_task_seed_only():
    assert (
        ArithmeticTask(ArithmeticTaskSpec(seed=1)).heldout() != ArithmeticTask(ArithmeticTaskSpec()).heldout()
    )


def test_max_answer_chars():
    assert ArithmeticTask(ArithmeticTaskSpec(digits=2, operators=["+"])).max_answer_chars() == 3
    assert ArithmeticTask(ArithmeticTaskSpec(digits=2, operators=["*", "-"])).max_answer_chars() == 4


@pytest.mark.parametrize(
    ("completion", "reference", "match"),
    [
        ("132", "132", True),
        (" 132\n", "132", True),
        ("132.", "132", True),
        ("0132", "132", True),
        ("132.0", "132", True),
        ("1,320", "1320", True),
        ("0.5", "1/2", True),
        ("$7$", "7", True),
        ("-3", "-3", True),
        ("Paris", "paris", True),
        ("133", "132", False),
        ("13 2", "132", False),
        ("", "132", False),
        ("", "", False),
        ("1/0", "1/0", True),
        ("abc", "132", False),
    ],
)
def test_exact_match(completion, reference, match):
    assert exact_match(completion, reference) is match


def _write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


RECORDS = [{"q": f"What is {i}+{i}?", "a": str(2 * i), "uid": f"r{i}"} for i in range(30)]


def test_jsonl_dataset_with_template_and_split(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", RECORDS)
    spec = DatasetTaskSpec(
        path=str(path),
        prompt_field="q",
        answer_field="a",
        id_field="uid",
        template="Q: {q}\nA:",
        heldout_size=5,
    )
    task = build_task(spec)
    held = task.heldout()
    assert len(held) == 5 and held[0].prompt.startswith("Q: What is")
    train = list(itertools.islice(task.train_stream(seed=0), 50))
    assert not {p.prompt for p in held} & {p.prompt for p in train}
    assert len({p.prompt_id for p in train}) == 50  # epoch suffix keeps ids unique
    assert train[0].prompt_id.endswith("@e0") and train[-1].prompt_id.endswith("@e1")
    assert all(p.reference == str(int(p.prompt.split()[3].split("+")[0]) * 2) for p in train)


def test_parquet_and_json_files_give_the_same_records(tmp_path):
    pq.write_table(pa.Table.from_pylist(RECORDS), tmp_path / "d.parquet")
    (tmp_path / "d.json").write_text(json.dumps({"data": RECORDS}))
    assert load_records(str(tmp_path / "d.parquet")) == RECORDS == load_records(str(tmp_path / "d.json"))


def test_separate_heldout_file(tmp_path):
    train = _write_jsonl(tmp_path / "train.jsonl", RECORDS[:20])
    held = _write_jsonl(tmp_path / "test.jsonl", RECORDS[20:])
    task = DatasetTask(
        DatasetTaskSpec(
            path=str(train), heldout_path=str(held), prompt_field="q", answer_field="a", template="{q}"
        )
    )
    assert [p.prompt for p in task.heldout()] == [r["q"] for r in RECORDS[20:]]


@pytest.mark.parametrize(
    ("content", "spec_kwargs", "message"),
    [
        ('{"q": "x", "a": "1"}\n{not json}\n', {}, r"d.jsonl:2: not valid JSON"),
        ('{"q": "x"}\n', {}, "record 0 has no answer field 'a'"),
        (
            '{"q": "x", "a": "1"}\n',
            {"template": "{question}"},
            "template field 'question' is not in record 0",
        ),
        ('{"q": "x", "a": "1"}\n{"q": "y", "a": "2"}\n', {"heldout_size": 5}, "cannot give 5 held-out"),
        ('["x", 1]\n', {}, "record 0 is a list"),
        ("", {}, "no records"),
    ],
)
def test_bad_datasets_get_clear_errors(tmp_path, content, spec_kwargs, message):
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    kwargs = {"prompt_field": "q", "answer_field": "a", "template": "{q}", "heldout_size": 1, **spec_kwargs}
    with pytest.raises(DatasetError, match=message):
        DatasetTask(DatasetTaskSpec(path=str(path), **kwargs))


def test_missing_file_and_wrong_file_type(tmp_path):
    with pytest.raises(DatasetError, match="dataset file not found"):
        load_records(str(tmp_path / "missing.jsonl"))
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(DatasetError, match="not a dataset file"):
        load_records(str(tmp_path / "data.csv"))


def test_hub_names_fail_clearly_without_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DatasetError, match="no-such-org/no-such-dataset"):
        load_records("no-such-org/no-such-dataset")
