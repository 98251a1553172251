"""Reading the search's JSON files back from disk: the whole schema is checked before anything is used.

``state.json`` (see :mod:`mindcv.nas.runner`) is rewritten after every evaluated candidate and resumed
from; a file that is valid JSON but of the wrong shape (a list instead of an object, a candidate that is a
string, a missing key, an accuracy given as a string, a negative or NaN latency, an architecture string
that does not parse, a strategy state that does not fit the search space) raises
:class:`SearchStateError` naming the file and the JSON path of the bad value, never an
``AttributeError``/``KeyError``/``TypeError`` from deep inside the search.
"""

import json
import math
import os
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

from ..errors import InvalidArgumentError
from ..models.arch import decode_arch_def, encode_arch_def, format_arch_string, parse_arch_string

__all__ = ["SearchStateError", "StateChecker", "read_json", "set_aside", "check_search_state", "RESTART_HINT"]

RESTART_HINT = "pass --restart to start over (the old file is kept as {name}.corrupt-<time>)"


class SearchStateError(InvalidArgumentError):
    """A search file on disk is unreadable or does not have the expected shape.

    A user error (one line and exit code 2 in search.py), and a ValueError for callers that catch that.
    """


def read_json(path: str, error: Callable[[str], Exception]) -> Any:
    """Parse a JSON file; any failure (bad bytes, bad JSON, absurd numbers, nesting) becomes ``error(reason)``."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError, too many digits, not UTF-8/16/32
        raise error(f"not valid JSON ({' '.join(str(err).split())})") from None
    except RecursionError:
        raise error("not valid JSON (nested too deeply)") from None


def set_aside(path: str) -> str:
    """Rename a corrupted file to ``<path>.corrupt-<time>`` (kept for inspection) and return the new name."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = f"{path}.corrupt-{stamp}"
    n = 1
    while os.path.exists(target):
        n += 1
        target = f"{path}.corrupt-{stamp}-{n}"
    os.replace(path, target)
    return target


