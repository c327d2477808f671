"""The pipeline DAG as a picture: components laid out left to right by topological depth, artifact
edges from producer to consumer labelled with the output name, each component coloured by its
status in the artifact store (done, cached, failed, killed, skipped, not run).

    python -m pipeline graph [pipeline.yaml] [--out dag.png|dag.svg] [--run RUN_ID]

Each pipeline run also logs the picture of its own statuses to its MLflow parent run
(`graph/pipeline_graph.png`, see `log_to_parent`).

The layout is a small Sugiyama-style one, no graphviz needed: each independent branch (a weakly
connected part of the DAG) gets its own horizontal band, so branches never overlap; within a
band the columns are the depths, an edge that skips columns runs through placeholder points that
keep it off the boxes in between (all edges of one output share them: a bus), the order within a
column follows the neighbours' (barycentre sweeps) and the heights are the closest to the
neighbours' that keep the boxes apart.

Only the standard library at module level (the store when reading, matplotlib when drawing, no
pyplot): `python -m pipeline graph` never imports TensorFlow."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NOT_RUN = "not run"
# status -> (fill, border); the legend lists them in this order
COLORS: dict[str, tuple[str, str]] = {
    "done": ("#b7e4c7", "#2d6a4f"),
    "cached": ("#bde0fe", "#1d4e89"),
    "failed": ("#ffb3b3", "#b00020"),
    "killed": ("#e0c3fc", "#6a1b9a"),
    "skipped": ("#ffe8a3", "#b7791f"),
    "running": ("#fff59d", "#9e7c00"),
    NOT_RUN: ("#eeeeee", "#9e9e9e"),
}
# always in the legend; `running` only when a component shows it
LEGEND = ("done", "cached", "failed", "killed", "skipped", NOT_RUN)


def normalise(status: str | None) -> str:
    """A status as the picture shows it: the runner's `pending` (never reached) is `not run`."""
    if not status or status == "pending":
        return NOT_RUN
    return status


# ----------------------------------------------------------------------------- statuses
def store_statuses(root: Path, pipeline_name: str | None = None, run_id: str | None = None) -> dict[str, str]:
    """Component id -> its last status in the execution index under ``root``: the executions of
    pipeline run ``run_id``, otherwise each component's most recent execution of the pipeline
    named ``pipeline_name`` (pipelines may share a root). A missing index is no executions (and
    is not created). A row still `running` whose process is gone reads `killed`, as `list` and the
    next run would mark it; the index itself is not changed."""
    from pipeline.store import ArtifactStore, owner_alive

    if not (Path(root) / "executions.db").exists():
        return {}
    store = ArtifactStore(Path(root))
    if run_id:
        rows = store.executions(pipeline_run=run_id)  # oldest first: the last row wins
    else:
        rows = [r for r in reversed(store.executions(limit=2 ** 62))
                if pipeline_name is None or r.get("pipeline") in (pipeline_name, None)]
    out: dict[str, str] = {}
    for r in rows:
        status = r["status"]
        if status == "running" and not owner_alive(r.get("owner_pid"), r.get("started") or 0.0):
            status = "killed"
        out[r["component"]] = status
    return out


def text_lines(pipeline, statuses: dict[str, str]) -> list[str]:
    """One line per component in topological order: `id [status] <- producer.output, ...`."""
    lines = []
    for cid in pipeline.order:
        ins = pipeline.components[cid].inputs
        line = f"{cid} [{normalise(statuses.get(cid))}]"
        if ins:
            line += " <- " + ", ".join(f"{prod}.{out}" for prod, out in ins.values())
        lines.append(line)
    return lines


# ----------------------------------------------------------------------------- layout
@dataclass
class Edge:
    producer: str
    output: str
    consumer: str
    input: str
    via: list[tuple] = field(default_factory=list)  # the placeholder points it runs through


