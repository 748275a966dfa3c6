"""Config values checked by OmegaConf against a schema, with the range rules written beside each key's type.

A section's schema is made from the code that takes its keys: a dataclass (`TrainerSettings`, a command's settings)
is one already; a builder's keyword parameters (`build_model`, a loss class, a schedule function) become one. So each
key, its type and its default are declared once, where they are used. OmegaConf checks the types (and converts what
it can, e.g. "8" to 8); a range rule rides on the type hint as `Annotated[int, Rule(...)]` and is checked after. A
wrong key or value is a ConfigError naming the key, the value and what is allowed.
"""

import dataclasses
import difflib
import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from deeplab.errors import ConfigError


@dataclass(frozen=True)
class Rule:
    """A range rule a type hint carries: `Annotated[int, Rule(lambda v: v >= 1, "an integer >= 1")]`."""

    test: Callable[[Any], bool]
    allowed: str  # what the sentence says is allowed


def ranged(base, test: Callable[[Any], bool], allowed: str):
    return Annotated[base, Rule(test, allowed)]


# the rules several keys share
Count = ranged(int, lambda v: v >= 1, "an integer >= 1")
NonNegativeInt = ranged(int, lambda v: v >= 0, "an integer >= 0")
NonNegative = ranged(float, lambda v: v >= 0, "a number >= 0")
Positive = ranged(float, lambda v: v > 0, "a number > 0")
Ratio = ranged(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")
BelowOne = ranged(float, lambda v: 0 <= v < 1, "a number in [0, 1)")

# keys other frameworks' configs use, and what does their work here: the sentence for such an unknown key
FOREIGN_KEYS = {
    "reduce_zero_label": "mmsegmentation's key (mask value 0 ignored, the others one class lower) is "
                         "dataset.label_map here: dataset.label_map='{0: 255, 1: 0, 2: 1, ...}' (one entry per "
                         "class) with dataset.ignore_index=255",
    "img_scale": "mmsegmentation's key (the size images are resized to before the random scaling) has no "
                 "counterpart here: images are scaled by a factor drawn from augment.scale_range (e.g. [0.5, 2.0]) "
                 "of their own size, then cropped to augment.crop_size ([height, width])",
    "ratio_range": "mmsegmentation's key is augment.scale_range here (e.g. augment.scale_range=[0.5,2.0])",
}

_PLAIN = (int, float, bool, str)
_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
_PLURALS = {int: "integers", float: "numbers", bool: "true/false values", str: "strings"}


def _unpack(hint) -> tuple[Any, Rule | None]:
    """The type under an `Annotated` hint (also inside `X | None`), and its Rule."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        return args[0], next((e for e in args[1:] if isinstance(e, Rule)), None)
    if origin in (typing.Union, types.UnionType) and any(typing.get_origin(a) is Annotated for a in args):
        unpacked = [_unpack(a) for a in args]
        rule = next(r for _, r in unpacked if r is not None)
        return typing.Union[tuple(base for base, _ in unpacked)], rule
    return hint, None


def require(hint, key: str, value, *, shown=None) -> None:
    """A ConfigError `<key>=<value>: must be <allowed>` unless `value` (not None) passes the rule of `hint`: the same
    rule for code called directly as for a config checked by `checked`."""
    _, rule = _unpack(hint)
    if rule is None or value is None:
        return
    try:
        ok = rule.test(value)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"{key}={value if shown is None else shown!r}: must be {rule.allowed}")


def _storable(hint):
    """The nearest type OmegaConf can hold and check: plain types, their Optional and Union, and lists of them;
    anything else (a tuple of fixed length, a mapping, a union with a list) is Any, left to the code that takes it."""
    hint, _ = _unpack(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in _PLAIN:
        return hint
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1 and type(None) in args:
            base = _storable(inner[0])
            return Any if base is Any else typing.Optional[base]
        if all(a in _PLAIN for a in inner):
            joined = inner[0] if len(inner) == 1 else typing.Union[tuple(inner)]
            return typing.Optional[joined] if type(None) in args else joined
        return Any
    if origin in (list, tuple, Sequence) and args and (origin is not tuple or args[-1] is Ellipsis):
        item = _unpack(args[0])[0]
        return list[item] if item in _PLAIN else list[Any]
    return Any


def describe(hint) -> str:
    """What a value of `hint` may be, in words: "an integer", "a number or null", "a list of numbers"."""
    hint, rule = _unpack(hint)
    if rule is not None:
        return rule.allowed
    hint = _storable(hint)
    args = typing.get_args(hint)
    if hint in _WORDS:
        return _WORDS[hint]
    if typing.get_origin(hint) is typing.Union:
        words = [describe(a) for a in args if a is not type(None)]
        return " or ".join(words) + (" or null" if type(None) in args else "")
    if typing.get_origin(hint) is list:
        return f"a list of {_PLURALS[args[0]]}" if args[0] in _PLURALS else "a list"
    return "a value"


def keyword_hints(fn: Callable, passed: Sequence[str] = ()) -> dict[str, Any]:
    """{keyword: its type hint, Annotated rule included (Any where it has none)} of a function, a class's __init__
    or a dataclass, but `passed` (those its caller gives itself)."""
    plain_class = inspect.isclass(fn) and not dataclasses.is_dataclass(fn)
    hints = typing.get_type_hints(fn.__init__ if plain_class else fn, include_extras=True)
    return {key: hints.get(key, Any) for key, p in inspect.signature(fn).parameters.items()
            if key not in passed and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def checked(section: str, values: Mapping, hints: Mapping[str, Any] | Callable, *, where: str = "",
            unknown: str = "check the spelling, or drop it") -> dict:
    """`values` (a config section; "" for a command's own keys) typed by `hints` ({key: type hint}, or a callable
    whose keywords give them: `keyword_hints`), their range rules checked: a plain dict of the given keys only.

    Otherwise a ConfigError: `<section>.<key>: no such key in the <section> section<where> (known: ...); [did you
    mean ...?] <unknown>`, or `<section>.<key>=<value>: must be <what is allowed>`. The key and the value come from
    OmegaConf's exception's attributes; nothing parses its wording."""
    hints = keyword_hints(hints) if callable(hints) else hints
    # a dataclass with one required field per key, typed as OmegaConf can check
    schema = dataclasses.make_dataclass("Schema", [(key, _storable(hint), dataclasses.field(default=MISSING))
                                                   for key, hint in hints.items()])
    known = list(hints)
    prefix = f"{section}." if section else ""
    try:
        typed = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(schema), dict(values)), resolve=True)
    except ConfigKeyError as exc:
        if str(exc.key) in FOREIGN_KEYS:
            raise ConfigError(f"{prefix}{exc.key}: {FOREIGN_KEYS[str(exc.key)]}") from None
        near = difflib.get_close_matches(str(exc.key), known, n=1)
        hint = f"did you mean {prefix}{near[0]}? " if near else ""
        raise ConfigError(f"{prefix}{exc.key}: no such key in the {section or 'command'} section{where} (known: "
                          f"{', '.join(sorted(known))}); {hint}{unknown}") from None
    except ValidationError as exc:
        key = str(exc.full_key).split("[")[0]
        raise ConfigError(f"{prefix}{exc.full_key}={exc.value!r}: must be {describe(hints.get(key, Any))}") from None
    out = {key: typed[key] for key in values}
    for key, value in out.items():
        require(hints.get(key, Any), f"{prefix}{key}", value, shown=values[key])
    return out
