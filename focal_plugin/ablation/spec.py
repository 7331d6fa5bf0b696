"""Ablation specs: one YAML file per paper table (``configs/ablations/*.yaml``).

A spec holds a base config per scale, the table's rows as config overrides, and the paper's
numbers per row. The same spec runs at ``paper`` scale (``configs/paper``: COCO, ImageNet
weights, 90k iterations) or ``mini`` scale (``configs/mini``: synthetic data, CPU)::

    name: table1a                      # default: the file name
    title: "Table 1a: alpha-balanced CE (gamma = 0), varying alpha"
    source: "R50-FPN, 600 px, COCO minival"      # where the paper's numbers come from
    note: "..."                        # optional, shown under the table
    columns: [alpha]                   # the settings shown per row, in order
    metrics: [AP, AP50, AP75]          # of AP AP50 AP75 APs APm APl ms (ms = ms/image, measured)
    timing: {images: 100, warmup: 10}  # only with "ms": batch-1 inference timing after training
    scales:                            # the base config per scale (+ overrides of that scale)
      paper: {base: paper/retinanet_R_50_FPN_600_90k.yaml}
      mini: {base: mini/Base-Mini-Repro.yaml, overrides: {...}}
    overrides: {MODEL.FOCAL.LOSS: sigmoid_ce}    # every row, both scales
    rows:
      - id: alpha_.10                  # folder name of the row's cells: [A-Za-z0-9_.=+-]
        settings: {alpha: ".10"}
        overrides: {MODEL.FOCAL.ALPHA: 0.10}
        anchors: {scales_per_octave: 2, aspects: 3}   # optional: Table 1c density, expanded to
                                       # MODEL.ANCHOR_GENERATOR.SIZES / ASPECT_RATIOS from the
                                       # base config's first size per level
        paper: {AP: 0.0, AP50: 0.0, AP75: 0.0}       # null = not reported
        paper_note: "diverges"         # optional text shown in the paper columns
        scales: {mini: {settings: {...}, overrides: {...}, base: ..., anchors: ...}}
    claims:                            # the paper's qualitative claims, judged against seed noise
      - {text: "the best alpha for CE is .75", type: best, row: alpha_.75, metric: AP}

Claim types (see :mod:`focal_plugin.ablation.verdict`): ``best`` (row, metric[, rows, direction]),
``better`` (row, than, metric), ``similar`` (row, to, metric, tol), ``any_similar`` (rows, to,
metric, tol[, min_count]), ``diverges`` / ``converges`` (row), ``increasing`` (rows, metric).

Every error names the spec file and, where there is one, the row or claim.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from focal_plugin.configs import CONFIG_ROOT, resolve_config_file

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "ms")
METRIC_LABELS = {"AP": "AP", "AP50": "AP50", "AP75": "AP75", "APs": "APS", "APm": "APM", "APl": "APL",
                 "ms": "ms/img"}
LOWER_IS_BETTER = frozenset({"ms"})
SCALES = ("paper", "mini")
ABLATIONS_DIR = os.path.join(CONFIG_ROOT, "ablations")

_SPEC_KEYS = {"name", "title", "source", "note", "columns", "metrics", "timing", "scales", "overrides",
              "rows", "claims"}
_SCALE_KEYS = {"base", "overrides", "note"}
_ROW_KEYS = {"id", "settings", "overrides", "anchors", "paper", "paper_note", "scales"}
_ROW_SCALE_KEYS = {"base", "overrides", "anchors", "settings"}
_ANCHOR_KEYS = {"scales_per_octave", "aspects"}
_TIMING_KEYS = {"images", "warmup"}
_CLAIM_FIELDS = {
    # type: (required, optional)
    "best": ({"row", "metric"}, {"rows", "direction"}),
    "better": ({"row", "than", "metric"}, set()),
    "similar": ({"row", "to", "metric", "tol"}, set()),
    "any_similar": ({"rows", "to", "metric", "tol"}, {"min_count"}),
    "diverges": ({"row"}, set()),
    "converges": ({"row"}, set()),
    "increasing": ({"rows", "metric"}, set()),
}
_ROW_ID = re.compile(r"[A-Za-z0-9_.=+-]+")


class SpecError(ValueError):
    """An invalid ablation spec; the message names the spec file (and row or claim)."""


@dataclasses.dataclass(frozen=True)
class Claim:
    """One of the paper's qualitative claims about a table, in a form that can be judged."""

    text: str
    type: str
    metric: str = "AP"
    row: Optional[str] = None
    than: Optional[str] = None
    to: Optional[str] = None
    rows: Tuple[str, ...] = ()
    tol: Optional[float] = None
    min_count: int = 1
    direction: Optional[str] = None  # best: "max" / "min" (default: by metric)