@dataclass
class Layout:
    """Columns are depths (x = depth); y grows downwards in row units, bands stacked."""

    depth: dict[str, int]
    y: dict[Any, float]  # component id or placeholder -> centre height
    branches: list[list[str]]
    bands: list[tuple[float, float]]  # (top, bottom) of each branch, node boxes included
    edges: list[Edge]
    columns: int

    def x(self, cid) -> int:
        return self.depth[cid] if isinstance(cid, str) else cid[3]


NODE_H = 1.0  # a box's height, in row units
DUMMY_H = 0.0
GAP = 0.45  # between two boxes
DUMMY_GAP = 0.35  # between a placeholder (an edge passing) and anything else
BAND_GAP = 0.9


def depths(pipeline) -> dict[str, int]:
    d: dict[str, int] = {}
    for cid in pipeline.order:
        ins = pipeline.components[cid].inputs
        d[cid] = 1 + max((d[p] for p, _ in ins.values()), default=-1)
    return d


def branches(pipeline) -> list[list[str]]:
    """The weakly connected parts of the DAG, each in the file's order, ordered by their first
    component in the file."""
    ids = list(pipeline.components)
    parent = {c: c for c in ids}

    def find(c):
        while parent[c] != c:
            parent[c] = parent[parent[c]]
            c = parent[c]
        return c

    for cid in ids:
        for prod, _ in pipeline.components[cid].inputs.values():
            parent[find(cid)] = find(prod)
    groups: dict[str, list[str]] = {}
    for cid in ids:
        groups.setdefault(find(cid), []).append(cid)
    return list(groups.values())


