"""The DAG runner's parallel mode (`run --jobs N`, N > 1): a scheduler, and the worker processes
that execute the components.

The scheduler starts every selected component whose upstream components are all done or
cached, as soon as a slot is free: at most ``jobs`` at once, at most ``max_parallel_trainers``
Trainers among them (each Trainer uses every core). A cache hit is recorded at once and takes
no slot. A failure skips its downstream only; independent branches go on.

Each executed component runs in a worker interpreter of a small warm pool (`worker_main`,
started with ``python -c``; never a fork: TensorFlow and Keras keep global state, and Beam's
DoFns hold the GIL, so threads would not run in parallel either). A worker imports TensorFlow,
Beam and MLflow once, then executes one component after another, as the in-process runner does
(`--jobs 1`): a fresh interpreter per component cost seconds of imports and warm-up each.

* the parent records the execution, opens its temporary folder and its MLflow child run (the
  Runner's record methods, the same as in process) and hands an idle worker a JSON job (a line
  on its stdin);
* the worker calls `execute_component` into that folder exactly as the in-process runner does,
  logging to the component's log file (its stdout and stderr go there too while the job runs)
  and to that MLflow run, detaches from the run without ending it, and writes its result
  (metrics, or the error and its traceback) next to the log;
* the parent commits the folder, records the outcome, ends the MLflow run, and the worker is
  idle again. A worker that dies is replaced by a new one for the next job. The pool is killed
  when the run ends.

Kill-safety. The parent owns the execution records (its pid), so after a SIGKILL of `run` the
next `run`/`list` marks them killed and ends their MLflow runs as always; each worker asks the
kernel to SIGKILL it when the parent dies (``PR_SET_PDEATHSIG``), so no training outlives the
run. Each worker leads its own process group, out of the terminal's reach: Ctrl-C goes to the
parent alone, which SIGKILLs the groups, marks the running executions killed and their MLflow
runs KILLED (a rerun resumes from the last epoch checkpoint, as after any kill).

Workers draw no progress bars (several cannot share a terminal): the live table shows every
component, and each one's start and end is one line above it.

Module-level imports are the standard library's only: a worker must reach `_die_with_parent`
before it spends time importing the project.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
_WORKER = "from pipeline.parallel import worker_main; worker_main()"
_POLL_S = 0.1  # how often the scheduler looks at its workers (and at Ctrl-C)


@dataclass
class _Worker:
    job: Any  # pipeline.runner._Job
    proc: subprocess.Popen
    tracker: Any  # the MLflow child run's tracker; None without tracking
    logger: Any
    result_path: Path


class Scheduler:
    """Runs ``selected`` (in topological order) for a `Runner`, ``jobs`` components at a time."""

    def __init__(self, runner, selected: list[str], keys: dict, execs: dict, run_id: str, tracking, no_cache: bool,
                 view, gate):
        self.runner, self.selected, self.keys, self.execs = runner, selected, keys, execs
        self.run_id, self.tracking, self.no_cache, self.view, self.gate = run_id, tracking, no_cache, view, gate
        cfg = runner.pipeline.config
        self.jobs, self.max_trainers = cfg.jobs, cfg.max_parallel_trainers
        self.running: dict[str, _Worker] = {}
        self.idle: list[subprocess.Popen] = []  # warm workers waiting for a job
        self.waiting: set[str] = set()  # ready, but another process holds their cache key

    def run(self) -> None:
        # While this loop runs, the CLI's Ctrl-C handler only notes the request (`deferred`): the
        # loop then stops the workers and records them, instead of being interrupted mid-record.
        self.gate.deferred = True
        pending = list(self.selected)
        try:
            while pending or self.running:
                if self.gate.requested:
                    raise KeyboardInterrupt
                for w in [w for w in self.running.values() if w.result_path.exists() or w.proc.poll() is not None]:
                    self._finish(w)
                pending = self._start_ready(pending)
                if pending and not self.running and not self.waiting:  # every slot free, nothing ready
                    raise RuntimeError(f"the scheduler cannot start any of {', '.join(pending)}")
                if self.running or self.waiting:
                    time.sleep(_POLL_S)
        except BaseException:
            self._stop_all()
            raise
        finally:
            self._close_pool()

    # -- scheduling ------------------------------------------------------------------------
    def _start_ready(self, pending: list[str]) -> list[str]:
        """Start (or record as cached, or skip) what can go now; returns what still waits. One
        pass in topological order suffices: a component's upstream comes before it."""
        left = []
        for cid in pending:
            if self.runner._skipped(cid, self.execs, self.view):
                continue
            ups = {prod for prod, _ in self.runner.pipeline.components[cid].inputs.values() if prod in self.execs}
            if any(self.execs[u].status not in ("done", "cached") for u in ups):
                left.append(cid)
                continue
            hit = not self.no_cache and self.runner.store.lookup(cid, self.keys[cid][0]) is not None
            if not hit and not self._slot_free(self.execs[cid].type):
                left.append(cid)
                continue
            job = self.runner._start(cid, self.keys[cid], self.execs[cid], self.run_id, self.no_cache, block=False)
            if job == self.runner.BUSY:  # another run is executing the same key: ask again next pass
                if cid not in self.waiting and self.runner.console is not None:
                    self.runner.console.print(f"{cid}: another run is executing it with the same inputs; "
                                              "waiting for its result")
                self.waiting.add(cid)
                left.append(cid)
                continue
            self.waiting.discard(cid)
            if job is not None:
                self._launch(job)
            if self.view:
                self.view.update()
        return left

    def _slot_free(self, type_name: str) -> bool:
        if len(self.running) >= self.jobs:
            return False
        trainers = sum(w.job.type == "Trainer" for w in self.running.values())
        return type_name != "Trainer" or trainers < self.max_trainers

    # -- one worker ------------------------------------------------------------------------
    def _launch(self, job) -> None:
        from pipeline.execute import component_logger, error_text

        r = self.runner
        logger = component_logger(job.log_path, job.cid, r.console)  # the parent's lines: start, end
        tr = None
        try:
            tr = self.tracking.open_child(job.cid, job.tags) if self.tracking else None
            r._opened(job, tr)
            result_path = job.log_path.with_name(f".{job.cid}.result.json")
            result_path.unlink(missing_ok=True)
            spec = {"type": job.type, "params": job.params_json, "inputs": {n: str(p) for n, p in job.inputs.items()},
                    "tmp": str(job.tmp), "work_dir": str(job.work_dir), "log_path": str(job.log_path),
                    "result_path": str(result_path), "mlflow_run_id": getattr(tr, "run_id", None),
                    "verbose": r.verbose, "kwargs": {**r._component_kwargs(job), "show_progress": False}}
            proc = self._worker_process()
        except Exception as e:  # noqa: BLE001 - recorded as the execution's failure, as in process
            if tr is not None:
                self.tracking.close_child(tr.run_id, "FAILED")
            r._failed(job, error_text(e), traceback.format_exc(), logger)
            _close(logger)
            return
        self.running[job.cid] = _Worker(job, proc, tr, logger, result_path)
        logger.info("started (worker process %d)", proc.pid)
        try:
            proc.stdin.write(json.dumps(spec).encode() + b"\n")
            proc.stdin.flush()
        except OSError:  # the worker died: _finish says how
            pass

    def _worker_process(self) -> subprocess.Popen:
        """An idle warm worker, or a new one (its imports then run while it starts its job)."""
        while self.idle:
            proc = self.idle.pop()
            if proc.poll() is None:
                return proc
        path = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
        # between jobs a worker's own output (its start-up, a crash outside a job) goes to one file
        with open(self.runner.store.log_path(self.run_id, "workers"), "ab") as log:
            return subprocess.Popen([sys.executable, "-c", _WORKER, str(os.getpid())], stdin=subprocess.PIPE,
                                    stdout=log, stderr=log, env={**os.environ, "PYTHONPATH": path},
                                    start_new_session=True)

    def _close_pool(self) -> None:
        """The run is over: the idle workers hold nothing, they are killed."""
        for proc in self.idle:
            _kill_group(proc)
            proc.wait()
        self.idle.clear()

    def _finish(self, w: _Worker) -> None:
        """A worker exited: commit and record its execution, or record its failure."""
        from pipeline.execute import error_text

        r, job = self.runner, w.job
        res = _read_result(w.result_path)
        rid = getattr(w.tracker, "run_id", None)
        try:
            if res is not None and res.get("ok"):
                try:
                    r._commit(job, res["metrics"], w.tracker)
                except Exception as e:  # noqa: BLE001 - as in process: a failed commit is a failure
                    res = {"ok": False, "error": error_text(e), "traceback": traceback.format_exc()}
                else:
                    if rid:
                        self.tracking.close_child(rid, "FINISHED")
                    r._done(job)
                    w.logger.info("done in %.1fs", job.ex.duration)
            if res is None or not res.get("ok"):
                if rid:
                    self.tracking.close_child(rid, "FAILED")
                error = res["error"] if res else _died(w.proc.returncode)
                r._failed(job, error, (res or {}).get("traceback"), w.logger)
        finally:
            _close(w.logger)
            del self.running[job.cid]
            if w.proc.poll() is None:
                self.idle.append(w.proc)
            if self.view:
                self.view.update()

    def _stop_all(self) -> None:
        """Ctrl-C (or an error in the scheduler): kill every worker's process group, then record
        each execution killed and end its MLflow run KILLED."""
        for w in self.running.values():
            _kill_group(w.proc)
        for w in list(self.running.values()):
            w.proc.wait()
            if w.tracker is not None:
                self.tracking.close_child(w.tracker.run_id, "KILLED")
            self.runner._killed(w.job, w.logger)
            _close(w.logger)
            w.result_path.unlink(missing_ok=True)
        self.running.clear()
        if self.view:
            self.view.update()


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _close(logger) -> None:
    from pipeline.execute import close_logger

    close_logger(logger)


