"""Ablation specs: one YAML file per paper table (``configs/ablations/*.yaml``; the format:
``configs/ablations/README.md``).

A spec holds a base config per scale, the table's rows as config overrides, the seeds each row
runs with, the paper's numbers and claims. Each level (spec, scale, row, row at a scale) is a
:class:`Layer`; later levels win. Every error names the spec file and, where there is one, the row
or claim.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from focal_plugin.analysis.claims import parse_claim
from focal_plugin.analysis.seed_stats import METRICS
from focal_plugin.configs import CONFIG_ROOT, resolve_config_file

SCALES = ("paper", "mini")
ABLATIONS_DIR = os.path.join(CONFIG_ROOT, "ablations")
#: keys the runner sets per cell: never from a spec or the command line
RUNNER_KEYS = ("OUTPUT_DIR", "SEED")

_SPEC_KEYS = {"name", "title", "source", "note", "columns", "metrics", "timing", "seeds", "overrides",
              "scales", "rows", "claims"}
_SCALE_KEYS = {"base", "overrides", "seeds", "note"}
_ROW_KEYS = {"id", "settings", "overrides", "anchors", "seeds", "paper", "paper_note", "scales"}
_ROW_SCALE_KEYS = {"base", "overrides", "anchors", "settings", "seeds"}
_ID = re.compile(r"[A-Za-z0-9_.=+-]+")
_KEY = re.compile(r"[A-Z0-9_]+(\.[A-Z0-9_]+)*")


class SpecError(ValueError):
    """An invalid ablation spec; the message names the spec file (and row or claim)."""


@dataclasses.dataclass(frozen=True)
class Layer:
    """What one level of a spec sets (``None``: not set at this level)."""

    base: Optional[str] = None
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    anchors: Optional[Mapping[str, int]] = None
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    seeds: Optional[Tuple[int, ...]] = None


@dataclasses.dataclass(frozen=True)
class Row:
    id: str
    layer: Layer
    scales: Mapping[str, Layer]
    paper: Mapping[str, Optional[float]]
    paper_note: str = ""


@dataclasses.dataclass(frozen=True)
class RowPlan:
    """A spec row resolved at one scale: what its cells train, and with which seeds."""

    id: str
    settings: Dict[str, Any]
    base: str  # absolute path of the base config
    opts: Tuple[str, ...]  # KEY VALUE overrides, in order (spec, scale, row, anchors, command line)
    seeds: Tuple[int, ...]
    paper: Dict[str, Optional[float]]
    paper_note: str = ""


@dataclasses.dataclass
class Spec:
    """A loaded, structurally valid ablation spec (see the module docstring)."""

    path: str
    name: str
    title: str
    source: str
    note: str
    columns: List[str]
    metrics: List[str]
    timing: Optional[Dict[str, int]]
    layer: Layer
    scales: Dict[str, Layer]
    rows: List[Row]
    claims: List[Any]  # analysis.claims.Claim

    @property
    def row_ids(self) -> List[str]:
        return [r.id for r in self.rows]

    def fail(self, message: str, row: Optional[str] = None) -> SpecError:
        return _failure(self.path)(message, row)

    def resolve(self, scale: str, base_config: Optional[str] = None, extra_opts: Sequence[str] = (),
                seeds: Optional[Sequence[int]] = None) -> List[RowPlan]:
        """The rows at ``scale``, every override checked against the config.

        ``base_config`` replaces the spec's base config of that scale (rows naming their own base
        keep it); ``extra_opts`` (``KEY VALUE`` ...) apply to every row last; ``seeds`` replace
        every row's. Raises :class:`SpecError` naming the file and row for an override that is
        not a config key, has the wrong type or is set by the runner (``SEED``, ``OUTPUT_DIR``).
        """
        if scale not in self.scales:
            raise self.fail(f"no base config for scale {scale!r} (scales: {sorted(self.scales)})")
        extra = _check_opts(list(extra_opts), self.fail)
        cache: Dict[str, Any] = {}
        return [self._resolve_row(row, scale, base_config, extra, seeds, cache) for row in self.rows]

    def _resolve_row(self, row: Row, scale: str, base_config, extra, seeds, cache) -> RowPlan:
        layers = [self.layer, self.scales[scale], row.layer, row.scales.get(scale, Layer())]
        base_name = _last([layers[1].base if base_config is None else base_config, layers[3].base])
        cfg = self._base_cfg(base_name, row.id, cache)
        opts = _opts(layers)
        self._merge(cfg, opts, row.id, base_name)
        anchors = _last([layer.anchors for layer in layers])
        if anchors:
            from focal_plugin.anchors import anchor_overrides

            bases = [float(level[0]) for level in cfg.MODEL.ANCHOR_GENERATOR.SIZES]
            try:
                anchor_opts = anchor_overrides(anchors["scales_per_octave"], anchors["aspects"], bases)
            except ValueError as e:
                raise self.fail(f"anchors {dict(anchors)}: {e}", row.id) from e
            self._merge(cfg, anchor_opts, row.id, base_name)
            opts += anchor_opts
        self._merge(cfg, extra, row.id, base_name, what="command-line override")
        return RowPlan(id=row.id, settings=_merged(layers, "settings"), base=resolve_config_file(base_name),
                       opts=tuple(opts + extra),
                       seeds=tuple(seeds) if seeds else _last([la.seeds for la in layers]) or (0,),
                       paper={m: row.paper.get(m) for m in self.metrics}, paper_note=row.paper_note)

    def _base_cfg(self, base_name: str, row: str, cache: Dict[str, Any]):
        if base_name not in cache:
            from focal_plugin.engine import setup_cfg

            try:
                cache[base_name] = setup_cfg(resolve_config_file(base_name), freeze=False)
            except (FileNotFoundError, ValueError, KeyError) as e:
                raise self.fail(f"base config {base_name!r} cannot be loaded: {e}", row) from e
        return cache[base_name].clone()

    def _merge(self, cfg, opts: Sequence[str], row: str, base_name: str, what: str = "override") -> None:
        from focal_plugin.engine import has_key, unknown_key

        for key, value in zip(opts[::2], opts[1::2]):
            if not has_key(cfg, key):
                raise self.fail(f"{what} {key!r} is not a config key (base {base_name}): "
                                f"{unknown_key(cfg, key)}", row)
            try:
                cfg.merge_from_list([key, value])
            except (KeyError, ValueError, AssertionError) as e:
                raise self.fail(f"{what} {key} = {value!r} is invalid: {e}", row) from e

    def table_config(self, scale: str, base_config: Optional[str] = None,
                     extra_opts: Sequence[str] = ()) -> Tuple[str, List[str]]:
        """The table's base config file at ``scale`` and the overrides all its rows share."""
        opts = _opts([self.layer, self.scales[scale]])
        return resolve_config_file(base_config or self.scales[scale].base), opts + list(extra_opts)


