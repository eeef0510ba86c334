"""Verifiers on hostile completions: number parsing stays bounded, box finding is one pass, the catalog."""

import json
import random
import re

import pytest

from asympo.jobs.verifier_catalog import VerifierCatalog
from asympo.tasks import answers
from asympo.tasks.answers import MAX_EXPONENT, MAX_NUMBER_CHARS, as_number, exact_match, normalize_answer
from services.reward.verifiers import catalog, formats, register_family, register_verifier, resolve
from services.reward.verifiers.formats import BOX_SCAN_CHARS, last_boxed
from services.reward.verifiers.registry import Verifier

MB = 1_000_000


@pytest.mark.parametrize(
    "text",
    [
        "1e100000000",
        "1E+100000000",
        "-1e-100000000",
        f"1e{MAX_EXPONENT + 1}",
        f"0.5e-{MAX_EXPONENT + 1}",
        "1" * (MAX_NUMBER_CHARS + 1),
        "1" * MB,
        "9" * 500 + "/" + "7" * 501,
        f"1e{'0' * 2000}1",  # a small exponent written with absurdly many digits is still too long
    ],
)
def test_absurd_numbers_are_not_read_as_numbers(text, monkeypatch):
    built = []
    monkeypatch.setattr(answers, "Fraction", lambda s: built.append(s))
    assert as_number(text) is None
    assert built == []  # refused before any big integer could be built
    assert not exact_match(text, "5")
    assert exact_match(text, text)  # still equal to itself, as text


@pytest.mark.parametrize(
    "text, value",
    [
        (f"1e{MAX_EXPONENT}", 10**MAX_EXPONENT),
        (f"1e-{MAX_EXPONENT}", answers.Fraction(1, 10**MAX_EXPONENT)),
        ("1e+0003", 1000),
        ("9" * MAX_NUMBER_CHARS, 10**MAX_NUMBER_CHARS - 1),
        ("2.5E2", 250),
        ("-3/4", answers.Fraction(-3, 4)),
    ],
)
def test_numbers_within_the_bounds_are_exact(text, value):
    assert as_number(text) == value


@pytest.mark.parametrize(
    "completion, reference, status",
    [
        ("\\boxed{1e100000000}", "5", "wrong"),
        ("1e100000000", "5", "wrong"),
        ("so it is \\boxed{1e100000000}", "1e100000000", "ok"),
        ("\\boxed{" + "9" * MB + "}", "9", "wrong"),
        ("\\boxed{" * 150_000, "1", "wrong"),  # no complete box: the whole completion is the answer
        ("{" * (MB - 20) + "\\boxed{1}", "1", "ok"),  # braces outside every box do not matter
    ],
)
def test_exact_answers_hostile_completions(completion, reference, status):
    assert resolve("exact")(completion, reference).status == status


class CountingPattern:
    """Stands in for last_boxed's token regex: counts scans and tokens, and offers nothing but finditer."""

    def __init__(self, pattern: re.Pattern):
        self.pattern = pattern
        self.scans: list[int] = []  # the length of each text scanned
        self.tokens = 0

    def finditer(self, text: str):
        self.scans.append(len(text))
        for m in self.pattern.finditer(text):
            self.tokens += 1
            yield m


ADVERSARIAL = {
    "unclosed boxes": "\\boxed{" * 150_000,
    "nested boxes closing": "\\boxed{" * 70_000 + "}" * 70_000,
    "open braces": "\\boxed{" + "{" * MB,
    "closed boxes": "\\boxed{1}" * 110_000,
    "boxes without braces": "\\boxed   " * 110_000,
    "escaped braces": "\\boxed{" + "\\{" * 500_000,
    "closing braces only": "}" * MB,
}


@pytest.mark.parametrize("window", [BOX_SCAN_CHARS, 2 * MB])
@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_last_boxed_is_one_pass_over_a_bounded_window(name, window, monkeypatch):
    # Linear by construction: one finditer over at most `window` characters, constant work per token.
    # Counting that is exact where a wall clock on a shared machine is not.
    text = ADVERSARIAL[name]
    counter = CountingPattern(formats._TOKEN)
    monkeypatch.setattr(formats, "_TOKEN", counter)
    monkeypatch.setattr(formats, "BOX_SCAN_CHARS", window)
    last_boxed(text)
    scanned = text[-window:]
    assert counter.scans == [len(scanned)]
    assert counter.tokens <= scanned.count("{") + scanned.count("}")


def quadratic_last_boxed(text: str) -> str | None:
    """The former last_boxed, kept as the reference: from each box start (last first), scan to its end."""
    for start in reversed([m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]):
        depth = 1
        for i in range(start, len(text)):
            c = text[i]
            if c == "{" and text[i - 1] != "\\":
                depth += 1
            elif c == "}" and text[i - 1] != "\\":
                depth -= 1
                if depth == 0:
                    return text[start:i]
    return None


