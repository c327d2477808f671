"""The DAG runner: executes a validated `Pipeline` in topological order with the content-hash
cache, MLflow tracking and a live status view; one component at a time in this process, or with
`jobs` > 1 independent components at once in worker processes (pipeline/parallel.py). One
component's key and execution, and `python -m pipeline component`, are in pipeline/execute.py."""
from __future__ import annotations

import logging
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from components.base import log_to_file_only
from components.registry import get_spec
from pipeline import fingerprint as fp
from pipeline.config import Pipeline
# run_single, compute_key and PipelineError are imported from here by the CLI, tests and benchmarks
from pipeline.execute import (PipelineError, close_logger, component_logger, compute_key,  # noqa: F401
                              error_text, execute_component, resolve_external, run_single)
from pipeline.store import ArtifactStore, KeyLock


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
class _Job:
    """An execution that is not a cache hit, from its start record to its commit: what the
    in-process path and the parallel scheduler (pipeline/parallel.py) both record it by."""
    cid: str
    type: str
    ex: Execution
    row: int
    keyinfo: tuple
    run_id: str
    inputs: dict[str, Path]
    params_json: dict
    tags: dict[str, str]
    tmp: Path
    work_dir: Path
    log_path: Path
    t0: float
    lock: KeyLock | None = None