def _failure(path: str) -> Callable[..., SpecError]:
    """``fail(message, row=None)``: a :class:`SpecError` naming ``path`` (and the row)."""
    return lambda msg, row=None: SpecError(f"{path}: " + (f"row {row!r}: " if row is not None else "") + msg)


def _last(values):
    """The last value that is set (not None)."""
    return next((v for v in reversed(values) if v is not None), None)


def _merged(layers: Sequence[Layer], field: str) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for layer in layers:
        out.update(getattr(layer, field))
    return out


def _opts(layers: Sequence[Layer]) -> List[str]:
    """The layers' merged overrides as detectron2's ``KEY VALUE`` strings (decoded back by
    ``literal_eval``: a YAML value's ``repr``, a string as is)."""
    pairs = _merged(layers, "overrides").items()
    return [x for k, v in pairs for x in (k, v if isinstance(v, str) else repr(v))]


def _check_opts(opts: List[str], fail) -> List[str]:
    """Command-line ``KEY VALUE`` pairs: well formed, and no key the runner sets per cell."""
    if len(opts) % 2:
        raise fail(f"command-line overrides must be KEY VALUE pairs, got {opts}")
    _check_overrides(dict(zip(opts[::2], opts[1::2])), fail, None, "command-line overrides")
    return opts


# ------------------------------------------------------------------------------------ loading
def find_yaml(name_or_path: str, folder: str, what: str) -> str:
    """A file: a path, or the name of one of ``folder``'s YAML files (``table1a`` / ``table1a.yaml``)."""
    if os.path.isfile(name_or_path):
        return os.path.abspath(name_or_path)
    path = os.path.join(folder, os.path.basename(name_or_path).removesuffix(".yaml") + ".yaml")
    if os.path.isfile(path):
        return path
    raise FileNotFoundError(f"{what} {name_or_path!r} not found (neither a file nor one of "
                            f"{_yaml_names(folder)})")


