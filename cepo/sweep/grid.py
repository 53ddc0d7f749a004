"""Grid files: parse, expand into points, and turn points into ``cepo fit`` arguments."""

from __future__ import annotations

import itertools
import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SEED_KEY = "seed_everything"
CONFIG_AXIS = "config"
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


# -- the grid ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Axis:
    """One grid axis.

    Attributes:
        key: the key as written in the grid file.
        short: its name in slugs, tables and plot file names.
        kind: ``key`` (a config key), ``config`` (overlay files) or ``bundle``.
        values: the values, in grid order (overlay paths resolved for ``config``).
    """

    key: str
    short: str
    kind: str
    values: tuple

    @property
    def is_seed(self) -> bool:
        return self.kind == "key" and self.key == SEED_KEY

    @property
    def is_numeric(self) -> bool:
        return self.kind == "key" and all(_is_number(v) for v in self.values)


@dataclass(frozen=True)
class Grid:
    """A parsed grid file: base configs, fixed overrides and axes."""

    name: str
    base: tuple[Path, ...]
    fixed: dict[str, Any]
    axes: tuple[Axis, ...]
    resources: dict[str, Any] = field(default_factory=dict)  # per-point cluster resources (launchers)


@dataclass(frozen=True)
class Point:
    """One grid point.

    Attributes:
        index: 1-based position in the grid.
        labels: axis short name -> value label (slug parts and table cells).
        values: axis short name -> raw value (for ordering numeric axes).
        configs: overlay files from a ``config`` axis, after the grid's base files.
        overrides: config key -> value from the grid axes (``fixed`` excluded).
        slug: the run version, unique within the sweep.
    """

    index: int
    labels: dict[str, str]
    values: dict[str, Any]
    configs: tuple[Path, ...]
    overrides: dict[str, Any]
    slug: str


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def value_label(value: Any) -> str:
    """A short text for a value in slugs and tables (``0.2``, ``inf``, ``true``, ``null``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return "inf" if value == math.inf else "-inf" if value == -math.inf else repr(value)
    if isinstance(value, (list, tuple)):
        return "-".join(value_label(v) for v in value)
    if isinstance(value, dict):
        return "-".join(value_label(v) for v in value.values())
    return str(value)


def cli_value(value: Any) -> str:
    """``value`` as ``cepo fit`` parses it from the command line (YAML; ``.inf`` for infinity)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else ".inf" if value > 0 else "-.inf"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def slugify(text: str) -> str:
    """``text`` with every run of characters outside ``[A-Za-z0-9._=+-]`` replaced by ``-``."""
    return _UNSAFE.sub("-", text).strip("-")


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """Shortest unique dotted suffix of each key (``init_args`` dropped; ``seed_everything`` is
    ``seed``): ``model.credit.init_args.clip`` -> ``clip``, but ``credit.beta`` / ``foo.beta``
    when both ``...credit.init_args.beta`` and ``foo.beta`` are axes."""
    parts = {k: [p for p in k.split(".") if p != "init_args"] for k in keys}
    depth = dict.fromkeys(keys, 1)
    while True:
        names = {k: "seed" if k == SEED_KEY else ".".join(parts[k][-depth[k] :]) for k in keys}
        clashes = [k for k in keys if list(names.values()).count(names[k]) > 1]
        growable = [k for k in clashes if depth[k] < len(parts[k])]
        if not growable:
            if clashes:
                raise ValueError(f"grid axes {clashes} have the same short name {names[clashes[0]]!r}")
            return names
        for k in growable:
            depth[k] += 1


def resolve_path(path: str | Path, grid_dir: Path) -> Path:
    """An existing file: absolute, or relative to the grid file, the repo root or the cwd."""
    path = Path(path).expanduser()
    candidates = [path] if path.is_absolute() else [grid_dir / path, REPO_ROOT / path, Path.cwd() / path]
    for cand in candidates:
        if cand.is_file():
            return cand.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"config file {str(path)!r} not found (tried {tried})")


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``["a.b=1", "c=.inf"]`` -> ``{"a.b": 1, "c": inf}`` (values are YAML)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return out


def _as_list(value: Any, what: str) -> list:
    if value is None:
        return []
    if isinstance(value, (str, Path)):
        return [value]
    if isinstance(value, list):
        return value
    raise ValueError(f"{what} must be a path or a list of paths, got {value!r}")


