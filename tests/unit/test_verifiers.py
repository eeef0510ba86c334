"""Verifier logic without the service: exact, boxed extraction, the format family, the registry."""

import re

import pytest

from asympo.jobs.spec import JobSpec
from services.reward.scores import ScoreResult, error, ok
from services.reward.settings import RewardSettings
from services.reward.verifiers import (
    PluginError,
    UnknownVerifierError,
    as_score,
    load_plugins,
    register_family,
    register_verifier,
    registered_names,
    resolve,
    symbolic,
)
from services.reward.verifiers.formats import last_boxed
from services.reward.verifiers.registry import FULL_NAME, Verifier


def spec_pattern() -> str:
    """The JobSpec's `verifier` pattern, read from the model itself."""
    field = JobSpec.model_fields["verifier"]
    return next(m.pattern for m in field.metadata if getattr(m, "pattern", None))


@pytest.mark.parametrize(
    "completion, reference, status",
    [
        ("42", "42", "ok"),
        ("  42. ", "42", "ok"),
        ("$42$", "42", "ok"),
        ("1,234", "1234", "ok"),
        ("0.5", "1/2", "ok"),
        ("-3", "-3.0", "ok"),
        ("1e3", "1000", "ok"),
        ("Paris", "paris", "ok"),
        ("the answer is \\boxed{17}", "17", "ok"),  # the last box is the answer
        ("\\boxed{3} no wait \\boxed{4}", "4", "ok"),
        ("\\boxed{3} no wait \\boxed{4}", "3", "wrong"),
        ("41", "42", "wrong"),
        ("0.333", "1/3", "wrong"),  # exact means exact: no rounding
        ("the answer is 42", "42", "wrong"),  # no extraction beyond \boxed{}
        ("", "42", "unparsable"),
        ("   ", "42", "unparsable"),
        ("\\boxed{ }", "42", "unparsable"),
        ("42", "", "error"),
    ],
)
def test_exact(completion, reference, status):
    result = resolve("exact")(completion, reference)
    assert result.status == status, result
    assert result.reward == (1.0 if status == "ok" else 0.0)


