"""The DAG runner: executes a validated `Pipeline` in topological order with the content-hash
cache, MLflow tracking and a live status view. Also runs one component on its own."""
from __future__ import annotations

import logging
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.base import DEFAULT_TRACKING_URI, ComponentError, Context, log_to_file_only
from components.registry import get_spec, spec_module
from pipeline import fingerprint as fp
from pipeline.config import Pipeline
from pipeline.store import ArtifactStore


class PipelineError(Exception):
    pass


class InterruptGate:
    """Ctrl-C as the CLI's SIGINT handler and the runner share it. ``requested``: Ctrl-C was
    pressed (even if a library swallowed the KeyboardInterrupt); ``deferred``: the runner is
    recording and closing the run, so the handler must not raise there (a half-closed run would
    stay RUNNING); the runner raises once it is done."""

    requested = False
    deferred = False


class Interrupted(Exception):
    """Ctrl-C during a run: what was running, and the last finished epoch of a training."""

    def __init__(self, component: str | None, epoch: int | None):
        self.component, self.epoch = component, epoch
        where = f" during {component}" if component else ""
        at = f" at epoch {epoch}" if epoch else ""
        super().__init__(f"interrupted{where}{at}; `python -m pipeline run` resumes from there")


def reap_dead(store: ArtifactStore, tracking_uri: str | None) -> list[dict]:
    """Executions whose process died while running: marked killed, their MLflow runs KILLED."""
    dead = store.reap_dead_owners()
    if dead and tracking_uri:
        from pipeline.tracking import end_dead_runs

        end_dead_runs(tracking_uri, [r[k] for r in dead for k in ("mlflow_run_id", "mlflow_parent_run_id") if r.get(k)])
    return dead


def _last_epoch(work_dir: Path) -> int | None:
    """The last epoch a Trainer finished (its epoch log in the work folder), if any."""
    import json

    best = None
    for f in work_dir.glob("history-*.json"):
        try:
            best = max(best or 0, len(json.loads(f.read_text()).get("loss", [])))
        except (OSError, ValueError):
            continue
    return best


@dataclass
class Execution:
    component: str
    type: str
    status: str = "pending"  # pending | running | done | cached | failed | skipped | reused
    key: str | None = None
    duration: float = 0.0
    dir: Path | None = None
    error: str | None = None
    mlflow_run_id: str | None = None
    metrics: dict = field(default_factory=dict)


@dataclass
class RunResult:
    run_id: str
    executions: dict[str, Execution]
    mlflow_run_id: str | None

    @property
    def ok(self) -> bool:
        return all(e.status in ("done", "cached", "reused") for e in self.executions.values())


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


def _component_logger(log_path: Path, cid: str, console=None) -> logging.Logger:
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
        logger.addHandler(rh)
    return logger


def _close_logger(logger: logging.Logger) -> None:
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


def select_components(pipeline: Pipeline, only=None, from_=None, to=None) -> list[str]:
    ids = set(pipeline.order)
    for name in list(only or []) + [from_, to]:
        if name and name not in pipeline.components:
            raise PipelineError(f"no component {name!r} in {pipeline.path} "
                                f"(components: {', '.join(pipeline.order)})")
    selected = set(ids)
    if only:
        selected = set(only)
    if from_:
        selected &= {from_} | pipeline.downstream(from_)
    if to:
        selected &= {to} | pipeline.upstream(to)
    return [c for c in pipeline.order if c in selected]