@pytest.mark.parametrize(
    "text, content",
    [
        ("\\boxed{a \\boxed{b}}", "b"),  # nested: the box that starts last
        ("\\boxed{a \\boxed{b}", "b"),  # the outer box never closes
        ("\\boxed{1} \\boxed{a \\boxed{b} c", "b"),
        ("\\boxed{1} \\boxed{a \\boxed{b c", "1"),
        ("\\boxed{x\\}y}", "x\\}y"),
        ("\\boxed{x\\\\}", None),  # the brace after an escaped backslash still counts as escaped
        ("} } \\boxed{2} }", "2"),  # stray braces outside boxes do not matter
        ("\\boxed{1} {{{ \\boxed{2", "1"),
        ("\\boxed\n\t{3}", "3"),
        ("\\boxed{}", ""),
    ],
)
def test_last_boxed_edge_cases(text, content):
    assert last_boxed(text) == content == quadratic_last_boxed(text)


def test_last_boxed_agrees_with_the_quadratic_reference_on_random_text():
    rng = random.Random(20240611)
    pieces = [" ", *"\\boxed{ \\boxed \\fbox{ \\fbox \\ { } \\{ \\} a 1 boxed".split()]
    for _ in range(5000):
        text = "".join(rng.choices(pieces, k=rng.randint(0, 30)))
        assert last_boxed(text) == quadratic_last_boxed(text), text


def test_last_boxed_is_linear_in_unclosed_boxes():
    # 2.1 MB of unclosed boxes: the quadratic scan would visit ~10^11 characters and not finish for hours.
    assert last_boxed("\\boxed{" * 300_000) is None
    assert last_boxed("\\boxed{1} " + "\\boxed{" * 30_000) == "1"
    assert last_boxed("{" * 1_000_000 + "\\boxed{" + "{" * 1_000_000) is None


def test_only_the_end_of_a_completion_is_searched_for_a_box():
    filler = "x" * BOX_SCAN_CHARS
    assert last_boxed("\\boxed{1}" + filler) is None
    assert last_boxed("\\boxed{1}" + filler[:-9]) == "1"
    assert last_boxed("\\boxed{1}" + filler + "\\boxed{2}") == "2"
    # A box opened before the window is not one: its closing brace alone is a stray one.
    assert last_boxed("\\boxed{" + filler + "} \\boxed{3}") == "3"


@pytest.mark.parametrize(
    "name, completion",
    [
        ("format:think:exact", "<think>" + "</thin" * 150_000),
        ("format:think:exact", " " * MB + "<think>"),
        ("format:think:exact", "<think>" * 140_000 + "</think>5"),
        ("format:boxed:exact", "\\boxed" + " " * MB),
        ("exact", "1," * 450_000 + "1"),  # almost a thousands-separated number
        ("exact", "1,000" * 200_000 + "x"),
    ],
)
def test_the_other_parsers_refuse_hostile_text(name, completion):
    # These finish because their regexes are linear (no nested quantifiers, anchored alternatives); a
    # catastrophic one would not finish at all on a megabyte, whatever the machine.
    assert resolve(name)(completion, "5").status in ("wrong", "unparsable")


def test_normalization_reads_thousands_separators_only_in_a_whole_number():
    assert normalize_answer("1,234,567.5") == "1234567.5"
    assert normalize_answer("1,2345") == "1,2345"


def test_the_catalog_lists_names_and_family_prefixes():
    register_verifier("bounds_plain", lambda c, r: 1.0, replace=True)
    found = catalog()
    assert {"exact", "math", "bounds_plain"} <= set(found.names)
    assert found.families["format"] == "format:<boxed|think>:<verifier>"
    assert "bounds_fam" not in found.families
    register_family(
        "bounds_fam", lambda arg: Verifier(f"bounds_fam:{arg}", lambda c, r: 1.0), usage="bounds_fam:<n>"
    )
    assert catalog().families["bounds_fam"] == "bounds_fam:<n>"


@pytest.mark.parametrize(
    "name, problem",
    [
        ("exact", None),
        ("format:boxed:math", None),
        ("format:anything", None),  # a family's argument is the reward service's to check
        (
            "exakt",
            "unknown verifier 'exakt'; the reward service offers: exact, format:<boxed|think>:<verifier>, math",
        ),
        ("fmt:boxed:exact", "unknown verifier 'fmt:boxed:exact'"),
        ("format", "unknown verifier 'format'"),  # a family's prefix alone is not a verifier
    ],
)
def test_catalog_problems(name, problem):
    offered = VerifierCatalog(("exact", "math"), {"format": "format:<boxed|think>:<verifier>"})
    found = offered.problem(name)
    assert found == problem if problem is None else found.startswith(problem)


def test_the_catalog_round_trips_through_json():
    offered = VerifierCatalog(("exact", "math"), {"format": "format:<boxed|think>:<verifier>"})
    stored = json.loads(offered.to_json())
    assert stored["names"] == ["exact", "math"] and stored["published_at"] > 0
    assert VerifierCatalog.from_json(offered.to_json().encode()) == offered
    for garbled in ("[]", "{}", '{"names": "exact", "families": {}}', "not json", b"\xff"):
        with pytest.raises(ValueError):
            VerifierCatalog.from_json(garbled)