@dataclasses.dataclass(frozen=True)
class RowPlan:
    """A spec row resolved at one scale: what a cell of this row trains (before its seed)."""

    id: str
    settings: Dict[str, Any]
    base: str  # absolute path of the base config
    base_name: str  # as written in the spec (configs-relative), for display
    opts: Tuple[str, ...]  # KEY VALUE overrides, in order (spec, scale, row, anchors, command line)
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
    scales: Dict[str, Dict[str, Any]]
    overrides: Dict[str, Any]
    rows: List[Dict[str, Any]]
    claims: List[Claim]

    @property
    def row_ids(self) -> List[str]:
        return [r["id"] for r in self.rows]

    def fail(self, message: str, row: Optional[str] = None) -> SpecError:
        where = f"{self.path}: row {row!r}: " if row is not None else f"{self.path}: "
        return SpecError(where + message)

    def base_name(self, scale: str) -> str:
        return self.scales[scale]["base"]

    def resolve(self, scale: str, base_config: Optional[str] = None,
                extra_opts: Sequence[str] = ()) -> List[RowPlan]:
        """The rows at ``scale`` as :class:`RowPlan` s, every override checked against the config.

        ``base_config`` replaces the spec's base config of that scale (rows naming their own base
        keep it); ``extra_opts`` (``KEY VALUE`` ...) apply to every row after the spec's overrides.
        Raises :class:`SpecError` naming the spec file and row for an override that is not a
        config key or has the wrong type.
        """
        if scale not in self.scales:
            raise self.fail(f"no base config for scale {scale!r} (scales: {sorted(self.scales)})")
        if len(extra_opts) % 2:
            raise self.fail(f"command-line overrides must be KEY VALUE pairs, got {list(extra_opts)}")
        table_base = base_config or self.scales[scale]["base"]
        cache: Dict[str, Any] = {}
        plans = []
        for row in self.rows:
            rs = row.get("scales", {}).get(scale, {})
            base_name = rs.get("base") or table_base
            cfg = self._base_cfg(base_name, row["id"], cache)
            overrides: Dict[str, Any] = {}
            for layer in (self.overrides, self.scales[scale].get("overrides", {}), row.get("overrides", {}),
                          rs.get("overrides", {})):
                overrides.update(layer)
            opts: List[str] = []
            for key, value in overrides.items():
                opts += [key, _opt_value(value)]
            self._merge(cfg, opts, row["id"], base_name)
            anchors = rs.get("anchors", row.get("anchors"))
            if anchors:
                from focal_plugin.anchors import anchor_overrides

                bases = [float(level[0]) for level in cfg.MODEL.ANCHOR_GENERATOR.SIZES]
                try:
                    anchor_opts = anchor_overrides(anchors["scales_per_octave"], anchors["aspects"], bases)
                except ValueError as e:
                    raise self.fail(f"anchors {anchors}: {e}", row["id"]) from e
                self._merge(cfg, anchor_opts, row["id"], base_name)
                opts += anchor_opts
            if extra_opts:
                try:
                    cfg.merge_from_list(list(extra_opts))
                except (KeyError, ValueError, AssertionError) as e:
                    raise self.fail(f"command-line override {list(extra_opts)} is invalid: {e}") from e
                opts += list(extra_opts)
            plans.append(RowPlan(
                id=row["id"], settings={**row.get("settings", {}), **rs.get("settings", {})},
                base=resolve_config_file(base_name), base_name=base_name, opts=tuple(opts),
                paper={m: row.get("paper", {}).get(m) for m in self.metrics},
                paper_note=row.get("paper_note", ""),
            ))
        return plans

    def table_config(self, scale: str, base_config: Optional[str] = None,
                     extra_opts: Sequence[str] = ()) -> Tuple[str, List[str]]:
        """The table's base config file at ``scale`` and its overrides shared by all rows (the
        spec's, the scale's, ``extra_opts``), e.g. for data statistics of the table."""
        opts: List[str] = []
        for layer in (self.overrides, self.scales[scale].get("overrides", {})):
            for key, value in layer.items():
                opts += [key, _opt_value(value)]
        return resolve_config_file(base_config or self.scales[scale]["base"]), opts + list(extra_opts)

    def _base_cfg(self, base_name: str, row: str, cache: Dict[str, Any]):
        if base_name not in cache:
            from focal_plugin.engine import setup_cfg

            try:
                cache[base_name] = setup_cfg(resolve_config_file(base_name), freeze=False)
            except (FileNotFoundError, ValueError, KeyError) as e:
                raise self.fail(f"base config {base_name!r} cannot be loaded: {e}", row) from e
        return cache[base_name].clone()

    def _merge(self, cfg, opts: List[str], row: str, base_name: str) -> None:
        from focal_plugin.engine import has_key, unknown_key

        for key, value in zip(opts[::2], opts[1::2]):
            if not has_key(cfg, key):
                raise self.fail(f"override {key!r} is not a config key (base {base_name}): "
                                f"{unknown_key(cfg, key)}", row)
            try:
                cfg.merge_from_list([key, value])
            except (KeyError, ValueError, AssertionError) as e:
                raise self.fail(f"override {key} = {value!r} is invalid: {e}", row) from e


