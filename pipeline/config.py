"""`pipeline.yaml`: loading with line numbers, the schema, `--set` overrides, and the checks that
run before anything executes (unknown type or key, wrong type, unknown input, cycle).

Every error is a ``ConfigError`` naming the key path and the line it comes from.
"""
from __future__ import annotations

import graphlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from components.base import DEFAULT_TRACKING_URI
from components.registry import COMPONENTS, get_spec


class ConfigError(Exception):
    pass


# ----------------------------------------------------------------------------- YAML with lines
class LineDict(dict):
    """A dict that remembers the line of each key (1-based), so errors can point at the file."""

    line: int = 0
    key_lines: dict

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.key_lines = {}


class _LineLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader, node):
    loader.flatten_mapping(node)
    d = LineDict()
    d.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in d:
            raise ConfigError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}")
        d[key] = loader.construct_object(value_node, deep=True)
        d.key_lines[key] = key_node.start_mark.line + 1
    return d


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path: Path) -> LineDict:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    try:
        data = yaml.load(text, Loader=_LineLoader)  # SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping (name, root, components, ...)")
    return data


def line_of(data: Any, loc: tuple) -> int | None:
    """The line of the deepest key along `loc` that exists in the loaded YAML."""
    line = getattr(data, "line", None)
    node = data
    for part in loc:
        if isinstance(node, LineDict) and part in node:
            line = node.key_lines.get(part, line)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
            line = getattr(node, "line", line)
        else:
            break
    return line


def _where(path: Path, data: Any, loc: tuple, overrides: dict) -> str:
    dotted = ".".join(str(p) for p in loc)
    for key in overrides:
        if dotted == key or dotted.startswith(key + ".") or key.startswith(dotted + "."):
            return f"{path}: {dotted} (set by --set {key}=...)"
    line = line_of(data, loc)
    return f"{path}:{line}: {dotted}" if line else f"{path}: {dotted}"


# ----------------------------------------------------------------------------- schema
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrackingConfig(_Strict):
    uri: str = DEFAULT_TRACKING_URI
    experiment: str = "cnn-pipeline"


class ComponentConfig(_Strict):
    type: str
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, str] = Field(default_factory=dict)
    description: str = ""


class BeamConfig(_Strict):
    """Which Beam engine runs ExampleGen, StatisticsGen and BulkInferrer. Results are the same
    on every runner, so the choice is not part of any cache key."""

    runner: Literal["local", "multiprocess", "dask", "flink", "spark", "dataflow"] = "local"
    workers: int = Field(2, ge=1, description="processes for multiprocess, or for dask's own LocalCluster")
    address: str | None = Field(None, description="dask: scheduler address (tcp://host:8786); none starts a "
                                                   "LocalCluster of `workers` processes for the run")
    args: list[str] = Field(default_factory=list, description="extra Beam pipeline options, passed through")


class PipelineConfig(_Strict):
    name: str
    root: str = "pipeline_root"
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    beam: BeamConfig = Field(default_factory=BeamConfig)
    beam_args: list[str] = Field(default_factory=list, description="raw Beam options (older form of beam.args)")
    jobs: int = Field(1, ge=1, description="components run at once when independent (run --jobs N)")
    max_parallel_trainers: int = Field(1, ge=1, description="Trainers run at once (they each use every core)")
    components: dict[str, ComponentConfig]

    def beam_settings(self) -> dict:
        """What a component's Context gets: runner, workers, address and every extra option."""
        extra = [a for a in self.beam_args if a != "--runner=FnApiRunner"]  # the old default spelled out
        return {"runner": self.beam.runner, "workers": self.beam.workers, "address": self.beam.address,
                "args": [*extra, *self.beam.args]}