def _jpath(base: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{base}[{key}]"
    if isinstance(key, str) and key.isidentifier():
        return f"{base}.{key}"
    return f"{base}[{json.dumps(key)}]"


class StateChecker:
    """Type and range checks of JSON values; the first failure raises ``error(json_path, problem)``.

    Args:
        error: builds the exception from the JSON path (``$.records[3].accuracy``) and the problem.
    """

    def __init__(self, error: Callable[[str, str], Exception]) -> None:
        self.error = error

    def fail(self, where: str, problem: str):
        raise self.error(where, problem)

    @staticmethod
    def show(value: Any) -> str:
        text = json.dumps(value, allow_nan=True, default=str) if not isinstance(value, str) else repr(value)
        return text if len(text) <= 60 else text[:57] + "..."

    def obj(self, value: Any, where: str, required: Iterable[str] = ()) -> Dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(where, f"expected an object, got {self.show(value)}")
        for key in required:
            if key not in value:
                self.fail(_jpath(where, key), "missing")
        return value

    def array(self, value: Any, where: str, length: Optional[int] = None, max_length: Optional[int] = None) -> List:
        if not isinstance(value, list):
            self.fail(where, f"expected a list, got {self.show(value)}")
        if length is not None and len(value) != length:
            self.fail(where, f"expected a list of {length} entries, got {len(value)}")
        if max_length is not None and len(value) > max_length:
            self.fail(where, f"expected at most {max_length} entries, got {len(value)}")
        return value

    def text(self, value: Any, where: str, choices: Optional[Sequence[str]] = None) -> str:
        if not isinstance(value, str):
            self.fail(where, f"expected a string, got {self.show(value)}")
        if choices is not None and value not in choices:
            self.fail(where, f"expected one of {sorted(choices)}, got {value!r}")
        return value

    def flag(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            self.fail(where, f"expected true or false, got {self.show(value)}")
        return value

    def integer(self, value: Any, where: str, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(where, f"expected an integer, got {self.show(value)}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
            self.fail(where, f"expected an integer in {bounds}, got {value}")
        return value

    def number(
        self,
        value: Any,
        where: str,
        lo: float = -math.inf,
        hi: float = math.inf,
        lo_open: bool = False,
        nan: bool = False,
        finite: bool = True,
    ) -> float:
        """A JSON number (not a bool); NaN only if ``nan``; +-inf only if not ``finite``; within the bounds."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(where, f"expected a number, got {self.show(value)}")
        if isinstance(value, float) and math.isnan(value):
            if nan:
                return value
            self.fail(where, "expected a number, got NaN")
        if finite and isinstance(value, float) and math.isinf(value):
            self.fail(where, f"expected a finite number, got {value}")
        if value < lo or value > hi or (lo_open and value == lo):
            bound = f"{'(' if lo_open else '['}{lo}, {hi}]"
            self.fail(where, f"expected a number in {bound}, got {value}")
        return value

    def arch(self, value: Any, where: str) -> str:
        """An architecture string; returns its canonical form."""
        self.text(value, where)
        try:
            return format_arch_string(encode_arch_def(decode_arch_def(parse_arch_string(value))))
        except (ValueError, TypeError, AttributeError) as err:
            self.fail(where, f"not an architecture string ({' '.join(str(err).split())})")

    def decisions(self, value: Any, where: str, num_choices: Sequence[int]) -> List[int]:
        self.array(value, where, length=len(num_choices))
        for i, (d, n) in enumerate(zip(value, num_choices)):
            self.integer(d, f"{where}[{i}]", 0, n - 1)
        return value

    def rng_state(self, value: Any, where: str, bit_generator: str) -> Dict[str, Any]:
        """A numpy ``bit_generator.state`` of a PCG64 generator (numpy accepts out-of-range numbers silently)."""
        self.obj(value, where, ("bit_generator", "state", "has_uint32", "uinteger"))
        self.text(value["bit_generator"], f"{where}.bit_generator", (bit_generator,))
        inner = self.obj(value["state"], f"{where}.state", ("state", "inc"))
        for key in ("state", "inc"):
            self.integer(inner[key], f"{where}.state.{key}", 0, 2**128 - 1)
        self.integer(value["has_uint32"], f"{where}.has_uint32", 0, 1)
        self.integer(value["uinteger"], f"{where}.uinteger", 0, 2**32 - 1)
        return value


# fields of a proxy + latency result (cache entries, references, records)
def _check_result(c: StateChecker, value: Any, where: str) -> None:
    required = ("accuracy", "loss", "params", "train_seconds", "latency_ms", "latency_p10_ms", "latency_p90_ms")
    c.obj(value, where, required)
    c.number(value["accuracy"], f"{where}.accuracy", 0.0, 100.0)
    c.number(value["loss"], f"{where}.loss", nan=True, finite=False)  # a diverged candidate records NaN
    c.integer(value["params"], f"{where}.params", 0)
    c.number(value["train_seconds"], f"{where}.train_seconds", 0.0)
    c.number(value["latency_ms"], f"{where}.latency_ms", 0.0, lo_open=True)
    for key in ("latency_p10_ms", "latency_p90_ms"):  # NaN in lookup-table mode
        c.number(value[key], f"{where}.{key}", 0.0, nan=True)


def check_search_state(
    state: Any,
    c: StateChecker,
    strategies: Mapping[str, Any],
    space: Any,
    references: Mapping[str, str],
) -> None:
    """Check a whole search state against the search it is resumed by.

    Args:
        state: the parsed JSON.
        c: the checker (its ``error`` names the file).
        strategies: name -> strategy object of this search (each checks its own ``state_dict``).
        space: the :class:`~mindcv.nas.search_space.SearchSpace` (decision vectors must fit it and decode to
            the recorded architecture).
        references: reference label -> its canonical architecture string.
    """
    c.obj(state, "$", ("fingerprint", "records", "cache", "references"))
    c.text(state["fingerprint"], "$.fingerprint")

    cache = c.obj(state["cache"], "$.cache")
    for arch, result in cache.items():
        where = _jpath("$.cache", arch)
        c.arch(arch, where)
        _check_result(c, result, where)

    refs = c.obj(state["references"], "$.references")
    for label, ref in refs.items():
        where = _jpath("$.references", label)
        c.text(label, where, tuple(references))
        c.obj(ref, where, ("arch", "cached"))
        if c.arch(ref["arch"], f"{where}.arch") != c.arch(references[label], label):
            c.fail(f"{where}.arch", f"expected the {label} architecture {references[label]!r}")
        c.flag(ref["cached"], f"{where}.cached")
        _check_result(c, ref, where)

    num_choices = space.num_choices
    records = c.array(state["records"], "$.records")
    for i, record in enumerate(records):
        where = f"$.records[{i}]"
        c.obj(record, where, ("step", "strategy", "sample", "arch", "decisions", "reward", "cached"))
        c.integer(record["step"], f"{where}.step", i, i)
        c.text(record["strategy"], f"{where}.strategy", tuple(strategies))
        c.integer(record["sample"], f"{where}.sample", 0)
        arch = c.arch(record["arch"], f"{where}.arch")
        c.decisions(record["decisions"], f"{where}.decisions", num_choices)
        if space.arch_string(record["decisions"]) != arch:
            c.fail(f"{where}.arch", "does not match the record's decisions")
        c.number(record["reward"], f"{where}.reward")
        c.flag(record["cached"], f"{where}.cached")
        _check_result(c, record, where)

    if "strategies" in state:
        saved = c.obj(state["strategies"], "$.strategies")
        for name, strategy_state in saved.items():
            where = _jpath("$.strategies", name)
            c.text(name, where, tuple(strategies))
            strategies[name].check_state_dict(strategy_state, c, where)