def _opt_value(value: Any) -> str:
    """A YAML value as detectron2's ``KEY VALUE`` string (decoded back by ``literal_eval``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "True" if value else "False"
    return repr(value)


# ------------------------------------------------------------------------------------ loading
def spec_path(name_or_path: str) -> str:
    """A spec file: a path, or a shipped spec's name (``table1a`` / ``table1a.yaml``)."""
    if os.path.isfile(name_or_path):
        return os.path.abspath(name_or_path)
    name = os.path.basename(name_or_path)
    name = name if name.endswith(".yaml") else name + ".yaml"
    path = os.path.join(ABLATIONS_DIR, name)
    if os.path.isfile(path):
        return path
    raise FileNotFoundError(
        f"ablation spec {name_or_path!r} not found (neither a file nor one of {list_specs()})")


def list_specs() -> List[str]:
    """Names of the shipped specs (``configs/ablations/*.yaml``)."""
    if not os.path.isdir(ABLATIONS_DIR):
        return []
    return sorted(f[:-5] for f in os.listdir(ABLATIONS_DIR) if f.endswith(".yaml"))


def load_spec(name_or_path: str) -> Spec:
    """Load and structurally validate a spec; :class:`SpecError` names the file, row or claim.

    Config keys are checked by :meth:`Spec.resolve` (it needs the base config of a scale).
    """
    path = spec_path(name_or_path)
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from e
    return _parse(path, raw)


