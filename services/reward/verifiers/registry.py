"""The verifier registry: names → scoring functions, parametric families, plugin modules."""

from __future__ import annotations

import importlib
import math
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from asympo.jobs.verifier_catalog import VerifierCatalog

from ..scores import ScoreResult, clip_detail, error, ok, wrong

NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# The JobSpec's `verifier` field; every name the registry resolves must also pass it.
FULL_NAME = re.compile(r"^[a-z][a-z0-9_]*(:[A-Za-z0-9_.:-]+)?$")

# Names come from requests; a bound keeps a deeply nested `format:...` name from recursing without end.
MAX_NAME_CHARS = 200

VerifierFn = Callable[[str, str], "ScoreResult | bool | float"]


@dataclass(frozen=True)
class Verifier:
    """A named scoring function `fn(completion, reference)`, run in the worker pool under a deadline."""

    name: str
    fn: VerifierFn
    # Kept so plugins that pass it keep working, but it changes nothing: every verifier runs in the pool.
    # A "cheap" verifier in the service process blocked every request while one hostile completion
    # (exact on `1e10000000`: 13.5 s) ran, and a pool round trip costs far less than that risk.
    isolated: bool = True
    description: str = ""

    def __call__(self, completion: str, reference: str) -> ScoreResult:
        """Score one completion; a verifier that raises or returns nonsense yields status `error`."""
        try:
            value = self.fn(completion, reference)
        except Exception as e:  # a verifier bug must cost one item, not the request
            return error(f"verifier {self.name!r} raised {type(e).__name__}: {e}")
        return as_score(value, self.name)


@dataclass(frozen=True)
class Family:
    """Parametric verifiers named `prefix:<argument>`, built on demand by `factory(argument)`."""

    prefix: str
    factory: Callable[[str], Verifier]
    usage: str
    description: str = ""


class UnknownVerifierError(ValueError):
    """A verifier name that is malformed or resolves to nothing; the message lists what exists."""


class PluginError(ImportError):
    """A plugin module named in the settings could not be imported."""


_lock = threading.Lock()
_verifiers: dict[str, Verifier] = {}
_families: dict[str, Family] = {}
_resolved: dict[str, Verifier] = {}


def as_score(value: object, name: str) -> ScoreResult:
    """A verifier's return value as a ScoreResult: a ScoreResult, a bool (ok/wrong) or a finite reward."""
    if isinstance(value, ScoreResult):
        if not math.isfinite(value.reward):
            return error(f"verifier {name!r} returned a non-finite reward {value.reward}")
        return replace(value, detail=clip_detail(value.detail))
    if isinstance(value, bool):
        return ok() if value else wrong()
    if isinstance(value, (int, float)) and math.isfinite(value):
        # A bare number carries no status: positive reward reads as a (partly) right answer.
        return ok(reward=float(value)) if value > 0 else wrong(reward=float(value))
    return error(clip_detail(f"verifier {name!r} returned {type(value).__name__} {value!r}"))


def register_verifier(
    name: str,
    fn: VerifierFn | None = None,
    *,
    isolated: bool = True,
    description: str = "",
    replace: bool = False,
):
    """Register `fn(completion, reference)` under `name`; also usable as `@register_verifier(name)`.

    `isolated` is accepted for older plugins and ignored: every verifier runs in the worker pool."""
    if not NAME.match(name):
        raise ValueError(f"verifier name {name!r} must match {NAME.pattern}")

    def add(f: VerifierFn) -> VerifierFn:
        if not callable(f):
            raise TypeError(f"verifier {name!r} must be callable, got {type(f).__name__}")
        with _lock:
            if not replace and (name in _verifiers or name in _families):
                raise ValueError(f"verifier {name!r} is already registered (pass replace=True to override)")
            _verifiers[name] = Verifier(name, f, isolated, description or (f.__doc__ or "").strip())
            _resolved.clear()
        return f

    return add if fn is None else add(fn)


def register_family(
    prefix: str, factory: Callable[[str], Verifier], usage: str, description: str = ""
) -> None:
    """Register parametric verifiers `prefix:<arg>`; `factory(arg)` builds one or raises ValueError."""
    if not NAME.match(prefix):
        raise ValueError(f"verifier family {prefix!r} must match {NAME.pattern}")
    with _lock:
        if prefix in _verifiers or prefix in _families:
            raise ValueError(f"verifier name {prefix!r} is already registered")
        _families[prefix] = Family(prefix, factory, usage, description)
        _resolved.clear()


def registered_names() -> list[str]:
    """Every plain verifier name and every family's usage pattern, sorted."""
    with _lock:
        return sorted([*_verifiers, *(f.usage for f in _families.values())])


def catalog() -> VerifierCatalog:
    """The registered names and family prefixes, as the reward service publishes them for the gateway."""
    with _lock:
        return VerifierCatalog(
            names=tuple(sorted(_verifiers)), families={p: f.usage for p, f in sorted(_families.items())}
        )


def describe() -> str:
    """Registered verifiers as one comma-separated string, for error messages."""
    return ", ".join(registered_names())


def resolve(name: str) -> Verifier:
    """The verifier called `name` (`exact`, `format:boxed:math`, …), or UnknownVerifierError."""
    found = _resolved.get(name)
    if found is not None:
        return found
    if not isinstance(name, str) or len(name) > MAX_NAME_CHARS or not FULL_NAME.match(name):
        raise UnknownVerifierError(
            f"malformed verifier name {name!r} (must match {FULL_NAME.pattern}, at most {MAX_NAME_CHARS} "
            f"characters); registered: {describe()}"
        )
    prefix, sep, arg = name.partition(":")
    if not sep:
        verifier = _verifiers.get(name)
        if verifier is None:
            raise UnknownVerifierError(f"unknown verifier {name!r}; registered: {describe()}")
    else:
        family = _families.get(prefix)
        if family is None:
            raise UnknownVerifierError(
                f"unknown verifier family {prefix!r} in {name!r}; registered: {describe()}"
            )
        try:
            verifier = family.factory(arg)
        except UnknownVerifierError as e:
            raise UnknownVerifierError(f"in {name!r}: {e}") from None
        except ValueError as e:
            raise UnknownVerifierError(
                f"bad verifier {name!r} (usage: {family.usage}): {e}; registered: {describe()}"
            ) from None
    with _lock:
        # Bounded: names come from requests, and a client sending endless variants must not grow memory.
        if len(_resolved) < 4096:
            _resolved[name] = verifier
    return verifier


def load_plugins(modules: Sequence[str]) -> None:
    """Import each plugin module by dotted path; plugins register their verifiers when imported."""
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as e:
            raise PluginError(f"cannot import reward plugin {module!r}: {type(e).__name__}: {e}") from e
