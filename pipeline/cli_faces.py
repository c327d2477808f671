"""`python -m pipeline faces ...`: the course's door-access system on a trained face model.

    faces enroll   --db DB --model MODEL NAME IMAGE...   store the person's embeddings
    faces verify   --db DB [--model MODEL] --as NAME IMAGE   distance + decision (exit 0 accepted, 3 rejected)
    faces identify --db DB [--model MODEL] IMAGE          nearest person, or "not in the database"
    faces list     --db DB                                who is enrolled, with which model

MODEL is `models:/NAME@ALIAS`, `models:/NAME/VERSION` (the registered version's run artifacts:
`keras/model.keras` + `keras/model_info.json`, logged by the Pusher), a Trainer model folder, or
a `model.keras` with its `model_info.json` beside it. Without `--model`, verify/identify use the
model the database was enrolled with. The threshold comes from model_info.json (or the version's
`threshold` tag); `--threshold` overrides it. The database records which model version made
each embedding and refuses to mix versions. Exit status: 0 accepted / found; 3 rejected / not in
the database; 1 a failure (unreadable image, unknown model, mixed versions); 2 a usage error.

Heavy imports (TensorFlow, MLflow) happen inside the commands: `--help` stays fast.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import click

from pipeline.cli_common import fail, quiet_libraries, tracking_uri_option


# Exit status of a "no" answer (verify rejected, identify: not in the database): not 1, which
# every command uses for a failure (unreadable image, unknown model, mixed versions).
REJECTED = 3


class FaceCommandError(Exception):
    pass


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def resolve_model(uri: str, tracking_uri: str) -> tuple[Path, dict, str]:
    """(model.keras path, model_info, version id) of a models:/ URI, a folder or a .keras file.

    The version id is `models:/NAME/VERSION` for registered models and `sha256:<16 hex>` of the
    .keras file for local ones, so the same file under another path is the same version."""
    if uri.startswith("models:/"):
        from components.model_uri import ModelNotFound, fetch_keras

        try:
            local, model_info, mv = fetch_keras(uri, tracking_uri)
        except ModelNotFound as e:
            raise FaceCommandError(str(e)) from None
        path = local / "model.keras"
        info = model_info.to_json()  # flat: common and task fields (threshold, views, face_crop)
        if info.get("threshold") is None and "threshold" in mv.tags:
            info["threshold"] = float(mv.tags["threshold"])
        info.setdefault("task", mv.tags.get("task"))
        if "image_size" not in info and "image_size" in mv.tags:
            info["image_size"] = json.loads(mv.tags["image_size"])
        return path, info, f"models:/{mv.name}/{mv.version}"
    p = Path(uri).expanduser()
    if p.is_dir():
        p = p / "model.keras"
    if not p.exists():
        raise FaceCommandError(f"{uri}: no model.keras there (give a models:/ URI, a Trainer model folder or a "
                               ".keras file)")
    info_path = p.parent / "model_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    return p.resolve(), info, f"sha256:{_file_digest(p)}"


def _check_info(info: dict, uri: str):
    if info.get("task") not in (None, "embedding"):
        raise FaceCommandError(f"{uri} is a {info['task']} model, not a face-embedding model")


class _Face:
    """A loaded embedding model with its threshold and version."""

    def __init__(self, uri: str, tracking_uri: str):
        path, self.info, self.version = resolve_model(uri, tracking_uri)
        _check_info(self.info, uri)
        self.uri = uri
        from models.preprocessing import load_model

        self.model = load_model(path)
        shape = self.model.input_shape
        self.size = (int(shape[1]), int(shape[2]))
        self.uint8 = "uint8" in str(getattr(self.model.inputs[0], "dtype", ""))

    def embed_files(self, images) -> "list":
        import numpy as np

        from data.records import BadRecord
        from models.facenet.recognition import load_face_image

        arrs = []
        for img in images:
            try:
                arrs.append(load_face_image(img, self.size, self.info.get("face_crop")))
            except BadRecord as e:
                raise FaceCommandError(f"cannot read {img}: {e.reason}") from None
            except ValueError as e:  # face_crop with on_miss: bad, and no face in the photo
                raise FaceCommandError(str(e)) from None
        x = np.stack(arrs)
        x = np.clip(np.round(x), 0, 255).astype(np.uint8) if self.uint8 else x / 255.0
        from components.tasks.embedding import embed, embedding_views

        flip, scales = embedding_views(self.info)  # the views the model's threshold was chosen with
        return embed(self.model, x, flip=flip, scales=scales)


def _threshold(face: _Face, override: float | None) -> float:
    if override is not None:
        return float(override)
    t = face.info.get("threshold")
    if t is None:
        raise FaceCommandError(f"{face.uri} has no decision threshold (model_info.json / version tag 'threshold'): "
                               "give --threshold")
    return float(t)


def _open_db(db: str, must_exist: bool):
    from data.face_db import FaceDB

    if must_exist and not Path(db).exists():
        raise FaceCommandError(f"database {db} does not exist: enrol someone first (faces enroll)")
    return FaceDB(db)


def _model_for(db, model: str | None, tracking_uri: str) -> _Face:
    uri = model or db.get_meta("model_uri")
    if uri is None:
        raise FaceCommandError(f"{db.path} is empty and no --model was given")
    face = _Face(uri, tracking_uri)
    stored = db.model_version
    if stored is not None and stored != face.version:
        raise FaceCommandError(
            f"{db.path} holds embeddings of model version {stored!r} but {uri} is {face.version!r}; distances "
            "between model versions are meaningless. Use the enrolment model, or re-enrol everyone into a new "
            "database with this one.")
    return face


def _run(fn):
    """Common error handling: our errors -> message + exit 2 (never a traceback)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        quiet_libraries()
        try:
            return fn(*args, **kwargs)
        except (FaceCommandError, ValueError, KeyError) as e:
            fail(str(e), 1)  # a data or model failure (the CLI's convention); 3 is kept for "no"
    return wrapper