class Runner:
    def __init__(self, pipeline: Pipeline, console=None, show_progress: bool = True, tracking: bool = True,
                 verbose: bool = False):
        self.pipeline = pipeline
        self.verbose = verbose
        self.console = console
        self.show_progress = show_progress
        self.tracking_enabled = tracking
        self.store = ArtifactStore(pipeline.root)

    # -- keys for the whole graph ----------------------------------------------------------
    def _keys(self, only: set[str] | None = None) -> dict[str, tuple[str, dict[str, str], str, list[str], dict | None]]:
        """Cache key of every component (or of ``only``, which must hold its upstream closure).
        Resolvers (the Evaluator's champion lookup) run once here, when the run starts, so the
        whole run sees one registry state."""
        keys = {}
        for cid in self.pipeline.order:
            if only is not None and cid not in only:
                continue
            comp = self.pipeline.components[cid]
            input_fps = {name: fp.output_fingerprint(keys[prod][0], out) for name, (prod, out) in comp.inputs.items()}
            resolved = resolve_external(comp.type, comp.params, self.pipeline.tracking_uri, input_fps)
            key, code, modules = compute_key(comp.type, comp.params, input_fps, resolved)
            keys[cid] = (key, input_fps, code, modules, resolved)
        return keys

    def run(self, only=None, from_=None, to=None, no_cache: bool = False) -> RunResult:
        p = self.pipeline
        InterruptGate.requested = InterruptGate.deferred = False
        selected = select_components(p, only, from_, to)
        keys = self._all_keys = self._keys()
        dead = reap_dead(self.store, p.tracking_uri if self.tracking_enabled else None)
        if dead and self.console is not None:
            self.console.print(f"[yellow]{len(dead)} execution(s) whose process died were marked killed: "
                               f"{', '.join(sorted({r['component'] for r in dead}))}[/]")
        self.store.clean_stale()
        execs = {cid: Execution(cid, p.components[cid].type) for cid in selected}

        # Inputs from outside the selection must already be in the cache.
        needed = {prod for cid in selected for prod, _ in p.components[cid].inputs.values()} - set(selected)
        reused = {}
        for prod in sorted(needed):
            m = self.store.lookup(prod, keys[prod][0])
            if m is None:
                raise PipelineError(
                    f"component {prod!r} has not been run with its current params and code, and the "
                    f"selected components need its outputs: run it first "
                    f"(python -m pipeline run {p.path} --only {prod}, or --to {prod})")
            reused[prod] = m

        run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        tracking = None
        if self.tracking_enabled:
            from pipeline.tracking import TrackingSession

            tracking = TrackingSession(p.tracking_uri, p.config.tracking.experiment, p.root)
        parent_id = tracking.start_parent(f"{p.config.name} {run_id}", {
            "pipeline": p.config.name, "pipeline_run": run_id, "pipeline_file": str(p.path.resolve()),
            "selection": ",".join(selected)}) if tracking else None

        self._parent_id = parent_id
        self.store.record_pipeline_run(run_id, parent_id)
        view = _StatusView(self.console, execs) if self.console is not None else None
        failed_or_skipped: set[str] = set()
        end_status = None
        try:
            if view:
                view.start()
            for cid in selected:
                comp = p.components[cid]
                ex = execs[cid]
                ups = {prod for prod, _ in comp.inputs.values()}
                if ups & failed_or_skipped:
                    ex.status = "skipped"
                    ex.error = f"upstream failed: {', '.join(sorted(ups & failed_or_skipped))}"
                    failed_or_skipped.add(cid)
                    if view:
                        view.update()
                    continue
                self._execute(cid, keys[cid], ex, run_id, tracking, no_cache, view)
                if ex.status == "failed":
                    failed_or_skipped.add(cid)
                if InterruptGate.requested:  # a library swallowed the KeyboardInterrupt: stop here
                    break
        except KeyboardInterrupt:
            InterruptGate.requested = True
        finally:
            InterruptGate.deferred = True  # closing the records: a Ctrl-C now waits for this block
            if InterruptGate.requested:
                end_status = "KILLED"
            if view:
                view.stop()
            if tracking:
                hits = [c for c, e in execs.items() if e.status == "cached"]
                tracking.tag_parent({"cache_hits": ",".join(hits), "executed": str(sum(
                    e.status in ("done", "failed", "killed") for e in execs.values())),
                    "replay": str(bool(hits) and len(hits) == len(execs)).lower()})
                try:  # the DAG coloured by this run's statuses; drawing never fails the run
                    from pipeline.graph import log_to_parent

                    log_to_parent(tracking, p, {c: e.status for c, e in execs.items()},
                                  title=f"{p.config.name}: pipeline run {run_id}")
                except Exception as e:  # noqa: BLE001
                    logging.getLogger(__name__).warning("pipeline graph not logged to MLflow: %s", e)
                tracking.end_parent(end_status or ("FINISHED" if not failed_or_skipped else "FAILED"))
            self.store.finish_pipeline_run(run_id, (end_status or ("FINISHED" if not failed_or_skipped
                                                                   else "FAILED")).lower())
            InterruptGate.deferred = False
        if InterruptGate.requested:
            running = next((c for c, e in execs.items() if e.status == "killed"), None)
            last = next((c for c in reversed(selected) if execs[c].status not in ("pending", "skipped")), None)
            where = running or last
            epoch = _last_epoch(self.store.root / where / ".work" / keys[where][0]) if running else None
            raise Interrupted(where, epoch)
        return RunResult(run_id, execs, parent_id)

    def _inputs_for(self, cid: str, keys) -> dict[str, Path]:
        comp = self.pipeline.components[cid]
        return {name: self.store.final_dir(prod, keys[prod][0]) / out for name, (prod, out) in comp.inputs.items()}

    def _execute(self, cid, keyinfo, ex: Execution, run_id, tracking, no_cache, view) -> None:
        p = self.pipeline
        comp = p.components[cid]
        key, input_fps, code, modules, resolved = keyinfo
        ex.key = key
        inputs = self._inputs_for(cid, self._all_keys)
        params_json = comp.params.model_dump(mode="json")
        tags = {"component": cid, "component_type": comp.type, "cache_key": key, "pipeline_run": run_id}
        row = self.store.record_start(pipeline_run=run_id, pipeline=p.config.name, component=cid, type=comp.type,
                                      cache_key=key, status="running", cache_hit=0, started=time.time(),
                                      mlflow_parent_run_id=getattr(self, "_parent_id", None))
        hit = None if no_cache else self.store.lookup(cid, key)
        t0 = time.time()
        if hit is not None:
            # no MLflow child run for a cache hit: the execution points at the run that made the
            # artifact, and the parent run lists the hits (a day of reruns adds no copies)
            ex.status, ex.dir = "cached", self.store.final_dir(cid, key)
            ex.metrics = hit.get("metrics", {})
            ex.mlflow_run_id = hit.get("mlflow_run_id")
            ex.duration = time.time() - t0
            self.store.record_update(row, status="cached", cache_hit=1, duration=ex.duration,
                                     mlflow_run_id=ex.mlflow_run_id, artifact_dir=str(ex.dir))
            if view:
                view.update()
            return

        ex.status = "running"
        if view:
            view.update()
        log_path = self.store.log_path(run_id, cid)
        logger = _component_logger(log_path, cid, self.console)
        tmp = self.store.begin(cid, key, get_spec(comp.type).outputs)
        try:
            with (tracking.child(cid, {**tags, "cache_hit": "false"}) if tracking else _null_tracker()) as tr:
                ex.mlflow_run_id = getattr(tr, "run_id", None)
                if tr is not None:
                    self.store.record_update(row, mlflow_run_id=ex.mlflow_run_id)  # a later run can end it
                    tr.log_params(params_json)
                result = execute_component(
                    comp.type, comp.params, inputs, tmp, work_dir=self.store.work_dir(cid, key), logger=logger,
                    tracker=tr, beam=p.config.beam_settings(), tracking_uri=p.tracking_uri, pipeline_run_id=run_id,
                    cache_key=key, component_id=cid, show_progress=self.show_progress, resolved=resolved,
                    input_fingerprints=input_fps)
                ex.metrics = {k: v for k, v in (result or {}).items() if isinstance(v, (int, float))}
                if tr is not None and ex.metrics:
                    tr.log_metrics(ex.metrics)
                ex.duration = time.time() - t0
                meta = {"component": cid, "type": comp.type, "cache_key": key, "inputs": {n: str(v) for n, v in inputs.items()},
                        "input_fingerprints": input_fps, "params": params_json, "code_fingerprint": code,
                        "code_modules": modules, "resolved": resolved, "pipeline_run": run_id,
                        "mlflow_run_id": ex.mlflow_run_id,
                        "started": t0, "duration_s": ex.duration, "metrics": ex.metrics,
                        "output_fingerprints": {o: fp.output_fingerprint(key, o) for o in get_spec(comp.type).outputs}}
                ex.dir = self.store.commit(tmp, cid, key, meta)
                if tr is not None:
                    tr.log_artifact(log_path, "logs")
            ex.status = "done"
            self.store.record_update(row, status="done", duration=ex.duration, mlflow_run_id=ex.mlflow_run_id,
                                     artifact_dir=str(ex.dir))
        except BaseException as e:  # noqa: BLE001 - record the failure, then decide whether to re-raise
            self.store.abort(tmp)
            ex.duration = time.time() - t0
            if isinstance(e, (KeyboardInterrupt, SystemExit)) or InterruptGate.requested:  # (or a library's
                # exception raised by the interruption)
                ex.status, ex.error = "killed", "interrupted"
                log_to_file_only(logger, "%s interrupted after %.1fs", cid, ex.duration)
                self.store.record_update(row, status="killed", duration=ex.duration, error=ex.error,
                                         mlflow_run_id=ex.mlflow_run_id)
                raise KeyboardInterrupt from (None if isinstance(e, KeyboardInterrupt) else e)
            ex.status = "failed"
            ex.error = str(e) if isinstance(e, ComponentError) else f"{type(e).__name__}: {e}"
            # one clear line on the console; the traceback goes to the log file (and, with
            # --verbose, to the console too)
            logger.error("%s failed: %s", cid, ex.error)
            log_to_file_only(logger, "%s", traceback.format_exc())
            if self.verbose and self.console is not None:
                self.console.print(traceback.format_exc(), markup=False, highlight=False)
            ex.error += f"  (log: {log_path})"
            self.store.record_update(row, status="failed", duration=ex.duration, error=ex.error,
                                     mlflow_run_id=ex.mlflow_run_id)
        finally:
            _close_logger(logger)
            if view:
                view.update()


    def cached_outputs(self, cid: str) -> dict[str, Path]:
        """The output folders of ``cid``'s upstream components as the current params and code
        would have written them (input name -> folder), for tools that rebuild what a component
        sees (``explain TRAINER``). Raises PipelineError naming what must run first."""
        comp = self.pipeline.components[cid]
        keys = self._keys(self.pipeline.upstream(cid) | {cid})
        out = {}
        for name, (prod, output) in comp.inputs.items():
            if self.store.lookup(prod, keys[prod][0]) is None:
                raise PipelineError(f"{cid} needs {prod}.{output}, which has not been run with its current params and "
                                    f"code: run `python -m pipeline run {self.pipeline.path} --to {prod}` first")
            out[name] = self.store.final_dir(prod, keys[prod][0]) / output
        return out