class ResolvedComponent(BaseModel):
    """A component after validation: its params model instance and its upstream edges."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    id: str
    type: str
    params: Any  # the component's Params instance
    inputs: dict[str, tuple[str, str]]  # input name -> (producer id, output name)


class Pipeline(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    config: PipelineConfig
    components: dict[str, ResolvedComponent]
    order: list[str]  # topological
    path: Path
    base_dir: Path  # relative paths in the file are relative to its folder

    def resolve_path(self, p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else (self.base_dir / q)

    @property
    def root(self) -> Path:
        return self.resolve_path(self.config.root)

    @property
    def tracking_uri(self) -> str:
        uri = self.config.tracking.uri
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            # a relative sqlite path is relative to pipeline.yaml's folder, like every other path
            uri = "sqlite:///" + str(self.resolve_path(uri[len("sqlite:///"):]))
        return uri

    def downstream(self, cid: str) -> set[str]:
        out, frontier = set(), [cid]
        while frontier:
            cur = frontier.pop()
            for other, comp in self.components.items():
                if other not in out and any(prod == cur for prod, _ in comp.inputs.values()):
                    out.add(other)
                    frontier.append(other)
        return out

    def upstream(self, cid: str) -> set[str]:
        out, frontier = set(), [cid]
        while frontier:
            cur = frontier.pop()
            for prod, _ in self.components[cur].inputs.values():
                if prod not in out:
                    out.add(prod)
                    frontier.append(prod)
        return out


# ----------------------------------------------------------------------------- overrides
def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected path.to.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def apply_overrides(data: dict, overrides: list[str]) -> dict[str, Any]:
    """Apply `--set a.b.c=v`. A path starting with a component id is short for
    `components.<id>.params.<rest>`. Returns the normalised key -> value map."""
    applied = {}
    for text in overrides:
        key, value = parse_override(text)
        parts = key.split(".")
        comps = data.get("components") or {}
        if parts[0] in comps and parts[0] not in ("components",) and len(parts) > 1 \
                and parts[1] not in ("params", "inputs", "type", "description"):
            parts = ["components", parts[0], "params", *parts[1:]]
        node = data
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {'.'.join(parts[:i])} is not a mapping")
            if part not in node or node[part] is None:
                if parts[0] == "components" and i <= 1:
                    raise ConfigError(f"--set {key}: no component {part!r} in the pipeline")
                node[part] = LineDict()
            node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parts[:-1])} is not a mapping")
        node[parts[-1]] = value
        applied[".".join(parts)] = value
    return applied


# ----------------------------------------------------------------------------- validation
def _format_validation(path: Path, data: Any, err: ValidationError, prefix: tuple, overrides) -> str:
    lines = []
    for e in err.errors():
        loc = prefix + tuple(e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{_where(path, data, loc, overrides)}: {msg}")
    return "\n".join(lines)


def load_pipeline(path: str | Path, overrides: list[str] | None = None) -> Pipeline:
    path = Path(path)
    data = load_yaml(path)
    applied = apply_overrides(data, overrides or [])
    try:
        config = PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation(path, data, e, (), applied)) from None

    errors: list[str] = []
    resolved: dict[str, ResolvedComponent] = {}
    specs = {}
    for cid, comp in config.components.items():
        if comp.type not in COMPONENTS:
            errors.append(f"{_where(path, data, ('components', cid, 'type'), applied)}: unknown component "
                          f"type {comp.type!r} (known: {', '.join(COMPONENTS)})")
            continue
        spec = specs[cid] = get_spec(comp.type)
        try:
            params = spec.params.model_validate(comp.params)
        except ValidationError as e:
            errors.append(_format_validation(path, data, e, ("components", cid, "params"), applied))
            continue
        if hasattr(params, "resolve_paths"):
            params.resolve_paths(path.resolve().parent)
        for key, local in params.local_paths().items():
            if not Path(local).expanduser().exists():
                loc = ("components", cid, "params", *[int(k) if k.isdigit() else k for k in key.split(".")])
                errors.append(f"{_where(path, data, loc, applied)}: no such file or folder: {local}")
        resolved[cid] = ResolvedComponent(id=cid, type=comp.type, params=params, inputs={})

    for cid, comp in config.components.items():
        if cid not in resolved:
            continue
        spec = specs[cid]
        for name, ref in comp.inputs.items():
            where = _where(path, data, ("components", cid, "inputs", name), applied)
            if name not in spec.inputs:
                errors.append(f"{where}: {comp.type} has no input {name!r} "
                              f"(inputs: {', '.join(spec.inputs) or 'none'})")
                continue
            if ref.count(".") != 1:
                errors.append(f"{where}: expected '<component>.<output>', got {ref!r}")
                continue
            prod, out = ref.split(".")
            if prod not in config.components:
                errors.append(f"{where}: input names a missing component {prod!r}")
                continue
            if prod in specs and out not in specs[prod].outputs:
                errors.append(f"{where}: component {prod!r} ({config.components[prod].type}) has no "
                              f"output {out!r} (outputs: {', '.join(specs[prod].outputs)})")
                continue
            resolved[cid].inputs[name] = (prod, out)
        for name, required in spec.inputs.items():
            if required and name not in comp.inputs:
                errors.append(f"{_where(path, data, ('components', cid), applied)}: {comp.type} "
                              f"needs input {name!r}")
    if errors:
        raise ConfigError("\n".join(errors))

    sorter = graphlib.TopologicalSorter({cid: {p for p, _ in c.inputs.values()} for cid, c in resolved.items()})
    try:
        order = list(sorter.static_order())
    except graphlib.CycleError as e:
        cycle = e.args[1]
        raise ConfigError(f"{_where(path, data, ('components', cycle[0], 'inputs'), applied)}: "
                          f"cycle: {' -> '.join(cycle)}") from None
    return Pipeline(config=config, components=resolved, order=order, path=path,
                    base_dir=path.resolve().parent)
