"""One component's execution, whoever drives it: its cache key, running it into a temporary
folder with its logger and tracker (the DAG runner, in process or in a parallel worker process),
and `python -m pipeline component` (a component on its own, outside any pipeline)."""
from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any

from components.base import DEFAULT_TRACKING_URI, ComponentError, Context
from components.registry import get_spec, spec_module
from pipeline import fingerprint as fp


class PipelineError(Exception):
    pass


def compute_key(type_name: str, params, input_fps: dict[str, str], resolved: dict | None = None
                ) -> tuple[str, str, list[str]]:
    spec = get_spec(type_name)
    roots = [spec_module(type_name)]
    if spec.code_dependencies:
        roots += spec.code_dependencies(params)
    code, modules = fp.code_fingerprint(roots)
    external = fp.external_fingerprint(spec.external_files(params)) if spec.external_files else None
    pdict = params.model_dump(mode="json")
    return fp.cache_key(type_name, pdict, input_fps, code + fp.env_fingerprint(), external, resolved), code, modules


def resolve_external(type_name: str, params, tracking_uri: str, input_fps: dict[str, str]) -> dict | None:
    """The spec's resolver result (e.g. the Evaluator's baseline version), or None without one."""
    spec = get_spec(type_name)
    return spec.resolve(params, tracking_uri, input_fps) if spec.resolve else None


def error_text(e: BaseException) -> str:
    """A failure as its one console line: a ComponentError's message, anything else with its type."""
    from components.distribution import NotChief

    if isinstance(e, NotChief):  # a multi_worker Trainer on a non-chief machine: no artifact here
        return (f"{e.message}; in `pipeline run` only the chief has the Trainer's artifact for the components "
                "downstream: run a multi_worker Trainer with `python -m pipeline component Trainer` on each "
                "machine (README: Distributed training)")
    return str(e) if isinstance(e, ComponentError) else f"{type(e).__name__}: {e}"


def component_logger(log_path: Path, cid: str, console=None) -> logging.Logger:
    logger = logging.getLogger(f"pipeline.component.{cid}.{uuid.uuid4().hex[:6]}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    fh = logging.FileHandler(log_path)
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(fh)
    if console is not None:
        from rich.logging import RichHandler

        rh = RichHandler(console=console, show_time=False, show_path=False, markup=False)
        rh.setFormatter(logging.Formatter(f"[{cid}] %(message)s"))
        # the console gets warnings, errors and the lines a component marks for it
        # (extra={"console": True}: a training's progress); everything else is in the log file
        rh.addFilter(lambda r: r.levelno >= logging.WARNING or getattr(r, "console", False))
        logger.addHandler(rh)
    return logger


def close_logger(logger: logging.Logger) -> None:
    for h in list(logger.handlers):
        h.close()
        logger.removeHandler(h)


def execute_component(type_name: str, params, inputs: dict[str, Path], tmp_dir: Path, *, work_dir: Path,
                      logger: logging.Logger, tracker=None, beam=None, tracking_uri=DEFAULT_TRACKING_URI,
                      pipeline_run_id=None, cache_key=None, component_id="component", show_progress=True,
                      resolved=None, input_fingerprints=None) -> dict:
    spec = get_spec(type_name)
    ctx = Context(outputs={o: tmp_dir / o for o in spec.outputs}, work_dir=work_dir, logger=logger,
                  tracking_uri=tracking_uri,
                  pipeline_run_id=pipeline_run_id, cache_key=cache_key, component_id=component_id,
                  show_progress=show_progress, resolved=dict(resolved or {}),
                  input_fingerprints=dict(input_fingerprints or {}))
    if tracker is not None:
        ctx.tracker = tracker
    if beam is not None:
        ctx.beam = dict(beam)
    missing = [n for n, req in spec.inputs.items() if req and n not in inputs]
    if missing:
        raise ComponentError(f"{type_name} needs input(s) {', '.join(missing)}")
    for n, p in inputs.items():
        if not Path(p).exists():
            raise ComponentError(f"input {n!r}: artifact folder {p} does not exist")
    result = spec.run(ctx, inputs, params)
    return result or {}


def run_single(type_name: str, inputs: dict[str, Path], params: dict[str, Any], out_dir: Path, *,
               beam=None, tracking_uri=DEFAULT_TRACKING_URI, console=None) -> dict:
    """`python -m pipeline component TYPE --input name=PATH --param k=v --out DIR`: run one component
    outside any pipeline. Outputs land in DIR/<output>/ with DIR/metadata.json; written to a
    temporary sibling first and renamed into place."""
    import json
    import os
    import shutil

    spec = get_spec(type_name)
    params_obj = spec.params.model_validate(params)
    input_fps = {n: fp.artifact_fingerprint(Path(p)) for n, p in inputs.items()}
    resolved = resolve_external(type_name, params_obj, tracking_uri, input_fps)
    key, code, modules = compute_key(type_name, params_obj, input_fps, resolved)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise PipelineError(f"--out {out_dir} exists and is not empty; choose a new folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".tmp-{out_dir.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for o in spec.outputs:
        (tmp / o).mkdir()
    work = out_dir.parent / f".work-{out_dir.name}"
    work.mkdir(exist_ok=True)
    logger = component_logger(tmp / "log.txt", type_name, console)
    t0 = time.time()
    try:
        result = execute_component(type_name, params_obj, {n: Path(p) for n, p in inputs.items()}, tmp,
                                   work_dir=work, logger=logger, beam=beam, tracking_uri=tracking_uri,
                                   cache_key=key, component_id=type_name, resolved=resolved,
                                   input_fingerprints=input_fps)
    except BaseException:
        close_logger(logger)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    close_logger(logger)
    meta = {"component": type_name, "type": type_name, "cache_key": key, "inputs": {n: str(v) for n, v in inputs.items()},
            "input_fingerprints": input_fps, "params": params_obj.model_dump(mode="json"), "code_fingerprint": code,
            "code_modules": modules, "resolved": resolved, "duration_s": time.time() - t0, "status": "complete",
            "finished": time.time(),
            "metrics": {k: v for k, v in (result or {}).items() if isinstance(v, (int, float))},
            "output_fingerprints": {o: fp.output_fingerprint(key, o) for o in spec.outputs}}
    (tmp / "metadata.json").write_text(json.dumps(meta, indent=2, default=str))
    if out_dir.exists():
        out_dir.rmdir()
    os.rename(tmp, out_dir)
    shutil.rmtree(work, ignore_errors=True)
    return meta