def parse_grid(spec: dict, grid_dir: Path, default_name: str, extra_fixed: dict | None = None) -> Grid:
    """Check a grid file's contents and resolve its paths.

    Args:
        spec: the loaded YAML mapping (``name``, ``base``, ``fixed``, ``grid``).
        grid_dir: directory relative paths are looked up in first.
        default_name: the sweep name when ``spec`` has none.
        extra_fixed: ``--set`` overrides, added to ``fixed`` (and winning over it).
    """
    if not isinstance(spec, dict):
        raise ValueError("a grid file must be a mapping with keys name, base, fixed, grid")
    unknown = set(spec) - {"name", "base", "fixed", "grid", "resources"}
    if unknown:
        raise ValueError(f"unknown grid file keys {sorted(unknown)} (expected name, base, fixed, grid, resources)")
    if not isinstance(spec.get("resources") or {}, dict):
        raise ValueError("resources must be a mapping (gpus_per_node: 1, time_min: 120, ...)")
    name = slugify(str(spec.get("name") or default_name))
    if not name:
        raise ValueError("the sweep name is empty")
    base = tuple(resolve_path(p, grid_dir) for p in _as_list(spec.get("base"), "base"))
    fixed = dict(spec.get("fixed") or {})
    if not isinstance(spec.get("fixed") or {}, dict):
        raise ValueError("fixed must be a mapping of config keys to values")
    fixed.update(extra_fixed or {})
    if CONFIG_AXIS in fixed:
        raise ValueError("'config' cannot be fixed: list always-on config files under base")
    raw_axes = spec.get("grid")
    if not isinstance(raw_axes, dict) or not raw_axes:
        raise ValueError("grid must be a non-empty mapping of axis -> list of values")
    kinds, values = {}, {}
    for key, vals in raw_axes.items():
        if not isinstance(vals, list) or not vals:
            raise ValueError(f"grid axis {key!r} must be a non-empty list, got {vals!r}")
        if key == CONFIG_AXIS:
            kinds[key] = "config"
            values[key] = tuple(
                tuple(resolve_path(p, grid_dir) for p in _as_list(v, "a config axis value")) for v in vals
            )
        elif "." not in key and all(isinstance(v, dict) for v in vals):
            kinds[key], values[key] = "bundle", tuple(vals)
        else:
            kinds[key], values[key] = "key", tuple(vals)
    _check_overlaps(kinds, values, fixed)
    shorts = short_names([k for k in raw_axes if kinds[k] != "config"])
    shorts[CONFIG_AXIS] = CONFIG_AXIS
    axes = tuple(Axis(k, shorts[k], kinds[k], values[k]) for k in raw_axes)
    return Grid(name, base, fixed, axes, dict(spec.get("resources") or {}))


def _check_overlaps(kinds: dict[str, str], values: dict[str, tuple], fixed: dict) -> None:
    """Every config key is set by at most one of: fixed, an axis, a bundle axis."""
    owner: dict[str, str] = {k: "fixed" for k in fixed}
    for axis, kind in kinds.items():
        if kind == "config":
            continue
        keys = {k for v in values[axis] for k in v} if kind == "bundle" else {axis}
        for key in keys:
            if key in owner:
                raise ValueError(f"config key {key!r} is set by both {owner[key]} and grid axis {axis!r}")
            owner[key] = f"grid axis {axis!r}"


def load_grid(path: str | Path, extra_fixed: dict | None = None) -> Grid:
    """Read and check a grid file (see the module docstring)."""
    path = Path(path)
    spec = yaml.safe_load(path.read_text())
    return parse_grid(spec, path.resolve().parent, path.stem, extra_fixed)


def expand(grid: Grid) -> list[Point]:
    """The cartesian product of the grid's axes, in grid order (the last axis varies fastest)."""
    points = []
    for i, combo in enumerate(itertools.product(*(a.values for a in grid.axes)), start=1):
        labels, raw, configs, overrides, parts = {}, {}, [], {}, []
        for axis, value in zip(grid.axes, combo):
            raw[axis.short] = value
            if axis.kind == "config":
                label = "+".join(p.stem for p in value)
                configs.extend(value)
                parts.append(slugify(label))
            else:
                label = value_label(value)
                overrides.update(value if axis.kind == "bundle" else {axis.key: value})
                parts.append(slugify(f"{axis.short}={label}"))
            labels[axis.short] = label
        points.append(Point(i, labels, raw, tuple(configs), overrides, "_".join(parts)))
    seen: dict[str, int] = {}
    for p in points:
        if p.slug in seen:
            raise ValueError(f"grid points {seen[p.slug]} and {p.index} have the same slug {p.slug!r}")
        seen[p.slug] = p.index
    return points


def fit_args(grid: Grid, point: Point) -> list[str]:
    """The ``cepo fit`` arguments of a point, without the run directory flags."""
    args = []
    for cfg in (*grid.base, *point.configs):
        args += ["--config", str(cfg)]
    for key, value in {**grid.fixed, **point.overrides}.items():
        args += [f"--{key}", cli_value(value)]
    return args


def run_flags(grid: Grid, point: Point) -> list[str]:
    """``--run_name``/``--run_version`` of a point (``--run_root`` is added by the caller)."""
    return ["--run_name", grid.name, "--run_version", point.slug]


def fit_command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "cepo", "fit", *args]