_db_opt = click.option("--db", required=True, type=click.Path(dir_okay=False), help="sqlite face database file.")
_tracking_opt = tracking_uri_option(help="MLflow tracking URI for models:/ URIs.")
_threshold_opt = click.option("--threshold", type=float, help="Decision threshold (default: the model's).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def faces():
    """Face verification and identification with a trained embedding model (the course's
    door-access system): enroll people, then verify a claimed identity or identify a face.

    \b
    python -m pipeline faces enroll --db faces.db --model models:/facenet-small@champion ana a1.jpg a2.jpg
    python -m pipeline faces verify --db faces.db --as ana door.jpg      # exit 0: accepted, 1: rejected
    python -m pipeline faces identify --db faces.db door.jpg
    """


@faces.command()
@_db_opt
@click.option("--model", "model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION, a folder or .keras.")
@_tracking_opt
@click.argument("name")
@click.argument("images", nargs=-1, required=True)
@_run
def enroll(db, model, tracking_uri, name, images):
    """Enrol NAME with one or more IMAGES (all are read before anything is stored)."""
    with _open_db(db, must_exist=False) as fdb:
        face = _model_for(fdb, model, tracking_uri)
        emb = face.embed_files(images)
        n = fdb.enroll(name, emb, model_version=face.version)
        if fdb.get_meta("model_uri") is None:
            fdb.set_meta("model_uri", model if model.startswith("models:/") else str(Path(model).resolve()))
        click.echo(f"enrolled {name}: {n} image(s) with model {face.version} "
                   f"({len(fdb.identities())} people in {db})")


@faces.command()
@_db_opt
@click.option("--model", "model", help="Default: the model the database was enrolled with.")
@click.option("--as", "name", required=True, help="The claimed identity.")
@_threshold_opt
@_tracking_opt
@click.argument("image")
@_run
def verify(db, model, name, threshold, tracking_uri, image):
    """Is the person in IMAGE really NAME? Prints the distance and the decision; exit status 0
    when accepted, 1 when rejected."""
    import numpy as np

    with _open_db(db, must_exist=True) as fdb:
        face = _model_for(fdb, model, tracking_uri)
        enrolled = fdb.embeddings_for(name)
        if len(enrolled) == 0:
            raise FaceCommandError(f"nobody called \"{name}\" is enrolled in {db} (not enrolled; enrolled: "
                                   f"{', '.join(fdb.identities()) or 'nobody yet'})")
        t = _threshold(face, threshold)
        emb = face.embed_files([image])[0]
        dist = float(np.min(np.linalg.norm(enrolled - emb, axis=1)))
    ok = dist < t
    click.echo(f"{name}: distance {dist:.4f} {'<' if ok else '>='} threshold {t:.4f} -> "
               + ("accepted: it's " + name + ", welcome in!" if ok else "rejected: it's not " + name + ", please go away"))
    sys.exit(0 if ok else REJECTED)


@faces.command()
@_db_opt
@click.option("--model", "model", help="Default: the model the database was enrolled with.")
@_threshold_opt
@_tracking_opt
@click.argument("image")
@_run
def identify(db, model, threshold, tracking_uri, image):
    """Who is in IMAGE? The nearest enrolled person and the distance, or "not in the database"
    when even the nearest is at or above the threshold (exit status 3)."""
    with _open_db(db, must_exist=True) as fdb:
        face = _model_for(fdb, model, tracking_uri)
        if len(fdb) == 0:
            raise FaceCommandError(f"{db} has nobody enrolled")
        t = _threshold(face, threshold)
        emb = face.embed_files([image])[0]
        who, dist = fdb.nearest(emb, model_version=face.version)
    if dist < t:
        click.echo(f"{who} (distance {dist:.4f} < threshold {t:.4f})")
        sys.exit(0)
    click.echo(f"not in the database (nearest: {who}, distance {dist:.4f} >= threshold {t:.4f})")
    sys.exit(REJECTED)


@faces.command("list")
@_db_opt
@_run
def list_(db):
    """Enrolled people, their number of images and the model version."""
    with _open_db(db, must_exist=True) as fdb:
        click.echo(f"model: {fdb.get_meta('model_uri')} (version {fdb.model_version})")
        for n in fdb.identities():
            click.echo(f"  {n}: {len(fdb.embeddings_for(n))} image(s)")