@pytest.mark.parametrize(
    "text, content",
    [
        ("\\boxed{1}", "1"),
        ("a \\boxed{1} b \\boxed{2} c", "2"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # escaped braces do not close the box
        ("\\boxed {x}", "x"),
        ("\\fbox{7}", "7"),
        ("\\boxed{1} then a truncated \\boxed{2", "1"),
        ("no box", None),
        ("\\boxed{unclosed", None),
        ("", None),
    ],
)
def test_last_boxed(text, content):
    assert last_boxed(text) == content


@pytest.mark.parametrize(
    "name, completion, status, detail_part",
    [
        ("format:boxed:exact", "\\boxed{5}", "ok", ""),
        ("format:boxed:exact", "5", "unparsable", "no \\boxed{}"),
        ("format:boxed:exact", "\\boxed{}", "unparsable", "empty"),
        ("format:boxed:exact", "\\boxed{6}", "wrong", ""),
        ("format:think:exact", "<think>hmm, 2+3</think>5", "ok", ""),
        ("format:think:exact", "<think>the answer is 5</think>6", "wrong", ""),  # reasoning is not graded
        ("format:think:exact", "5", "unparsable", "<think>"),
        ("format:think:exact", "<think>5</think>  ", "unparsable", "no answer after"),
        ("format:think:exact", "<think>a</think><think>b</think>5", "unparsable", "more than one"),
        ("format:think:format:boxed:exact", "<think>x</think> so \\boxed{5}", "ok", ""),
        ("format:think:format:boxed:exact", "<think>\\boxed{5}</think> 5", "unparsable", "no \\boxed{}"),
    ],
)
def test_format_family(name, completion, status, detail_part):
    result = resolve(name)(completion, "5")
    assert (result.status, result.reward) == (status, 1.0 if status == "ok" else 0.0), result
    assert detail_part in result.detail


@pytest.mark.parametrize(
    "name, message",
    [
        ("nope", "unknown verifier 'nope'"),
        ("format:boxed:nope", "unknown verifier 'nope'"),
        ("format:square:math", "unknown format 'square'"),
        ("format:boxed", "name the verifier"),
        ("format", "unknown verifier 'format'"),
        ("Math", "malformed"),
        ("math ", "malformed"),
        ("", "malformed"),
        ("format:think:" * 20 + "math", "at most 200 characters"),
        ("nofamily:x", "unknown verifier family 'nofamily'"),
    ],
)
def test_unknown_names_list_what_exists(name, message):
    with pytest.raises(UnknownVerifierError) as e:
        resolve(name)
    assert message in str(e.value)
    for known in ("exact", "math", "format:<boxed|think>:<verifier>"):
        assert known in str(e.value)


def test_builtin_names_match_the_jobspec_pattern():
    assert FULL_NAME.pattern == spec_pattern()
    for name in ["exact", "math", "format:boxed:math", "format:think:format:boxed:exact"]:
        assert re.fullmatch(spec_pattern(), name)
        assert resolve(name).name == name
    assert set(registered_names()) >= {"exact", "math", "format:<boxed|think>:<verifier>"}


def test_register_a_user_verifier_and_use_it_inside_a_format():
    @register_verifier("unit_even", isolated=False)
    def even(completion, reference):
        return int(completion) % 2 == 0

    assert resolve("unit_even")("4", "").status == "ok"
    assert resolve("unit_even")("3", "").status == "wrong"
    assert resolve("format:think:unit_even")("<think>.</think>8", "").status == "ok"
    assert "unit_even" in registered_names()
    # A verifier that raises costs its item, with the reason, not the caller.
    bad = resolve("unit_even")("four", "")
    assert bad.status == "error" and "ValueError" in bad.detail


def test_registration_refuses_duplicates_and_bad_names():
    register_verifier("unit_once", lambda c, r: True)
    with pytest.raises(ValueError, match="already registered"):
        register_verifier("unit_once", lambda c, r: False)
    register_verifier("unit_once", lambda c, r: False, replace=True)
    assert resolve("unit_once")("", "").status == "wrong"
    for bad in ["Upper", "with:colon", "1digit", "dash-name", ""]:
        with pytest.raises(ValueError, match="must match"):
            register_verifier(bad, lambda c, r: True)
    with pytest.raises(TypeError, match="callable"):
        register_verifier("unit_not_callable", 3)
    with pytest.raises(ValueError, match="already registered"):
        register_verifier("math", lambda c, r: True)


def test_parametric_family():
    def threshold(arg: str) -> Verifier:
        limit = float(arg)  # ValueError for a bad argument becomes UnknownVerifierError
        return Verifier(f"unit_min:{arg}", lambda c, r: len(c) >= limit, isolated=False)

    register_family("unit_min", threshold, usage="unit_min:<chars>")
    assert resolve("unit_min:3")("abcd", "").status == "ok"
    assert resolve("unit_min:3")("ab", "").status == "wrong"
    with pytest.raises(UnknownVerifierError, match="usage: unit_min:<chars>"):
        resolve("unit_min:many")
    assert "unit_min:<chars>" in registered_names()


@pytest.mark.parametrize(
    "value, expected",
    [
        (True, ScoreResult(1.0, "ok")),
        (False, ScoreResult(0.0, "wrong")),
        (0.25, ScoreResult(0.25, "ok")),
        (0, ScoreResult(0.0, "wrong")),
        (-1.0, ScoreResult(-1.0, "wrong")),
        (ok("fine"), ScoreResult(1.0, "ok", "fine")),
    ],
)
def test_return_values_become_scores(value, expected):
    assert as_score(value, "v") == expected


@pytest.mark.parametrize(
    "value", [None, "1", float("nan"), float("inf"), [1.0], ScoreResult(float("nan"), "ok")]
)
def test_nonsense_return_values_are_errors(value):
    result = as_score(value, "v")
    assert result.status == "error" and "returned" in result.detail


def test_long_details_from_user_verifiers_are_clipped():
    assert len(as_score(ScoreResult(1.0, "ok", "x" * 10_000), "v").detail) <= 300


def test_score_result_refuses_unknown_status_and_clips_details():
    with pytest.raises(ValueError, match="status must be one of"):
        ScoreResult(1.0, "great")
    assert len(error("x" * 10_000).detail) <= 300


def test_plugins_that_cannot_be_imported_are_named():
    with pytest.raises(PluginError, match="no_such_plugin_module"):
        load_plugins(["no_such_plugin_module"])


def test_math_in_process():
    m = resolve("math")
    assert m("so \\boxed{\\dfrac{1}{2}}", "0.5").status == "ok"
    assert m("\\boxed{2x+2}", "2(x+1)").status == "ok"
    assert m("\\boxed{3}", "0.5").status == "wrong"
    assert m("no numbers here", "0.5").status == "unparsable"
    assert m("\\boxed{3}", "\\frac{").status == "error"


def reasoning(chars: int) -> str:
    """A long chain of reasoning, LaTeX and all, of at least `chars` characters."""
    step = (
        "Step {i}: $x_{{{i}}} = \\frac{{{i}}}{{{j}}}$, so the total is {i} + {j} = {k}; check the next term. "
    )
    text, i = "", 0
    while len(text) < chars:
        text += step.format(i=i, j=i + 2, k=2 * i + 2)
        i += 1
    return text


def test_the_default_completion_cap_lets_long_reasoning_through():
    assert RewardSettings.model_fields["max_completion_chars"].default >= 64 * 1024


@pytest.mark.parametrize("name", ["math", "exact", "format:boxed:exact", "format:boxed:math"])
def test_long_completions_are_scored(name):
    long = reasoning(64 * 1024)
    assert resolve(name)(long + " so the answer is \\boxed{42}.", "42").status == "ok"
    assert resolve(name)(long + " so the answer is \\boxed{41}.", "42").status == "wrong"


@pytest.fixture
def parsed(monkeypatch):
    """The texts the math verifier hands to math-verify's parse."""
    seen = []
    parse = symbolic.parse
    monkeypatch.setattr(symbolic, "parse", lambda text, **kw: seen.append(text) or parse(text, **kw))
    return seen


def test_math_parses_only_the_last_box(parsed):
    result = resolve("math")(reasoning(64 * 1024) + " \\boxed{\\frac{1}{2}} and \\boxed{", "0.5")
    assert result.status == "ok"
    assert parsed == ["\\boxed{\\frac{1}{2}}"]  # math-verify's cost no longer grows with the reasoning


def test_math_reads_the_end_of_a_long_completion_without_a_box(parsed):
    long = reasoning(64 * 1024)
    assert resolve("math")(long + " The final answer is $42$.", "42").status == "ok"
    # A repetition loop cut at the length limit: minutes of regex backtracking if parsed whole.
    assert resolve("math")("12345 " * 40_000, "42").status == "wrong"
    assert [len(text) for text in parsed] == [symbolic.UNBOXED_TAIL_CHARS] * 2


@pytest.mark.parametrize(
    "completion, reference, status",
    [
        ("\\boxed{3} no wait \\boxed{4}", "4", "ok"),  # the last box, as for `exact` (was read as "3,4")
        ("\\boxed{3} no wait \\boxed{4}", "3", "wrong"),
        ("\\fbox{7}", "7", "ok"),
        ("so x = 5 and \\boxed{ }", "5", "ok"),  # an empty box: math-verify reads the text, as before
        ("The final answer is $42$.", "42", "ok"),  # no box: math-verify reads the text, as before
    ],
)
def test_math_reads_the_last_box(completion, reference, status):
    assert resolve("math")(completion, reference).status == status