@dataclass
class RunResult:
    run_id: str
    executions: dict[str, Execution]
    mlflow_run_id: str | None

    @property
    def ok(self) -> bool:
        return all(e.status in ("done", "cached", "reused") for e in self.executions.values())


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
        view = None
        if self.console is not None:  # a live table on a terminal; piped, one line per start and end
            view = (_StatusView if self.console.is_terminal else _LineView)(self.console, execs)
        end_status = None
        try:
            if view:
                view.start()
            if p.config.jobs > 1:  # independent components at once, each in its own worker process
                from pipeline.parallel import Scheduler

                Scheduler(self, selected, keys, execs, run_id, tracking, no_cache, view, InterruptGate).run()
            else:
                for cid in selected:
                    if not self._skipped(cid, execs, view):
                        self._execute(cid, keys[cid], execs[cid], run_id, tracking, no_cache, view)
                    if InterruptGate.requested:  # a library swallowed the KeyboardInterrupt: stop here
                        break
        except KeyboardInterrupt:
            InterruptGate.requested = True
        finally:
            InterruptGate.deferred = True  # closing the records: a Ctrl-C now waits for this block
            failed_or_skipped = {c for c, e in execs.items() if e.status in ("failed", "skipped")}
            if InterruptGate.requested:
                end_status = "KILLED"
                job = getattr(self, "_current_job", None)
                if job is not None and job.ex.status == "running":  # the interruption surfaced outside
                    self._killed(job, logging.getLogger(__name__))  # its try (e.g. while it was closing)
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
            killed = [c for c, e in execs.items() if e.status == "killed"]  # several in parallel mode
            last = next((c for c in reversed(selected) if execs[c].status not in ("pending", "skipped")), None)
            where = killed[0] if killed else last
            epoch = _last_epoch(self.store.root / where / ".work" / keys[where][0]) if len(killed) == 1 else None
            raise Interrupted(", ".join(killed) or where, epoch)
        return RunResult(run_id, execs, parent_id)

    def _inputs_for(self, cid: str, keys) -> dict[str, Path]:
        comp = self.pipeline.components[cid]
        return {name: self.store.final_dir(prod, keys[prod][0]) / out for name, (prod, out) in comp.inputs.items()}

    def _skipped(self, cid: str, execs: dict[str, Execution], view) -> bool:
        """Mark ``cid`` skipped if a component it consumes failed or was skipped (only a failure's
        downstream is skipped: independent branches go on)."""
        bad = sorted({prod for prod, _ in self.pipeline.components[cid].inputs.values()
                      if prod in execs and execs[prod].status in ("failed", "skipped")})
        if bad:
            execs[cid].status, execs[cid].error = "skipped", f"upstream failed: {', '.join(bad)}"
            if view:
                view.update()
        return bool(bad)

    def _execute(self, cid, keyinfo, ex: Execution, run_id, tracking, no_cache, view) -> None:
        """One component in this process (jobs == 1)."""
        job = self._current_job = self._start(cid, keyinfo, ex, run_id, no_cache)
        if view:
            view.update()
        if job is None:
            return
        comp = self.pipeline.components[cid]
        logger = component_logger(job.log_path, cid, self.console)
        try:
            with (tracking.child(cid, job.tags) if tracking else _null_tracker()) as tr:
                self._opened(job, tr)
                result = execute_component(comp.type, comp.params, job.inputs, job.tmp, work_dir=job.work_dir,
                                           logger=logger, tracker=tr, **self._component_kwargs(job))
                self._commit(job, result, tr)
            self._done(job)
        except BaseException as e:  # noqa: BLE001 - record the failure, then decide whether to re-raise
            from components.distribution import NotChief

            if isinstance(e, NotChief):  # a multi_worker Trainer on a non-chief machine: no artifact here
                self._failed(job, error_text(e), "", logger)
            elif isinstance(e, (KeyboardInterrupt, SystemExit)) or InterruptGate.requested:  # (or a library's
                # exception raised by the interruption)
                self._killed(job, logger)
                raise KeyboardInterrupt from (None if isinstance(e, KeyboardInterrupt) else e)
            else:
                self._failed(job, error_text(e), traceback.format_exc(), logger)
        finally:
            close_logger(logger)
            if view:
                view.update()

    # -- an execution's records, shared by the in-process path and pipeline/parallel.py ------
    BUSY = "busy"  # _start(block=False): another process is executing the same cache key

    def _start(self, cid, keyinfo, ex: Execution, run_id, no_cache, block: bool = True) -> _Job | None | str:
        """Record the execution's start. A cache hit is recorded whole and gives None; otherwise
        the execution is running, its temporary folder open, and its job is returned.

        Only one process executes a cache key at a time: a second identical run waits for the
        first (or, ``block=False``, gets ``BUSY`` and asks again later), then finds its result in
        the cache, or executes it itself if the first failed or was killed."""
        p = self.pipeline
        comp = p.components[cid]
        key = keyinfo[0]
        lock = self.store.key_lock(cid, key)
        if not lock.try_acquire():
            if not block:
                return self.BUSY
            self._wait_for(lock, cid)
        try:
            job = self._start_locked(cid, comp, key, keyinfo, ex, run_id, no_cache, lock)
        except BaseException:
            lock.release()
            raise
        if job is None:  # a cache hit: nothing executes
            lock.release()
        return job

    def _start_locked(self, cid, comp, key, keyinfo, ex: Execution, run_id, no_cache, lock) -> _Job | None:
        p = self.pipeline
        ex.key = key
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
            return None
        ex.status = "running"
        tags = {"component": cid, "component_type": comp.type, "cache_key": key, "pipeline_run": run_id,
                "cache_hit": "false"}
        return _Job(cid, comp.type, ex, row, keyinfo, run_id, self._inputs_for(cid, self._all_keys),
                    comp.params.model_dump(mode="json"), tags, self.store.begin(cid, key, get_spec(comp.type).outputs),
                    self.store.work_dir(cid, key), self.store.log_path(run_id, cid), t0, lock)

    def _wait_for(self, lock: KeyLock, cid: str) -> None:
        """Wait (polling, so Ctrl-C stays prompt) until the other process executing ``cid``
        with the same cache key is done."""
        if self.console is not None:
            who = lock.holder()
            self.console.print(f"{cid}: another run is executing it with the same inputs"
                               f"{f' (process {who})' if who else ''}; waiting for its result")
        while not lock.try_acquire():
            if InterruptGate.requested:
                raise KeyboardInterrupt
            time.sleep(0.5)

    def _component_kwargs(self, job: _Job) -> dict:
        """execute_component's arguments besides params, folders, logger and tracker; plain JSON,
        so a parallel worker process gets the same."""
        key, input_fps, _, _, resolved = job.keyinfo
        return {"beam": self.pipeline.config.beam_settings(), "tracking_uri": self.pipeline.tracking_uri,
                "pipeline_run_id": job.run_id, "cache_key": key, "component_id": job.cid,
                "show_progress": self.show_progress, "resolved": resolved, "input_fingerprints": input_fps}

    def _opened(self, job: _Job, tr) -> None:
        """The execution's MLflow child run is open (or tracking is off, ``tr`` None)."""
        job.ex.mlflow_run_id = getattr(tr, "run_id", None)
        if tr is not None:
            self.store.record_update(job.row, mlflow_run_id=job.ex.mlflow_run_id)  # a later run can end it
            tr.log_params(job.params_json)

    def _commit(self, job: _Job, result: dict | None, tr) -> None:
        """The component returned: its metrics logged, its metadata written, its folder renamed into place."""
        ex, (key, input_fps, code, modules, resolved) = job.ex, job.keyinfo
        ex.metrics = {k: v for k, v in (result or {}).items() if isinstance(v, (int, float))}
        if tr is not None and ex.metrics:
            tr.log_metrics(ex.metrics)
        ex.duration = time.time() - job.t0
        outputs = get_spec(job.type).outputs
        meta = {"component": job.cid, "type": job.type, "cache_key": key,
                "inputs": {n: str(v) for n, v in job.inputs.items()}, "input_fingerprints": input_fps,
                "params": job.params_json, "code_fingerprint": code, "code_modules": modules, "resolved": resolved,
                "pipeline_run": job.run_id, "mlflow_run_id": ex.mlflow_run_id, "started": job.t0,
                "duration_s": ex.duration, "metrics": ex.metrics,
                "output_fingerprints": {o: fp.output_fingerprint(key, o) for o in outputs}}
        ex.dir = self.store.commit(job.tmp, job.cid, key, meta)
        if tr is not None:
            tr.log_artifact(job.log_path, "logs")

    def _done(self, job: _Job) -> None:
        job.ex.status = "done"
        self.store.record_update(job.row, status="done", duration=job.ex.duration, mlflow_run_id=job.ex.mlflow_run_id,
                                 artifact_dir=str(job.ex.dir))
        self._release(job)

    @staticmethod
    def _release(job: _Job) -> None:
        if job.lock is not None:
            job.lock.release()

    def _killed(self, job: _Job, logger) -> None:
        ex = job.ex
        self.store.abort(job.tmp)
        ex.duration = time.time() - job.t0
        ex.status, ex.error = "killed", "interrupted"
        log_to_file_only(logger, "%s interrupted after %.1fs", job.cid, ex.duration)
        self.store.record_update(job.row, status="killed", duration=ex.duration, error=ex.error,
                                 mlflow_run_id=ex.mlflow_run_id)
        self._release(job)

    def _failed(self, job: _Job, error: str, tb: str | None, logger) -> None:
        ex = job.ex
        self.store.abort(job.tmp)
        ex.duration = time.time() - job.t0
        ex.status, ex.error = "failed", error
        # one clear line on the console; the traceback goes to the log file (and, with
        # --verbose, to the console too)
        logger.error("%s failed: %s", job.cid, ex.error)
        if tb:
            log_to_file_only(logger, "%s", tb)
            if self.verbose and self.console is not None:
                self.console.print(tb, markup=False, highlight=False)
        ex.error += f"  (log: {job.log_path})"
        self.store.record_update(job.row, status="failed", duration=ex.duration, error=ex.error,
                                 mlflow_run_id=ex.mlflow_run_id)
        self._release(job)

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


class _LineView:
    """Without a terminal (piped, CI, a log file): one line when a component starts and one when
    it ends, instead of a table redrawn in place."""

    def __init__(self, console, execs: dict[str, Execution]):
        self.console = console
        self.execs = execs
        self.shown: dict[str, str] = {}

    def start(self):
        pass

    def update(self):
        for cid, e in self.execs.items():
            if e.status == self.shown.get(cid, "pending"):
                continue
            self.shown[cid] = e.status
            sym, style = _STYLE.get(e.status, ("?", ""))
            if e.status == "running":
                line = f"{cid} ({e.type}) started"
            elif e.status in ("done", "failed", "killed"):
                line = f"{cid} {e.status} in {e.duration:.1f}s"
            elif e.status == "skipped":
                line = f"{cid} skipped: {e.error}"
            else:
                line = f"{cid} {e.status}"
            self.console.print(f"[{style}]{sym}[/] {line}", highlight=False)

    def stop(self):
        self.update()