class _null_tracker:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


_STYLE = {"pending": ("·", "dim"), "running": ("▶", "bold yellow"), "done": ("✔", "green"),
          "cached": ("↺", "cyan"), "failed": ("✘", "bold red"), "skipped": ("–", "magenta"),
          "killed": ("✘", "bold magenta")}


class _StatusView:
    """A live table of the components: pending, running, done, cached, failed, skipped."""

    def __init__(self, console, execs: dict[str, Execution]):
        from rich.live import Live

        self.console = console
        self.execs = execs
        self.live = Live(self._table(), console=console, refresh_per_second=4, transient=False,
                         redirect_stdout=True, redirect_stderr=False)

    def _table(self):
        from rich.table import Table

        t = Table(title="pipeline", expand=False)
        for col in ("", "component", "type", "status", "time"):
            t.add_column(col)
        for e in self.execs.values():
            sym, style = _STYLE.get(e.status, ("?", ""))
            t.add_row(f"[{style}]{sym}[/]", e.component, e.type, f"[{style}]{e.status}[/]",
                      f"{e.duration:.1f}s" if e.duration else "")
        return t

    def start(self):
        self.live.start()

    def update(self):
        self.live.update(self._table(), refresh=True)

    def stop(self):
        self.live.update(self._table(), refresh=True)
        self.live.stop()


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
    logger = _component_logger(tmp / "log.txt", type_name, console)
    t0 = time.time()
    try:
        result = execute_component(type_name, params_obj, {n: Path(p) for n, p in inputs.items()}, tmp,
                                   work_dir=work, logger=logger, beam=beam, tracking_uri=tracking_uri,
                                   cache_key=key, component_id=type_name, resolved=resolved,
                                   input_fingerprints=input_fps)
    except BaseException:
        _close_logger(logger)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _close_logger(logger)
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
