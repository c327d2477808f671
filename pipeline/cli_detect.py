"""`python -m pipeline detect`: draw a detector's boxes, class names and scores on image files.

Kept out of pipeline/cli.py (which registers it with ``main.add_command(detect)``); imports only
click at module level so `python -m pipeline --help` stays free of TensorFlow."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from pipeline.cli_common import fail, quiet_libraries, tracking_uri_option


@click.command("detect")
@click.option("--model", "model_uri", required=True,
              help="models:/NAME@ALIAS, models:/NAME/VERSION, a detection Trainer's model folder or model.keras, "
                   "or the course's YOLOv2 weights (.h5, with --classes and --anchors).")
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for the drawn images (<name>.png) and detections.json.")
@click.option("--score-threshold", type=click.FloatRange(0, 1),
              help="Keep boxes whose class score p_c * c_i is at least this. Default: the threshold registered "
                   "with a pipeline detector (best F1 on its eval split), else 0.3 (the course's).")
@click.option("--iou-threshold", default=0.5, show_default=True, type=click.FloatRange(0, 1), help="NMS IoU.")
@click.option("--max-boxes", default=10, show_default=True, type=click.IntRange(1), help="Boxes per image at most.")
@click.option("--classes", "classes_file", type=click.Path(), help="The course's coco_classes.txt (course model).")
@click.option("--anchors", "anchors_file", type=click.Path(), help="The course's yolo_anchors.txt (course model).")
@click.option("--input-size", default=608, show_default=True, type=click.IntRange(32),
              help="Course model input side (multiple of 32; 608 -> 19x19 grid).")
@click.option("--resize", type=click.Choice(["plain", "letterbox"]), default="plain", show_default=True,
              help="plain: stretch to the model input (the course's preprocess_image, and ExampleGen's); "
                   "letterbox: keep the aspect ratio and pad with grey. Boxes are mapped back to the image either way.")
@tracking_uri_option
def detect(model_uri, images, out_dir, score_threshold, iou_threshold, max_boxes, classes_file, anchors_file,
           input_size, resize, tracking_uri):
    """Detect objects in IMAGE files: print the boxes, draw them with class names and scores into
    --out, and write --out/detections.json (the course's `predict`).

    \b
    Examples:
      python -m pipeline detect --model models:/yolo-shapes@champion scene.png --out detections/
      python -m pipeline detect --model pipeline_root/shapes_train/<key>/model a.jpg b.jpg --out det/
      python -m pipeline detect --model model_data/yolo.h5 --classes model_data/coco_classes.txt \\
          --anchors model_data/yolo_anchors.txt images/test.jpg --out out/
    """
    missing = [p for p in images if not Path(p).is_file()]
    if missing:
        fail(f"image not found: {', '.join(missing)}", 2)
    if input_size % 32:
        fail(f"--input-size {input_size}: must be a multiple of 32", 2)
    quiet_libraries()
    from components.base import ComponentError
    from components.detect import detect_images

    try:
        rows = detect_images(model_uri, list(images), out_dir, score_threshold=score_threshold,
                             iou_threshold=iou_threshold, max_boxes=max_boxes, classes_file=classes_file,
                             anchors_file=anchors_file, input_size=input_size, resize=resize,
                             tracking_uri=tracking_uri, echo=click.echo)
    except ComponentError as e:
        fail(str(e), 1)
    click.echo(f"wrote {Path(out_dir) / 'detections.json'}")
    if any("error" in r for r in rows):
        sys.exit(1)