def _isotonic(z: list[float]) -> list[float]:
    """The non-decreasing sequence closest to z (least squares): pool adjacent violators."""
    blocks: list[list[float]] = []  # [sum, count]
    for v in z:
        blocks.append([v, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, n = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += n
    out = []
    for s, n in blocks:
        out += [s / n] * n
    return out


def layout(pipeline, sweeps: int = 8) -> Layout:
    depth = depths(pipeline)
    file_index = {c: i for i, c in enumerate(pipeline.components)}
    parts = branches(pipeline)
    edges: list[Edge] = []
    y: dict[Any, float] = {}
    bands = []
    top = 0.0
    for part in parts:
        # the outputs used, each with its consumers, in the file's order
        groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
        for cid in part:
            for name, (prod, out) in pipeline.components[cid].inputs.items():
                groups.setdefault((prod, out), []).append((cid, name))
        preds: dict[Any, list] = {c: [] for c in part}
        succs: dict[Any, list] = {c: [] for c in part}
        rank: dict[Any, float] = {c: file_index[c] for c in part}

        def link(a, b):
            if b not in preds[a] and a not in preds[b]:
                preds[b].append(a)
                succs[a].append(b)

        for (prod, out), consumers in sorted(groups.items(), key=lambda kv: file_index[kv[0][0]]):
            dp = depth[prod]
            far = max(depth[c] for c, _ in consumers)
            chain = [("~", prod, out, k) for k in range(dp + 1, far)]
            for d in chain:
                preds[d], succs[d], rank[d] = [], [], file_index[prod] + 0.5
            for a, b in zip([prod] + chain, chain):
                link(a, b)
            for cid, name in consumers:
                via = chain[:depth[cid] - dp - 1]
                link(via[-1] if via else prod, cid)
                edges.append(Edge(prod, out, cid, name, via))
        ncols = 1 + max(depth[c] for c in part)
        layers: list[list] = [[] for _ in range(ncols)]
        for item in rank:
            layers[depth[item] if isinstance(item, str) else item[3]].append(item)
        for layer in layers:
            layer.sort(key=lambda i: rank[i])

        # order within each column: barycentre of the neighbours' positions, a few sweeps
        def reorder(k, neighbours):
            pos = {i: n for n, i in enumerate(layers[k - 1] if neighbours is preds else layers[k + 1])}
            cur = {i: n for n, i in enumerate(layers[k])}

            def bary(i):
                ns = [pos[n] for n in neighbours[i] if n in pos]
                return sum(ns) / len(ns) if ns else cur[i]

            layers[k].sort(key=lambda i: (bary(i), cur[i]))

        for _ in range(4):
            for k in range(1, ncols):
                reorder(k, preds)
            for k in range(ncols - 2, -1, -1):
                reorder(k, succs)

        # heights: start stacked, then move each column towards its neighbours' mean height,
        # keeping the boxes apart (the closest arrangement that keeps the order and the gaps)
        def size(i):
            return NODE_H if isinstance(i, str) else DUMMY_H

        def sep(a, b):
            g = GAP if isinstance(a, str) and isinstance(b, str) else DUMMY_GAP
            return (size(a) + size(b)) / 2 + g

        def place(k, desired):
            layer = layers[k]
            offs = [0.0]
            for a, b in zip(layer, layer[1:]):
                offs.append(offs[-1] + sep(a, b))
            z = _isotonic([desired[i] - o for i, o in zip(layer, offs)])
            for i, zi, o in zip(layer, z, offs):
                ys[i] = zi + o

        ys: dict[Any, float] = {}
        for k in range(ncols):
            place(k, {i: 0.0 for i in layers[k]})
            mid = (ys[layers[k][0]] + ys[layers[k][-1]]) / 2
            for i in layers[k]:
                ys[i] -= mid

        def pull(i, ns):
            """The neighbours' mean height; a bus (placeholders) follows its own chain most, so
            it runs straight instead of bending to each consumer."""
            if not ns:
                return ys[i]
            w = [4.0 if not isinstance(i, str) and (not isinstance(n, str) or n == i[1]) else 1.0 for n in ns]
            return sum(wi * ys[n] for wi, n in zip(w, ns)) / sum(w)

        def towards(k, neighbours):
            place(k, {i: pull(i, neighbours[i]) for i in layers[k]})

        for _ in range(sweeps):
            for k in range(1, ncols):
                towards(k, preds)
            for k in range(ncols - 2, -1, -1):
                towards(k, succs)
        # both directions at once for the last pass, so neither end is favoured
        for k in range(ncols):
            place(k, {i: pull(i, preds[i] + succs[i]) for i in layers[k]})

        lo = min(ys[i] - size(i) / 2 for i in ys)
        hi = max(ys[i] + size(i) / 2 for i in ys)
        for i, v in ys.items():
            y[i] = v - lo + top
        bands.append((top, top + hi - lo))
        top += hi - lo + BAND_GAP
    return Layout(depth=depth, y=y, branches=parts, bands=bands, edges=edges,
                  columns=1 + max(depth.values(), default=0))


# ----------------------------------------------------------------------------- drawing
def _text_width_in(text: str, size: float, weight: str = "normal") -> float:
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath

    return TextPath((0, 0), text, size=size, prop=FontProperties(weight=weight)).get_extents().width / 72


def draw(pipeline, statuses: dict[str, str], out: str | Path, title: str | None = None, dpi: int = 110) -> Path:
    """Draw the DAG into ``out`` (.png, .svg or .pdf, by its suffix); returns the path."""
    fig = figure(pipeline, statuses, title=title, dpi=dpi)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, facecolor="white")
    return out


def figure(pipeline, statuses: dict[str, str], title: str | None = None, dpi: int = 110):
    """The DAG as a matplotlib Figure (no pyplot: no GUI backend, no global state). Each
    component's box has the gid `node-<id>` (its id in an SVG)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch
    from matplotlib.path import Path as MPath

    lay = layout(pipeline)
    shown = {cid: normalise(statuses.get(cid)) for cid in pipeline.components}

    # geometry in inches: x right, y down (the axes' y is inverted)
    name_pt, sub_pt, label_pt = 9.5, 7.5, 7.5
    comps = pipeline.components
    box_w = 0.3 + max([1.0] + [_text_width_in(c, name_pt, "bold") for c in comps]
                      + [_text_width_in(f"{comps[c].type} · {shown[c]}", sub_pt) for c in comps])
    labels = {(e.producer, e.output) for e in lay.edges}
    label_w = max((_text_width_in(o, label_pt) for _, o in labels), default=0.5)
    stub = label_w + 0.2  # the straight start of each output, which carries its label
    gap_w = stub + 0.75  # between two columns
    pitch = box_w + gap_w
    row = 0.58  # inches per row unit
    box_h = NODE_H * row
    margin_x, margin_top, margin_bottom = 0.35, 0.9, 0.3
    # the title and the legend (one row) above the graph; a narrow graph gets a wider figure
    counts: dict[str, int] = {}
    for s in shown.values():
        counts[s] = counts.get(s, 0) + 1
    legend = [(s, f"{s} ({counts.get(s, 0)})") for s in list(LEGEND) + [s for s in counts if s not in LEGEND]]
    edge_label = "artifact: producer → consumer (output name)"
    n, m = len(pipeline.components), len(lay.edges)
    title = title or (f"{pipeline.config.name}: {n} component{'s' * (n != 1)}, "
                      f"{m} artifact edge{'s' * (m != 1)}")
    legend_pt, title_pt = 8, 12
    legend_w = sum(_text_width_in(t, legend_pt) + (1.6 + 0.8 + 1.3) * legend_pt / 72
                   for t in [label for _, label in legend] + [edge_label])
    width = margin_x * 2 + max(lay.columns * box_w + (lay.columns - 1) * gap_w, legend_w,
                               _text_width_in(title, title_pt, "bold"))
    height_rows = lay.bands[-1][1] if lay.bands else 1.0
    height = margin_top + height_rows * row + margin_bottom

    def X(item) -> float:  # a column's centre
        return margin_x + box_w / 2 + lay.x(item) * pitch

    def Y(item) -> float:
        return margin_top + lay.y[item] * row

    fig = Figure(figsize=(width, height), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.axis("off")

    # the branches' bands
    for part, (b0, b1) in zip(lay.branches, lay.bands):
        ncol = 1 + max(lay.depth[c] for c in part)
        x0 = margin_x - 0.15
        x1 = margin_x + ncol * box_w + (ncol - 1) * gap_w + 0.15
        ax.add_patch(FancyBboxPatch((x0, margin_top + b0 * row - 0.12), x1 - x0, (b1 - b0) * row + 0.24,
                                    boxstyle="round,pad=0,rounding_size=0.12", fc="#f6f7f9", ec="#e3e6ea",
                                    lw=0.8, zorder=0))

    # where each edge leaves its producer (one port per output) and enters its consumer (spread
    # along the left side, in the order of where they come from, so arrowheads never overlap)
    ports: dict[tuple[str, str], float] = {}
    for cid in pipeline.components:
        outs = sorted({e.output for e in lay.edges if e.producer == cid})
        for n, o in enumerate(outs):
            ports[(cid, o)] = Y(cid) + (n - (len(outs) - 1) / 2) * min(0.3 * box_h, box_h / (len(outs) + 1))

    def source_y(e: Edge) -> float:
        return Y(e.via[-1]) if e.via else ports[(e.producer, e.output)]

    entries: dict[tuple[str, str], float] = {}
    for cid in pipeline.components:
        ins = sorted((e for e in lay.edges if e.consumer == cid), key=lambda e: (source_y(e), e.input))
        span = min(0.6 * box_h, 0.22 * box_h * (len(ins) - 1))
        for n, e in enumerate(ins):
            entries[(cid, e.input)] = Y(cid) + (span * (n / (len(ins) - 1) - 0.5) if len(ins) > 1 else 0.0)

    def curve(verts, codes, x0, y0, x1, y1, straight):
        """From (x0, y0) to (x1, y1): `straight` inches level, then an S-curve ending level."""
        if straight:
            verts.append((x0 + straight, y0))
            codes.append(MPath.LINETO)
            x0 += straight
        dx = (x1 - x0) / 2
        verts += [(x0 + dx, y0), (x1 - dx, y1), (x1, y1)]
        codes += [MPath.CURVE4] * 3

    edge_color = "#4a4f57"
    for e in lay.edges:
        x, y0 = X(e.producer) + box_w / 2, ports[(e.producer, e.output)]
        verts, codes = [(x, y0)], [MPath.MOVETO]
        for d in e.via:  # straight through the columns it skips
            curve(verts, codes, x, y0, X(d) - box_w / 2, Y(d), stub if x == X(e.producer) + box_w / 2 else 0.0)
            x, y0 = X(d) + box_w / 2, Y(d)
            verts.append((x, y0))
            codes.append(MPath.LINETO)
        first = not e.via
        curve(verts, codes, x, y0, X(e.consumer) - box_w / 2 - 0.02, entries[(e.consumer, e.input)],
              stub if first else 0.0)
        ax.add_patch(FancyArrowPatch(path=MPath(verts, codes), arrowstyle="-|>,head_length=0.45,head_width=0.22",
                                     mutation_scale=14, lw=1.1, color=edge_color, shrinkA=0, shrinkB=0, zorder=2))
    for (prod, output), py in ports.items():  # one label per output, on its straight start
        ax.text(X(prod) + box_w / 2 + 0.08, py - 0.035, output, fontsize=label_pt, color="#1f2328", ha="left",
                va="bottom", zorder=4, bbox=dict(boxstyle="round,pad=0.12", fc="white", ec="none", alpha=0.85))

    for cid in pipeline.components:
        fill, border = COLORS.get(shown[cid], COLORS[NOT_RUN])
        ax.add_patch(FancyBboxPatch((X(cid) - box_w / 2, Y(cid) - box_h / 2), box_w, box_h,
                                    boxstyle="round,pad=0,rounding_size=0.08", fc=fill, ec=border,
                                    lw=1.4, ls="--" if shown[cid] == NOT_RUN else "-", zorder=3,
                                    gid=f"node-{cid}"))
        ax.text(X(cid), Y(cid) - 0.07, cid, fontsize=name_pt, weight="bold", ha="center", va="center",
                color="#111111", zorder=5)
        ax.text(X(cid), Y(cid) + 0.13, f"{pipeline.components[cid].type} · {shown[cid]}", fontsize=sub_pt,
                ha="center", va="center", color="#333333", zorder=5)

    handles = [Patch(fc=COLORS.get(s, COLORS[NOT_RUN])[0], ec=COLORS.get(s, COLORS[NOT_RUN])[1],
                     ls="--" if s == NOT_RUN else "-", lw=1.2, label=label) for s, label in legend]
    handles.append(Line2D([], [], color=edge_color, lw=1.1, marker=">", markevery=[1], label=edge_label))
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(margin_x / width, 1 - 0.47 / height),
               ncol=len(handles), frameon=False, fontsize=legend_pt, handlelength=1.6, handletextpad=0.8,
               columnspacing=1.3, borderaxespad=0, borderpad=0)
    fig.text(margin_x / width, 1 - 0.12 / height, title, fontsize=title_pt, weight="bold", ha="left", va="top")
    return fig


def log_to_parent(tracking, pipeline, statuses: dict[str, str], title: str | None = None) -> Path | None:
    """Draw the DAG with ``statuses`` (this run's) and log it to ``tracking``'s active MLflow
    parent run as graph/pipeline_graph.png. Nothing without a parent run."""
    parent = getattr(tracking, "parent", None)
    if parent is None:
        return None
    from pipeline.tracking import MlflowTracker

    with tempfile.TemporaryDirectory(prefix="pipeline-graph-") as d:
        png = draw(pipeline, statuses, Path(d) / "pipeline_graph.png", title=title)
        MlflowTracker(parent.info.run_id).log_artifact(png, "graph")
        return Path("graph") / png.name


def supported_suffix(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in (".png", ".svg", ".pdf")
