"""What a new user's first `make run` gives: the default pipeline run fresh (empty artifact
store and MLflow database, in a temporary folder), the lines it prints (piped, and with
`--tty` also on a pseudo-terminal through util-linux `script`), its wall time, and each demo
model's held-out result against the targets the README quotes:

  SIGNS CNN test accuracy >= 0.90; face verification accuracy on unseen generated identities
  >= 0.90; shapes detector mAP@.5 >= 0.80; every Evaluator blessed.

With the course's face images (`--course-faces DIR` holding kian.jpg and camera_2.jpg) it also
enrolls kian with the registered face model and verifies camera_2.jpg (another person) as kian:
the course's impostor check. The demo model is trained on cartoon faces, so that check on real
photos is reported, not targeted.

The count on a pseudo-terminal (`--tty`) replays the output through a minimal terminal; under
`script` (a pseudo-terminal without a window size) rich's live display leaves a title line
behind on each redraw even in a ten-line program, so that count is an upper bound, not what a
user's terminal shows. The count without a terminal is exact.

    python -m benchmarks first_run [--tty] [--course-faces DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import DATASETS, PROJECT_ROOT, write_result

TARGETS = {"signs_eval": ("accuracy", 0.90), "faces_eval": ("accuracy", 0.90), "shapes_eval": ("map_50", 0.80)}
MAX_LINES = 80


def _run(cmd: list[str], cwd: Path, tty: bool) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    if tty:  # a pseudo-terminal: the live table and progress bars draw as they do for a user
        import shlex

        proc = subprocess.run(["script", "-qec", shlex.join(cmd), "/dev/null"], cwd=cwd, capture_output=True,
                              text=True, errors="replace", env={**os.environ, "COLUMNS": "120", "LINES": "40"})
    else:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, errors="replace")
    return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - t0


def _lines(out: str) -> int:
    """Lines left on a user's screen and scrollback: the output replayed through a minimal
    terminal (newline, carriage return, cursor up/down, erase line: what rich's live table and
    progress bars use to redraw in place), so a redrawn table counts once; blank lines count."""
    import re

    screen, row, col = [""], 0, 0
    for token in re.findall(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][0-9A-Za-z]|\r\n|\n|\r|[^\x1b\r\n]+", out):
        if token in ("\n", "\r\n"):
            row, col = row + 1, 0
            if row == len(screen):
                screen.append("")
        elif token == "\r":
            col = 0
        elif token.startswith("\x1b["):
            n = int(re.sub(r"[^0-9]", "", token[2:-1]) or 1) if token[-1] in "AB" else 0
            if token[-1] == "A":
                row = max(0, row - n)
            elif token[-1] == "B":
                row = min(len(screen) - 1, row + n)
            elif token[-1] == "K":
                screen[row] = screen[row][:col] if token[2:-1] in ("", "0") else ""
        elif not token.startswith("\x1b"):
            line = screen[row]
            screen[row] = line[:col].ljust(col) + token + line[col + len(token):]
            col += len(token)
    while screen and not screen[-1].strip():
        screen.pop()
    return len(screen)


def _results(root: Path) -> dict:
    import sqlite3

    con = sqlite3.connect(root / "executions.db")
    rows = con.execute("select component, artifact_dir, status from executions where status = 'done'").fetchall()
    out = {}
    for component, artifact_dir, _ in rows:
        if component in TARGETS and artifact_dir:
            meta = json.loads((Path(artifact_dir) / "metadata.json").read_text())
            out[component] = {k: v for k, v in meta.get("metrics", {}).items() if isinstance(v, (int, float))}
    return out


def _impostor_check(work: Path, faces_dir: Path) -> dict:
    db = work / "faces.db"
    py, uri = sys.executable, f"sqlite:///{work / 'mlflow.db'}"
    enroll = subprocess.run([py, "-m", "pipeline", "faces", "enroll", "--db", str(db), "--tracking-uri", uri,
                             "--model", "models:/facenet-small@champion", "kian", str(faces_dir / "kian.jpg")],
                            cwd=PROJECT_ROOT, capture_output=True, text=True)
    verify = subprocess.run([py, "-m", "pipeline", "faces", "verify", "--db", str(db), "--tracking-uri", uri,
                             "--as", "kian", str(faces_dir / "camera_2.jpg")], cwd=PROJECT_ROOT, capture_output=True, text=True)
    return {"pair": "camera_2.jpg (Benoit) as kian", "enroll_exit": enroll.returncode,
            "verify_exit": verify.returncode, "rejected": verify.returncode == 3,
            "output": (verify.stdout + verify.stderr).strip().splitlines()[-1:] or [enroll.stderr.strip()[-300:]]}


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks first_run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tty", action="store_true", help="also run it on a pseudo-terminal (a second fresh run)")
    ap.add_argument("--tty-only", action="store_true", help="only the run on a pseudo-terminal")
    ap.add_argument("--course-faces", type=Path, default=DATASETS / "coursera_face_recognition_images" / "images",
                    help="folder with the course's kian.jpg and camera_2.jpg (skipped when absent)")
    ap.add_argument("--result-name", default="first_run")
    args = ap.parse_args(argv)

    load_before = os.getloadavg()
    runs = []
    for tty in ([True] if args.tty_only else [False, True] if args.tty else [False]):
        work = Path(tempfile.mkdtemp(prefix="first-run-"))
        try:
            shutil.copy(PROJECT_ROOT / "pipeline.yaml", work / "pipeline.yaml")
            code, out, wall = _run([sys.executable, "-m", "pipeline", "run", str(work / "pipeline.yaml")],
                                   PROJECT_ROOT, tty)
            results = _results(work / "pipeline_root")
            targets = {c: {"metric": m, "value": results.get(c, {}).get(m), "target": t,
                           "met": (results.get(c, {}).get(m) or 0) >= t,
                           "blessed": bool(results.get(c, {}).get("blessed"))} for c, (m, t) in TARGETS.items()}
            run = {"terminal": tty, "exit_code": code, "wall_s": round(wall, 1), "lines": _lines(out),
                   "max_lines": MAX_LINES, "lines_ok": _lines(out) <= MAX_LINES, "targets": targets,
                   "metrics": results, "output_tail": out.replace("\r", "").splitlines()[-14:]}
            if args.course_faces.is_dir():
                run["course_impostor"] = _impostor_check(work, args.course_faces)
            runs.append(run)
            print(json.dumps({k: v for k, v in run.items() if k not in ("metrics", "output_tail")}, indent=1))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    path = write_result(args.result_name, {
        "command": "python -m benchmarks first_run" + (" --tty-only" if args.tty_only else " --tty" if args.tty else ""),
        "what": "the default pipeline.yaml run fresh (no cache, empty MLflow) as `make run` runs it; the models are "
                "demos trained on generated images",
        "runs": runs, "all_targets_met": all(t["met"] and t["blessed"] for r in runs for t in r["targets"].values()),
        "loadavg_before": load_before, "loadavg_after": os.getloadavg()})
    print(f"wrote {path}")