def _read_result(path: Path) -> dict | None:
    try:
        res = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    path.unlink(missing_ok=True)
    return res


def _died(returncode: int) -> str:
    how = (f"was killed by {signal.Signals(-returncode).name}" if returncode < 0
           else f"exited with status {returncode}")
    return f"its worker process {how} before reporting a result"


# -- the worker process --------------------------------------------------------------------
def worker_main() -> None:
    """``python -c "...worker_main()" PARENT_PID``; jobs as JSON lines on stdin (see the module
    docstring), one after another until stdin closes or the parent kills it. Each job's result is
    written whole or not at all; the parent reads a crash from the missing result and the exit
    status."""
    _die_with_parent(int(sys.argv[1]))
    import pipeline.cli_common as common

    common.quiet_libraries()  # the C++ runtime's start-up lines stay out of the logs
    import apache_beam  # noqa: F401 - the warm-up: what nearly every component imports
    import mlflow  # noqa: F401
    import tensorflow  # noqa: F401

    from pipeline.execute import component_logger  # noqa: F401
    idle_out = os.open(os.devnull, os.O_WRONLY)
    while True:
        line = sys.stdin.readline()
        if not line:
            break
        spec = json.loads(line)
        _redirect_output(os.open(spec["log_path"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
        out = _run_job(spec)
        result_path = Path(spec["result_path"])
        tmp = result_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(out))
        _redirect_output(os.dup(idle_out))
        tmp.replace(result_path)  # whole or absent: a worker killed while writing leaves no result
    # No interpreter teardown: it takes seconds after TensorFlow, and MLflow's atexit hook would
    # end runs that the parent ends with the status it saw.
    os._exit(0)


def _redirect_output(fd: int) -> None:
    """This process's stdout and stderr (the C++ runtime's lines too) to ``fd``."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _run_job(spec: dict) -> dict:
    import pipeline.cli_common as common
    from components.registry import get_spec
    from pipeline.execute import close_logger, component_logger, error_text, execute_component

    common.VERBOSE = spec["verbose"]
    kwargs = spec["kwargs"]
    logger = component_logger(Path(spec["log_path"]), kwargs["component_id"])
    attached = False
    try:
        tracker = None
        if spec["mlflow_run_id"]:
            from pipeline.tracking import attach_run

            tracker, attached = attach_run(kwargs["tracking_uri"], spec["mlflow_run_id"]), True
        params = get_spec(spec["type"]).params.model_validate(spec["params"])
        result = execute_component(spec["type"], params, {n: Path(p) for n, p in spec["inputs"].items()},
                                   Path(spec["tmp"]), work_dir=Path(spec["work_dir"]), logger=logger,
                                   tracker=tracker, **kwargs)
        out = {"ok": True, "metrics": {k: v for k, v in (result or {}).items() if isinstance(v, (int, float))}}
    except BaseException as e:  # noqa: BLE001 - the parent records it
        out = {"ok": False, "error": error_text(e), "traceback": traceback.format_exc()}
    finally:
        close_logger(logger)
        if attached:
            from pipeline.tracking import detach_run

            detach_run()
    return out


def _die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when the runner that started it dies, even by SIGKILL
    (Linux ``prctl(PR_SET_PDEATHSIG)``); elsewhere a thread watches for the parent's death."""
    try:
        import ctypes

        if ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0) != 0:  # 1: PR_SET_PDEATHSIG
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    except (OSError, AttributeError):
        import threading

        def watch():
            while os.getppid() == parent:
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent:  # the runner died before the request took effect
        os._exit(1)