def _parse(path: str, raw: Any) -> Spec:
    def fail(msg: str, row: Optional[str] = None) -> SpecError:
        return SpecError((f"{path}: row {row!r}: " if row is not None else f"{path}: ") + msg)

    if not isinstance(raw, Mapping):
        raise fail("expected a mapping at the top level")
    _unknown(raw, _SPEC_KEYS, fail, "spec")
    for key in ("title", "columns", "metrics", "scales", "rows"):
        if key not in raw:
            raise fail(f"missing required key {key!r}")
    metrics = list(raw["metrics"])
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        raise fail(f"metrics {bad or metrics} invalid: expected a non-empty subset of {list(METRICS)}")
    timing = raw.get("timing")
    if "ms" in metrics and not timing:
        raise fail("metric 'ms' needs a 'timing: {images: N, warmup: W}' section")
    if timing is not None:
        if not isinstance(timing, Mapping):
            raise fail("'timing' must be a mapping {images, warmup}")
        _unknown(timing, _TIMING_KEYS, fail, "timing")
        for k in _TIMING_KEYS:
            if not isinstance(timing.get(k), int) or timing[k] < (1 if k == "images" else 0):
                raise fail(f"timing.{k} = {timing.get(k)!r} is invalid: expected an integer "
                           f"{'>= 1' if k == 'images' else '>= 0'}")
    scales = raw["scales"]
    if not isinstance(scales, Mapping) or not scales:
        raise fail("'scales' must map a scale (paper, mini) to {base: config}")
    for scale, sc in scales.items():
        if scale not in SCALES:
            raise fail(f"unknown scale {scale!r}: expected one of {list(SCALES)}")
        if not isinstance(sc, Mapping) or "base" not in sc:
            raise fail(f"scales.{scale} must be a mapping with a 'base' config")
        _unknown(sc, _SCALE_KEYS, fail, f"scales.{scale}")
        _check_base(sc["base"], fail, None)
        _check_overrides(sc.get("overrides", {}), fail, None, f"scales.{scale}.overrides")
    _check_overrides(raw.get("overrides", {}), fail, None, "overrides")
    columns = list(raw["columns"])
    rows = raw["rows"]
    if not isinstance(rows, list) or not rows:
        raise fail("'rows' must be a non-empty list")
    seen: set = set()
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping) or "id" not in row:
            raise fail(f"row #{i + 1} must be a mapping with an 'id'")
        rid = row["id"]
        if not isinstance(rid, str) or not _ROW_ID.fullmatch(rid):
            raise fail(f"row #{i + 1}: id {rid!r} is invalid: expected letters, digits and _.=+-")
        if rid in seen:
            raise fail("duplicate row id", rid)
        seen.add(rid)
        _unknown(row, _ROW_KEYS, fail, "row", rid)
        _check_overrides(row.get("overrides", {}), fail, rid, "overrides")
        _check_anchors(row.get("anchors"), fail, rid)
        paper = row.get("paper", {}) or {}
        if not isinstance(paper, Mapping):
            raise fail("'paper' must map metrics to numbers", rid)
        for m, v in paper.items():
            if m not in metrics:
                raise fail(f"paper number for {m!r}, which is not one of the spec's metrics {metrics}", rid)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise fail(f"paper.{m} = {v!r} is not a number (use null for 'not reported')", rid)
        settings = dict(row.get("settings", {}) or {})
        per_scale = row.get("scales", {}) or {}
        if not isinstance(per_scale, Mapping):
            raise fail("'scales' must map a scale to {settings, overrides, base, anchors}", rid)
        for scale, rs in per_scale.items():
            if scale not in SCALES:
                raise fail(f"unknown scale {scale!r}: expected one of {list(SCALES)}", rid)
            if not isinstance(rs, Mapping):
                raise fail(f"scales.{scale} must be a mapping", rid)
            _unknown(rs, _ROW_SCALE_KEYS, fail, f"scales.{scale}", rid)
            _check_overrides(rs.get("overrides", {}), fail, rid, f"scales.{scale}.overrides")
            _check_anchors(rs.get("anchors"), fail, rid)
            if "base" in rs:
                _check_base(rs["base"], fail, rid)
            extra = set(rs.get("settings", {}) or {}) - set(columns)
            if extra:
                raise fail(f"scales.{scale}.settings {sorted(extra)} are not columns {columns}", rid)
        if set(settings) != set(columns):
            raise fail(f"settings {sorted(settings)} must name exactly the columns {columns}", rid)
    claims = [_parse_claim(c, i, seen, metrics, fail) for i, c in enumerate(raw.get("claims", []) or [])]
    name = raw.get("name") or os.path.splitext(os.path.basename(path))[0]
    if not _ROW_ID.fullmatch(str(name)):
        raise fail(f"name {name!r} is invalid: expected letters, digits and _.=+-")
    return Spec(path=path, name=str(name), title=str(raw["title"]), source=str(raw.get("source", "")),
                note=str(raw.get("note", "")), columns=columns, metrics=metrics,
                timing=dict(timing) if timing else None, scales={k: dict(v) for k, v in scales.items()},
                overrides=dict(raw.get("overrides", {}) or {}), rows=[dict(r) for r in rows], claims=claims)


