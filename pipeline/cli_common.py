"""Helpers shared by the CLI modules (pipeline/cli.py and its command groups cli_faces.py,
cli_detect.py, cli_stylize.py), which import them from here and never from each other: cli.py
registers the groups, the groups do not import cli.py.

Imports only click at module level (rich, yaml and components.base inside the functions):
`python -m pipeline --help` must stay fast and free of TensorFlow, MLflow and Beam."""
from __future__ import annotations

import os
import sys

import click

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

VERBOSE = False  # set by -v/--verbose: show every library's start-up lines and warnings


def console():
    """A rich console on stdout (live views and tables)."""
    from rich.console import Console

    if sys.stdout.isatty():
        return Console(stderr=False)
    # piped or logged: no 80-column wrapping (rich's default without a terminal), one line a line
    return Console(stderr=False, width=int(os.environ.get("COLUMNS", 0)) or 200)


def fail(msg: str, code: int = 1):
    """Print MSG in red on stderr and exit with CODE (1: the command failed, 2: a usage or input error)."""
    click.secho(msg, fg="red", err=True)
    sys.exit(code)


def print_rows(task, rows) -> int:
    """What `predict` and `request` print: each image's lines from its task (its error in red);
    returns the exit status (1 when an image failed)."""
    for r in rows:
        if r.get("error"):
            click.secho(f"{r['image']}: {r['error']}", fg="red")
            continue
        lines = task.format_row(r)
        click.echo(f"{r['image']}: {lines[0]}")
        for line in lines[1:]:
            click.echo(f"  {line}")
    return 1 if any(r.get("error") for r in rows) else 0


def quiet_libraries():
    """Silence the heavy libraries before they are imported: their Python logging and warnings,
    Beam's "apitools not found" line, and the lines TensorFlow's C++ runtime writes straight to
    the process's stderr at start-up (oneDNN, CUDA drivers, cuInit on machines without a GPU),
    which no environment variable turns off in TF 2.21. With -v/--verbose nothing is hidden."""
    import logging
    import warnings

    if VERBOSE:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow sets its own level when imported
    for name in ("apache_beam", "absl", "tensorflow", "mlflow", "alembic", "h5py", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    root.addFilter(lambda record: "apitools not found" not in record.getMessage())
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="keras")
    warnings.filterwarnings("ignore", category=FutureWarning)
    _silence_native_stderr()


def _silence_native_stderr() -> None:
    """Send file descriptor 2 (what C++ libraries write to) to /dev/null, and keep Python's
    sys.stderr (click's errors, warnings, tracebacks) on a copy of the original. Only for the
    real command line: under a test runner sys.stderr is not the process's own."""
    if getattr(_silence_native_stderr, "done", False) or sys.stderr is not sys.__stderr__:
        return
    try:
        sys.stderr.flush()
        keep = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    except OSError:
        return
    sys.stderr = sys.__stderr__ = os.fdopen(keep, "w", buffering=1, encoding=sys.stderr.encoding or "utf-8",
                                            errors="backslashreplace")
    _silence_native_stderr.done = True


def parse_kv(items, what: str) -> dict:
    """`key=value` strings -> a nested dict: dotted keys nest (a.b=1 -> {"a": {"b": 1}}), values are
    read as YAML (3 -> int, true -> bool, [1, 2] -> list; an empty value stays ""). A malformed
    item exits with a message naming WHAT (the option, e.g. "--param")."""
    import yaml

    out: dict = {}
    for item in items:
        if "=" not in item:
            fail(f"{what} {item!r}: expected key=value")
        k, v = item.split("=", 1)
        node = out
        parts = k.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(v) if v != "" else ""
    return out


class _DefaultTrackingUri:
    """components.base.DEFAULT_TRACKING_URI, read when a command runs or shows its own help:
    importing components.base (pydantic) at module level would slow `python -m pipeline --help`.
    Click calls it for the value and prints str() of it for `[default: ...]`."""

    def __call__(self) -> str:
        from components.base import DEFAULT_TRACKING_URI

        return DEFAULT_TRACKING_URI

    def __str__(self) -> str:
        return self()


def tracking_uri_option(fn=None, *, help: str = "MLflow tracking URI."):
    """The `--tracking-uri` option, defaulting to components.base.DEFAULT_TRACKING_URI.

    Use as `@tracking_uri_option` or `@tracking_uri_option(help="...")`."""
    option = click.option("--tracking-uri", "tracking_uri", type=str, default=_DefaultTrackingUri(),
                          show_default=True, help=help)
    return option if fn is None else option(fn)
