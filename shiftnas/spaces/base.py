"""Declarative search spaces and the `ArchConfig` that names one subnet of a space.

A space is an ordered list of *decisions*. Each decision has a name, a tuple of candidates
(sorted ascending, so candidate 0 is the smallest and prefix masks follow the order), a
*kind* (the decision type: the architecture generator has one head per kind) and optionally
a gate: a depth decision and a layer index, the decision only counting when that depth is
larger than the index. An `ArchConfig` holds the values of the *active* decisions only, so
two configs that build the same network compare equal.
"""
from __future__ import annotations

import difflib
import json
import random
import reprlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

__all__ = ["Decision", "SearchSpace", "ArchConfig", "register_space", "get_space", "list_spaces"]

_SPACES: dict[str, "SearchSpace"] = {}
_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 60  # user values in errors: one short line, however long
_repr.maxlong = 40


def _r(value: Any) -> str:
    return _repr.repr(value)


@dataclass(frozen=True)
class Decision:
    """One architectural choice: `name` picks one of `choices` (ascending)."""

    name: str
    kind: str
    choices: tuple
    gate: tuple[str, int] | None = None  # (depth decision, layer index): active iff depth > index

    def __post_init__(self) -> None:
        if len(self.choices) == 0:
            raise ValueError(f"decision {self.name!r} has no choices")
        if list(self.choices) != sorted(self.choices):
            raise ValueError(f"decision {self.name!r}: choices must be ascending, got {self.choices}")

    def index(self, value: Any) -> int:
        for i, c in enumerate(self.choices):
            if c == value:
                return i
        raise ValueError(
            f"{self.name}={_r(value)} is not in the search space; allowed values: {list(self.choices)}"
        )