def _yaml_names(folder: str) -> List[str]:
    return sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml")) if os.path.isdir(folder) else []


def list_specs() -> List[str]:
    """Names of the shipped specs (``configs/ablations/*.yaml``)."""
    return _yaml_names(ABLATIONS_DIR)


def load_spec(name_or_path: str) -> Spec:
    """Load and structurally validate a spec; :class:`SpecError` names the file, row or claim.

    Config keys are checked by :meth:`Spec.resolve` (it needs the base config of a scale).
    """
    path = find_yaml(name_or_path, ABLATIONS_DIR, "ablation spec")
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from e
    return _parse(path, raw)


def _parse(path: str, raw: Any) -> Spec:
    fail = _failure(path)
    if not isinstance(raw, Mapping):
        raise fail("expected a mapping at the top level")
    top = _layer(raw, _SPEC_KEYS, fail, None, "spec")
    missing = [k for k in ("title", "columns", "metrics", "scales", "rows") if k not in raw]
    if missing:
        raise fail(f"missing required key {missing[0]!r}")
    metrics = list(raw["metrics"] or [])
    if not metrics or any(m not in METRICS for m in metrics):
        raise fail(f"metrics {[m for m in metrics if m not in METRICS] or metrics} invalid: expected a "
                   f"non-empty subset of {list(METRICS)}")
    if not isinstance(raw["scales"], Mapping) or not raw["scales"]:
        raise fail("'scales' must map a scale (paper, mini) to {base: config}")
    if not isinstance(raw["rows"], list) or not raw["rows"]:
        raise fail("'rows' must be a non-empty list")
    scales = {s: _scale_layer(s, sc, _SCALE_KEYS, fail, None) for s, sc in raw["scales"].items()}
    if any(sc.base is None for sc in scales.values()):
        raise fail(f"scales.{next(s for s, sc in scales.items() if sc.base is None)} must be a mapping "
                   "with a 'base' config")
    columns, rows = list(raw["columns"]), []
    for i, row in enumerate(raw["rows"]):
        rows.append(_parse_row(row, i, columns, metrics, {r.id for r in rows}, fail))
    ids = {r.id for r in rows}
    claims = [parse_claim(c, i, ids, metrics, fail) for i, c in enumerate(raw.get("claims") or [])]
    name = _check_id(str(raw.get("name") or os.path.splitext(os.path.basename(path))[0]), "name", fail)
    return Spec(path=path, name=name, title=str(raw["title"]), source=str(raw.get("source", "")),
                note=str(raw.get("note", "")), columns=columns, metrics=metrics,
                timing=_parse_timing(raw.get("timing"), metrics, fail), layer=top, scales=scales, rows=rows,
                claims=claims)


def _check_id(value: str, what: str, fail, row: Optional[str] = None) -> str:
    if not _ID.fullmatch(value):
        raise fail(f"{what} {value!r} is invalid: expected letters, digits and _.=+-", row)
    return value


def _parse_timing(timing: Any, metrics: List[str], fail) -> Optional[Dict[str, int]]:
    if ("ms" in metrics) != (timing is not None):
        raise fail("metric 'ms' needs a 'timing: {images: N, warmup: W}' section" if "ms" in metrics else
                   "'timing' without the metric 'ms' would time nothing: add 'ms' to metrics or remove it")
    if timing is not None and (not isinstance(timing, Mapping) or set(timing) - {"images", "warmup"}):
        raise fail("'timing' must be a mapping {images, warmup}")
    for k, low in (("images", 1), ("warmup", 0)) if timing is not None else ():
        if not _is_int(timing.get(k)) or timing[k] < low:
            raise fail(f"timing.{k} = {timing.get(k)!r} is invalid: expected an integer >= {low}")
    return None if timing is None else dict(timing)


def _scale_layer(scale: str, raw: Any, allowed: set, fail, row: Optional[str]) -> Layer:
    if scale not in SCALES or not isinstance(raw, Mapping):
        raise fail(f"scales.{scale} must be a mapping under one of {list(SCALES)}", row)
    return _layer(raw, allowed, fail, row, f"scales.{scale}")