def _unknown(mapping: Mapping, allowed: set, fail, what: str, row: Optional[str] = None) -> None:
    extra = sorted(set(mapping) - allowed)
    if extra:
        raise fail(f"unknown key(s) {extra} in {what}; allowed: {sorted(allowed)}", row)


def _check_overrides(overrides: Any, fail, row: Optional[str], what: str) -> None:
    if not isinstance(overrides, Mapping):
        raise fail(f"{what} must map config keys to values", row)
    for key in overrides:
        if not isinstance(key, str) or not re.fullmatch(r"[A-Z0-9_]+(\.[A-Z0-9_]+)*", key):
            raise fail(f"{what}: {key!r} is not a config key (expected e.g. MODEL.FOCAL.GAMMA)", row)
        if key in ("OUTPUT_DIR", "SEED"):
            raise fail(f"{what}: {key} is set by the runner per cell, not by a spec", row)


def _check_anchors(anchors: Any, fail, row: Optional[str]) -> None:
    if anchors is None:
        return
    if not isinstance(anchors, Mapping) or set(anchors) != _ANCHOR_KEYS:
        raise fail(f"anchors {anchors!r} must be {{scales_per_octave: n, aspects: 1 or 3}}", row)


def _check_base(base: Any, fail, row: Optional[str]) -> None:
    try:
        resolve_config_file(str(base))
    except FileNotFoundError as e:
        raise fail(f"base config {base!r} not found: {e}", row) from None


def _parse_claim(raw: Any, i: int, rows: set, metrics: List[str], fail) -> Claim:
    where = f"claim #{i + 1}"
    if not isinstance(raw, Mapping) or "type" not in raw or "text" not in raw:
        raise fail(f"{where} must be a mapping with 'text' and 'type'")
    kind = raw["type"]
    if kind not in _CLAIM_FIELDS:
        raise fail(f"{where}: unknown type {kind!r}; expected one of {sorted(_CLAIM_FIELDS)}")
    required, optional = _CLAIM_FIELDS[kind]
    _unknown(raw, required | optional | {"text", "type"}, fail, where)
    missing = sorted(required - set(raw))
    if missing:
        raise fail(f"{where} ({kind}) is missing {missing}")
    refs = [raw[k] for k in ("row", "than", "to") if k in raw] + list(raw.get("rows", []))
    for ref in refs:
        if ref not in rows:
            raise fail(f"{where} refers to row {ref!r}, which the spec does not have")
    metric = raw.get("metric", "AP")
    if metric not in metrics:
        raise fail(f"{where}: metric {metric!r} is not one of the spec's metrics {metrics}")
    direction = raw.get("direction")
    if direction not in (None, "max", "min"):
        raise fail(f"{where}: direction {direction!r} must be 'max' or 'min'")
    return Claim(text=str(raw["text"]), type=kind, metric=metric, row=raw.get("row"), than=raw.get("than"),
                 to=raw.get("to"), rows=tuple(raw.get("rows", ())),
                 tol=float(raw["tol"]) if "tol" in raw else None,
                 min_count=int(raw.get("min_count", 1)), direction=direction)