@dataclass(frozen=True)
class SearchSpace:
    """A search space: its decisions plus the fixed hyper-parameters of its supernet."""

    name: str
    family: str  # "vit" or "cnn"
    decisions: tuple[Decision, ...]
    hparams: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""
    describe_fn: Any = None  # ArchConfig -> short string for tables

    def describe(self, arch: "ArchConfig") -> str:
        return self.describe_fn(arch) if self.describe_fn else str(arch.to_dict())

    def __post_init__(self) -> None:
        names = [d.name for d in self.decisions]
        if len(set(names)) != len(names):
            raise ValueError(f"space {self.name!r} has duplicate decision names")
        pos = {n: i for i, n in enumerate(names)}
        for d in self.decisions:
            if d.gate is not None and pos.get(d.gate[0], len(names)) >= pos[d.name]:
                raise ValueError(f"decision {d.name!r} is gated by {d.gate[0]!r}, which must come first")

    # -- lookup -------------------------------------------------------------------------------
    def decision(self, name: str) -> Decision:
        for d in self.decisions:
            if d.name == name:
                return d
        close = difflib.get_close_matches(name, [d.name for d in self.decisions], n=3) if len(name) < 200 else []
        raise ValueError(f"space {self.name!r} has no decision {_r(name)}; close matches: {close}")

    @property
    def kinds(self) -> tuple[str, ...]:
        """Decision types in first-appearance order (one generator head per kind)."""
        seen: dict[str, None] = {}
        for d in self.decisions:
            seen.setdefault(d.kind, None)
        return tuple(seen)

    def is_active(self, d: Decision, values: Mapping[str, Any]) -> bool:
        return d.gate is None or values[d.gate[0]] > d.gate[1]

    # -- constructing configs -------------------------------------------------------------------
    def _make(self, pick) -> "ArchConfig":
        values: dict[str, Any] = {}
        for d in self.decisions:
            if self.is_active(d, values):
                values[d.name] = pick(d)
        return ArchConfig(self.name, tuple(values.items()))

    def sample(self, rng: random.Random | None = None) -> "ArchConfig":
        """Every decision uniform and independent (the AutoFormer / SPOS sampler)."""
        rng = rng if rng is not None else random.Random()
        return self._make(lambda d: rng.choice(d.choices))

    def min(self) -> "ArchConfig":
        return self._make(lambda d: d.choices[0])

    def max(self) -> "ArchConfig":
        return self._make(lambda d: d.choices[-1])

    def from_indices(self, indices: Mapping[str, int]) -> "ArchConfig":
        """Config from candidate indices of every decision (inactive ones are ignored)."""
        return self._make(lambda d: d.choices[int(indices[d.name])])

    def indices(self, arch: "ArchConfig") -> dict[str, int]:
        """Candidate index of every decision; inactive decisions get index 0."""
        self.check(arch)
        vals = arch.to_dict()
        return {d.name: (d.index(vals[d.name]) if d.name in vals else 0) for d in self.decisions}

    def enumerate(self, limit: int = 100_000) -> Iterator["ArchConfig"]:
        """Every distinct config (only for small spaces: raises past `limit`)."""
        if self.size() > limit:
            raise ValueError(f"space {self.name!r} has {self.size():.3g} configs, over limit={limit}")

        def rec(i: int, values: dict[str, Any]):
            if i == len(self.decisions):
                yield ArchConfig(self.name, tuple(values.items()))
                return
            d = self.decisions[i]
            if not self.is_active(d, values):
                yield from rec(i + 1, values)
                return
            for c in d.choices:
                values[d.name] = c
                yield from rec(i + 1, values)
                del values[d.name]

        yield from rec(0, {})

    def size(self) -> int:
        """Number of distinct configs (counted over the gating structure)."""
        # Count by recursion over depth decisions only: gated decisions multiply in.
        gates = {e.gate[0] for e in self.decisions if e.gate is not None}

        def rec(i: int, values: dict[str, Any]) -> int:
            if i == len(self.decisions):
                return 1
            d = self.decisions[i]
            if not self.is_active(d, values):
                return rec(i + 1, values)
            if d.name not in gates:
                return len(d.choices) * rec(i + 1, values)
            total = 0
            for c in d.choices:
                values[d.name] = c
                total += rec(i + 1, values)
                del values[d.name]
            return total

        return rec(0, {})

    # -- validation -------------------------------------------------------------------------------
    def validate(self, values: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
        """Check a name->value mapping against the space; return it in canonical order."""
        values = dict(values)
        out: list[tuple[str, Any]] = []
        for d in self.decisions:
            if not self.is_active(d, dict(out)):
                if d.name in values:
                    gate, idx = d.gate  # type: ignore[misc]
                    raise ValueError(
                        f"{self.name}: {d.name!r} is set but inactive ({gate}={dict(out)[gate]} "
                        f"uses layers 0..{dict(out)[gate] - 1}); remove it"
                    )
                continue
            if d.name not in values:
                raise ValueError(f"{self.name}: missing decision {d.name!r} (allowed: {list(d.choices)})")
            v = values.pop(d.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(
                    f"{self.name}: {d.name}={_r(v)} must be a number; allowed values: {list(d.choices)}"
                )
            d.index(v)
            out.append((d.name, type(d.choices[0])(v)))
        if values:
            unknown = sorted(values, key=str)
            names = [d.name for d in self.decisions]
            shown = unknown[:5]  # a document with 10,000 stray keys still gets a short message
            close = ", ".join(f"{_r(u)}: {difflib.get_close_matches(str(u), names, n=2) if len(str(u)) < 200 else []}"
                              for u in shown)  # str(u): YAML keys may be numbers
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise ValueError(f"{self.name}: unknown decision(s) [{', '.join(map(_r, shown))}]{more}; close matches: {{{close}}}")
        return tuple(out)

    def check(self, arch: "ArchConfig") -> None:
        """Raise if `arch` belongs to another space."""
        if not isinstance(arch, ArchConfig):
            raise ValueError(f"expected an ArchConfig of space {self.name!r}, got {type(arch).__name__}")
        if arch.space != self.name:
            raise ValueError(f"arch is from space {arch.space!r}, expected space {self.name!r}")


@dataclass(frozen=True)
class ArchConfig:
    """One subnet: the values of the active decisions of `space`, validated on construction."""

    space: str
    values: tuple[tuple[str, Any], ...]

    def __post_init__(self) -> None:
        values = get_space(self.space).validate(dict(self.values))
        object.__setattr__(self, "values", values)
        # Not a field (eq/hash ignore it): supernet forwards look decisions up per layer.
        object.__setattr__(self, "_map", dict(values))

    def __getitem__(self, name: str) -> Any:
        try:
            return self._map[name]
        except KeyError:
            get_space(self.space).decision(name)  # unknown name -> error with close matches
            raise KeyError(f"decision {name!r} is inactive in this arch") from None

    def get(self, name: str, default: Any = None) -> Any:
        return self._map.get(name, default)

    def to_dict(self) -> dict[str, Any]:
        return dict(self._map)

    @classmethod
    def from_dict(cls, space: str, values: Mapping[str, Any]) -> "ArchConfig":
        return cls(space, tuple(values.items()))

    def to_json(self) -> str:
        return json.dumps({"space": self.space, "arch": self.to_dict()}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "ArchConfig":
        return cls._from_obj(_loads(text, json.loads, "JSON"))

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump({"space": self.space, "arch": self.to_dict()}, sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> "ArchConfig":
        import yaml

        return cls._from_obj(_loads(text, yaml.safe_load, "YAML"))

    @classmethod
    def _from_obj(cls, obj: Any) -> "ArchConfig":
        if not isinstance(obj, dict) or set(obj) != {"space", "arch"} or not isinstance(obj["arch"], dict):
            raise ValueError('an arch document must be a mapping {"space": NAME, "arch": {decision: value}}')
        if not isinstance(obj["space"], str):
            raise ValueError(f"'space' must be a space name, got {_r(obj['space'])}")
        return cls.from_dict(obj["space"], obj["arch"])

    def short(self) -> str:
        """Compact one-line form for tables."""
        return get_space(self.space).describe(self)


def _loads(text: str, fn, what: str) -> Any:
    try:
        return fn(text)
    except Exception as e:  # noqa: BLE001 - parser errors differ per library
        # YAML errors span lines (context, snippet, problem): keep the problem, on one line
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise ValueError(f"not valid {what}: {getattr(e, 'problem', None) or first}") from None


def register_space(space: SearchSpace) -> SearchSpace:
    _SPACES[space.name] = space
    return space


def get_space(name: str) -> SearchSpace:
    if isinstance(name, SearchSpace):
        return name
    try:
        return _SPACES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown search space {_r(name)}; known spaces: {list_spaces()}") from None


def list_spaces() -> list[str]:
    return sorted(_SPACES)
