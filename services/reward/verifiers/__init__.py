"""Verifiers: functions that score one completion against a reference answer, registered by name.

Naming (every name matches the JobSpec's `verifier` pattern `^[a-z][a-z0-9_]*(:[A-Za-z0-9_.:-]+)?$`):

- `exact` — the last `\\boxed{}` answer, or else the whole completion, equals the reference after
  normalization (whitespace, `$`, a trailing period, thousands separators, case) or as the same exact
  number (`0.5` = `1/2`); numbers past `asympo.tasks.answers`' bounds (a thousand characters, exponents
  beyond ±1000) compare as text. The box is looked for in the last 262,144 characters only.
- `math` — math-verify extracts the final answer (the last `\\boxed{}` alone if there is one, else from
  the last 10,000 characters "the answer is …", then the last expression) and compares it with the
  reference symbolically and numerically: `\\frac{1}{2}` = `0.5`, `2(x+1)` = `2x+2`, intervals, sets,
  percentages.
- `format:<fmt>:<verifier>` — reward 0 with status `unparsable` unless the completion has the format,
  else `<verifier>`'s score. Formats: `boxed` (a non-empty `\\boxed{}` answer; the verifier sees the
  whole completion) and `think` (`<think>…</think>` then an answer; the verifier sees only the
  answer). Formats nest: `format:think:format:boxed:math`.
- your own: `register_verifier("name", fn)` (or `@register_verifier("name")`) with
  `fn(completion, reference)` returning a ScoreResult, a bool (ok/wrong) or a float reward; put it in
  a module and name the module in `ASYMPO_REWARD_PLUGINS` so the service and its workers import it.
  Parametric families `prefix:<arg>` register with `register_family`.

Every verifier runs in the service's worker pool under the item's deadline, so none can hold up the
service's event loop. A verifier that raises, or returns anything else, yields status `error` for that
item only.
"""

from . import exact, formats, symbolic  # noqa: F401  (registers the built-ins)
from .registry import (
    Family,
    PluginError,
    UnknownVerifierError,
    Verifier,
    as_score,
    catalog,
    describe,
    load_plugins,
    register_family,
    register_verifier,
    registered_names,
    resolve,
)

__all__ = [
    "Family",
    "PluginError",
    "UnknownVerifierError",
    "Verifier",
    "as_score",
    "catalog",
    "describe",
    "load_plugins",
    "register_family",
    "register_verifier",
    "registered_names",
    "resolve",
]