def _parse_row(row: Any, i: int, columns: List[str], metrics: List[str], seen: set, fail) -> Row:
    if not isinstance(row, Mapping) or "id" not in row:
        raise fail(f"row #{i + 1} must be a mapping with an 'id'")
    rid = _check_id(str(row["id"]), "row id", fail)
    if rid in seen:
        raise fail("duplicate row id", rid)
    layer = _layer(row, _ROW_KEYS, fail, rid, "row")
    if set(layer.settings) != set(columns):
        raise fail(f"settings {sorted(layer.settings)} must name exactly the columns {columns}", rid)
    if not isinstance(row.get("scales") or {}, Mapping):
        raise fail("'scales' must map a scale to {settings, overrides, base, anchors, seeds}", rid)
    scales = {s: _scale_layer(s, rs, _ROW_SCALE_KEYS, fail, rid)
              for s, rs in (row.get("scales") or {}).items()}
    for scale, sc in scales.items():
        if set(sc.settings) - set(columns):
            raise fail(f"scales.{scale}.settings {sorted(set(sc.settings) - set(columns))} are not columns "
                       f"{columns}", rid)
    paper = row.get("paper") or {}
    if not isinstance(paper, Mapping):
        raise fail("'paper' must map metrics to numbers", rid)
    for m, v in paper.items():
        if m not in metrics:
            raise fail(f"paper number for {m!r}, which is not one of the spec's metrics {metrics}", rid)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise fail(f"paper.{m} = {v!r} is not a number (use null for 'not reported')", rid)
    return Row(id=rid, layer=layer, scales=scales, paper=dict(paper),
               paper_note=str(row.get("paper_note", "")))


def _layer(raw: Mapping, allowed: set, fail, row: Optional[str], what: str) -> Layer:
    """The :class:`Layer` fields of ``raw`` (a spec, scale, row or row-scale mapping whose keys
    must be in ``allowed``), each checked."""
    extra = sorted(set(raw) - allowed)
    if extra:
        raise fail(f"unknown key(s) {extra} in {what}; allowed: {sorted(allowed)}", row)
    if raw.get("base") is not None:
        try:
            resolve_config_file(str(raw["base"]))
        except FileNotFoundError as e:
            raise fail(f"base config {raw['base']!r} not found: {e}", row) from None
    _check_overrides(raw.get("overrides") or {}, fail, row, f"{what}.overrides")
    anchors = raw.get("anchors")
    if anchors is not None and (not isinstance(anchors, Mapping)
                                or set(anchors) != {"scales_per_octave", "aspects"}):
        raise fail(f"anchors {anchors!r} must be {{scales_per_octave: n, aspects: 1 or 3}}", row)
    settings = raw.get("settings") or {}
    if not isinstance(settings, Mapping):
        raise fail(f"{what}.settings must map columns to values", row)
    seeds = _parse_seeds(raw["seeds"], fail, row, what) if "seeds" in raw else None
    return Layer(base=str(raw["base"]) if raw.get("base") is not None else None,
                 overrides=dict(raw.get("overrides") or {}), anchors=dict(anchors) if anchors else None,
                 settings=dict(settings), seeds=seeds)


def _parse_seeds(raw: Any, fail, row: Optional[str], what: str) -> Tuple[int, ...]:
    """``N`` (seeds 0..N-1) or a list of distinct non-negative integers."""
    if _is_int(raw) and raw >= 1:
        return tuple(range(raw))
    if isinstance(raw, list) and raw and all(_is_int(s) and s >= 0 for s in raw) and len({*raw}) == len(raw):
        return tuple(raw)
    raise fail(f"{what}.seeds = {raw!r} is invalid: expected a count >= 1 or a list of distinct "
               "seeds >= 0", row)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_overrides(overrides: Any, fail, row: Optional[str], what: str) -> None:
    if not isinstance(overrides, Mapping):
        raise fail(f"{what} must map config keys to values", row)
    for key in overrides:
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise fail(f"{what}: {key!r} is not a config key (expected e.g. MODEL.FOCAL.GAMMA)", row)
        if key in RUNNER_KEYS:
            raise fail(f"{what}: {key} is set by the runner per cell (seeds: the spec's 'seeds' or "
                       "--seeds; output: --output-dir), not by an override", row)
