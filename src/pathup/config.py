"""Typed dataclass configs: the single source of defaults.

A stage's options are one ``@dataclass``; YAML files may only override its fields, and the CLI's
explicit options override the YAML. Every run writes its resolved config beside its outputs
(``save_config``).

Fields are declared with ``option(default, help, ...)`` (help text and range in the field's metadata);
``add_config_args`` turns the fields into ``--kebab-case`` options, so the CLI and the dataclass never drift apart.

Numeric options are checked once, here: ``from_dict`` (and so ``config_from_args``, the CLI and YAML
files) ends with ``validate(cfg)``, which Python callers may also call on a config they built
themselves. It raises a one-line ``OptionError`` (a ``PathUpError``) naming the field and the allowed
values; the CLI shows the field as its flag (``--kebab-name``). The rules:

* every ``float`` value (also inside ``list[float]`` / ``Optional[float]`` fields) must be finite: nan,
  inf and -inf are refused unless the field's metadata says ``"finite": False`` (then only nan is refused);
* range metadata on a field bounds its value (ints and floats; each item of a list; ``None`` of an
  ``Optional`` field is not checked; bools are never range-checked)::

      lr: float = option(1e-4, "...", min=0, min_exclusive=True)
      fraction: float = option(0.1, "...", min=0, max=1, max_exclusive=True)
      workers: int = option(0, "...", min=0)

  keys: ``"min"`` (lower bound, inclusive unless ``"min_exclusive": True``), ``"max"`` (upper bound,
  inclusive unless ``"max_exclusive": True``). Messages read ``lr must be > 0, got -1.0``,
  ``workers must be at least 0, got -2``, ``fraction must be in [0, 1), got 1.5`` (``--lr ...`` on the CLI).

Checks that involve several options (e.g. overlap < patch size) stay with the stage's own validation.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pathup.errors import OptionError, PathUpError
from pathup.io import atomic_write_text, read_text

T = TypeVar("T")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
        if len(args) < len(typing.get_args(tp)):  # Optional[int | Literal["auto"]]: the union without None
            return typing.Union[tuple(args)], True
    return tp, False


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """Convert ``value`` (from YAML or argparse) to the field type ``tp``; raise PathUpError."""
    tp, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise PathUpError(f"option '{name}' may not be empty")
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):  # e.g. int | Literal["auto"]: the first member that fits
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        for member in members:
            try:
                return _coerce(name, member, value)
            except PathUpError:
                continue
        raise PathUpError(f"option '{name}' got {value!r}; allowed: {' or '.join(_member_text(m) for m in members)}")
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise PathUpError(f"option '{name}' got {value!r}; allowed: {', '.join(map(str, allowed))}")
        return value
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(tp) or (str,)
        if isinstance(value, (str, int, float)):
            value = [value]
        items = [_coerce(name, inner, v) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise PathUpError(f"option '{name}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise PathUpError(f"option '{name}' must be true or false, got {value!r}")
    if tp in (int, float, str):
        if tp in (int, float) and isinstance(value, bool):  # YAML true/false is not a number
            raise PathUpError(f"option '{name}' must be {tp.__name__}, got {value!r}")
        try:
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return tp(value)
        except (TypeError, ValueError):
            raise PathUpError(f"option '{name}' must be {tp.__name__}, got {value!r}") from None
    if tp is Path:
        return Path(value)
    return value


def _member_text(tp: Any) -> str:
    """How an error names one member of a union type: ``an int``, ``'auto'``."""
    if typing.get_origin(tp) is typing.Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    return {int: "an integer", float: "a number", str: "a text", bool: "true or false"}.get(tp, str(tp))


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type[T], data: dict[str, Any], *, base: T | None = None, source: str = "config") -> T:
    """Build ``cls`` from ``data``, starting from ``base`` (or the defaults); unknown keys are errors."""
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    data = resolve_aliases(cls, data)
    unknown = sorted(set(data) - names)
    if unknown:
        raise PathUpError(f"{source}: unknown option(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
    values: dict[str, Any] = {}
    for key, value in data.items():
        values[key] = _coerce(key, hints[key], value)
    if base is None:
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in values
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]  # type: ignore[misc]
        if missing:
            raise PathUpError(f"missing required option(s): {', '.join('--' + m.replace('_', '-') for m in missing)}")
        cfg = cls(**values)
    else:
        cfg = dataclasses.replace(base, **values)
    validate(cfg)
    return cfg


def option(default: Any = dataclasses.MISSING, help: str = "", *,  # noqa: A002 - the help text
           default_factory: Any = dataclasses.MISSING, aliases: tuple[str, ...] = (), **meta: Any) -> Any:
    """A dataclass field with its help text and metadata: the one way configs declare an option.

    ``meta`` takes the range keys of ``validate`` (``min``, ``max``, ...), ``metavar``, ``cli=False``
    (no command-line option) and ``positional=True``; ``aliases`` are older names of the field that YAML
    files, keyword options and the command line still accept (hidden from ``--help``)::

        latent_patch: int = option(64, "latent patch size p", min=1, aliases=("patch_size",))
    """
    metadata = {"help": help, **meta}
    if aliases:
        metadata["aliases"] = tuple(aliases)
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def aliases_of(cls: type) -> dict[str, str]:
    """{older name: field name} of a config dataclass (the fields' ``aliases`` metadata)."""
    return {a: f.name for f in dataclasses.fields(cls) for a in f.metadata.get("aliases", ())}


def resolve_aliases(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with older option names replaced by the field names (PathUpError if both are given)."""
    aliases = aliases_of(cls)
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = aliases.get(key, key)
        if name != key and name in data:
            raise PathUpError(f"options '{key}' and '{name}' are the same option (its older and newer name): "
                              f"give one")
        out[name] = value
    return out


def accepts_aliases(cls: type[T]) -> type[T]:
    """Class decorator (above ``@dataclass``): the constructor takes the fields' older names too, as
    ``from_dict`` does (``PrepareConfig(tile_size=64)`` is ``PrepareConfig(tile_px=64)``)."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **resolve_aliases(cls, kwargs))

    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


def _fmt_bound(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _range_text(meta: Any) -> str | None:
    """``"> 0"``, ``"at least 1"``, ``"in [0, 1)"``... from a field's range metadata (None: no range)."""
    lo, hi = meta.get("min"), meta.get("max")
    lo_x, hi_x = bool(meta.get("min_exclusive")), bool(meta.get("max_exclusive"))
    if lo is not None and hi is not None:
        return f"in {'(' if lo_x else '['}{_fmt_bound(lo)}, {_fmt_bound(hi)}{')' if hi_x else ']'}"
    if lo is not None:
        return f"> {_fmt_bound(lo)}" if lo_x else f"at least {_fmt_bound(lo)}"
    if hi is not None:
        return f"< {_fmt_bound(hi)}" if hi_x else f"at most {_fmt_bound(hi)}"
    return None


def check_value(name: str, value: Any, meta: Any = None) -> None:
    """Check one numeric option value against the rules of ``validate`` (``OptionError`` naming ``name``)."""
    meta = meta or {}
    items = value if isinstance(value, (list, tuple)) else [value]
    for v in items:
        if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if isinstance(v, float) and (math.isnan(v) or (math.isinf(v) and meta.get("finite", True))):
            raise OptionError(name, f"must be a finite number, got {v}")
        lo, hi = meta.get("min"), meta.get("max")
        ok = ((lo is None or (v > lo if meta.get("min_exclusive") else v >= lo))
              and (hi is None or (v < hi if meta.get("max_exclusive") else v <= hi)))
        if not ok:
            raise OptionError(name, f"must be {_range_text(meta)}, got {v}")


def validate(cfg: Any) -> Any:
    """Check every numeric field of a config dataclass: finite floats and the fields' range metadata.

    See the module docstring for the metadata keys (``min``, ``max``, ``min_exclusive``,
    ``max_exclusive``, ``finite``). Returns ``cfg``.

    Raises:
        OptionError: one line naming the field and its allowed range (the CLI shows it as ``--kebab-name``).
    """
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"validate expects a config dataclass instance, got {type(cfg).__name__}")
    for f in dataclasses.fields(cfg):
        check_value(f.name, getattr(cfg, f.name), f.metadata)
    return cfg


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise PathUpError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(read_text(path, "config file")) or {}
    except yaml.YAMLError as err:
        raise PathUpError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise PathUpError(f"{path}: expected a mapping of option: value at the top level")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def to_dict(cfg: Any) -> dict[str, Any]:
    def conv(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return {k: conv(v) for k, v in dataclasses.asdict(cfg).items()}


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomic)."""
    path = Path(path)
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path


def config_json(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), sort_keys=True)


def add_config_args(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ()) -> None:
    """Add one ``--kebab-name`` option per dataclass field, plus ``--config YAML``.

    Defaults are left out of argparse (``SUPPRESS``) so that ``config_from_args`` can tell which
    options the user gave; the help text shows the dataclass default.
    """
    hints = _hints(cls)
    group = parser.add_argument_group("options")
    group.add_argument("--config", metavar="YAML", help="YAML file overriding these defaults")
    for f in dataclasses.fields(cls):
        if f.name in skip or f.metadata.get("cli") is False:
            continue
        tp, _ = _unwrap_optional(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        help_text = f"{help_text} (default: {default})" if help_text else f"default: {default}"
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        origin = typing.get_origin(tp)
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is typing.Literal:
            kwargs["choices"] = list(typing.get_args(tp))
            kwargs["type"] = type(typing.get_args(tp)[0])
        elif origin in (list, tuple):
            kwargs["nargs"] = f.metadata.get("nargs", "+")
            inner = (typing.get_args(tp) or (str,))[0]
            kwargs["type"] = inner if inner in (int, float, str) else str
        elif tp in (int, float, str):
            kwargs["type"] = tp
        else:
            kwargs["type"] = str
        if "metavar" in f.metadata:
            kwargs["metavar"] = f.metadata["metavar"]
        group.add_argument(flag, **kwargs)
        for alias in f.metadata.get("aliases", ()):  # older spellings keep working, hidden from --help
            group.add_argument("--" + alias.replace("_", "-"), **{**kwargs, "help": argparse.SUPPRESS})


def config_from_args(cls: type[T], args: argparse.Namespace, *, own: tuple[str, ...] = (), **fixed: Any) -> T:
    """Defaults <- ``--config`` YAML <- options given on the command line <- ``fixed`` values.

    ``own``: YAML keys that are the command's own arguments (``--class``, ``--out``...), not fields of ``cls``.
    """
    data: dict[str, Any] = {}
    source = "options"
    if getattr(args, "config", None):
        yaml_data = {k: v for k, v in load_yaml(args.config).items() if k not in own}
        data.update(resolve_aliases(cls, yaml_data))
        source = str(args.config)
    names = {f.name for f in dataclasses.fields(cls)}
    data.update({k: v for k, v in vars(args).items() if k in names})
    data.update(fixed)
    return from_dict(cls, data, source=source)
