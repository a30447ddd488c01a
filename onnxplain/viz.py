"""Pictures of relevance: red = evidence for, blue = evidence against, on a colormap centred on zero (as in the papers).

Arrays in, matplotlib `Figure`s out (no pyplot state); `save_figure` writes one. Shapes:
  * images: `image_figure` -> input | heatmap | overlay;
  * volumes: `montage_figure` -> slices along one axis (overlay, and the input with reversed colours, as in
    Zintgraf et al. 2017, fig. 9);
  * (C, L) sequences: `sequence_figure` -> the channels, over a channels x positions heatmap;
  * feature vectors: `bar_figure` -> the top features by |relevance|.
`threshold` (a fraction, e.g. 0.15) shows only |R| above that fraction of the maximum, the papers' display.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import OnnxplainError

CMAP = "bwr"
PANEL_INCHES = 2.6
MAX_ASPECT = 4   # longest side of an image panel over its shortest
DPI = 100
TITLE_INCHES = 0.5
DEFAULT_THRESHOLD = 0.15


def matplotlib_parts():
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    return colormaps, Figure


def limit(relevance: np.ndarray) -> float:
    """The symmetric colour limit: max |R| (1 when the map is all zero, so zero stays white)."""
    value = float(np.max(np.abs(relevance))) if np.size(relevance) else 0.0
    return value if value > 0 and np.isfinite(value) else 1.0


def apply_threshold(relevance: np.ndarray, fraction: float | None) -> np.ndarray:
    """Zero every |R| below `fraction` of the maximum |R| (None or 0: unchanged)."""
    return _masked(relevance, fraction, limit(relevance))


def heatmap_rgb(relevance_map: np.ndarray, threshold: float | None = None, scale: float | None = None) -> np.ndarray:
    """HxW relevance -> HxWx3 colours in [0, 1]: white at 0, red for positive, blue for negative.

    `scale` is the |R| that saturates (default: this map's max |R|); the threshold is a fraction of it."""
    colormaps, _ = matplotlib_parts()
    v = scale or limit(relevance_map)
    shown = _masked(relevance_map, threshold, v)
    return colormaps[CMAP]((np.clip(shown / v, -1, 1) + 1) / 2)[..., :3]


def _masked(relevance_map: np.ndarray, threshold: float | None, scale: float) -> np.ndarray:
    relevance_map = np.asarray(relevance_map, dtype=np.float64)
    return np.where(np.abs(relevance_map) >= (threshold or 0) * scale, relevance_map, 0.0)


def _gray(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float64)
    return image if image.ndim == 2 else image[..., :3] @ np.array([0.299, 0.587, 0.114])


def overlay_rgb(image: np.ndarray, relevance_map: np.ndarray, threshold: float | None = None,
                scale: float | None = None, dim: bool = True) -> np.ndarray:
    """The input in gray (dimmed unless `dim` is False), with the heatmap laid over it; opacity grows with |R|."""
    v = scale or limit(relevance_map)
    alpha = np.clip(np.abs(_masked(relevance_map, threshold, v)) / v, 0, 1)[..., None] ** 0.5
    gray = np.clip(_gray(image), 0, 1)
    base = np.repeat((0.25 + 0.5 * gray if dim else gray)[..., None], 3, axis=-1)
    return (1 - alpha) * base + alpha * heatmap_rgb(relevance_map, threshold, v)


def image_panel_boxes(height: int, width: int, panels: int = 3):
    """([axes rectangle in figure fractions per panel], (figure width, height) in inches): a fixed layout,
    so that a reader (or a test) can find each panel in the PNG. Panels keep the map's shape up to 1:4 or 4:1
    (a 600 x 3 series would otherwise be drawn 200 times taller than wide)."""
    panel_w, panel_h = PANEL_INCHES, PANEL_INCHES * min(max(height / width, 1 / MAX_ASPECT), MAX_ASPECT)
    fig_w, fig_h = panel_w * panels + 0.2 * (panels + 1) + 0.5, panel_h + TITLE_INCHES + 0.2
    return [((0.2 + i * (panel_w + 0.2)) / fig_w, 0.1 / fig_h, panel_w / fig_w, panel_h / fig_h)
            for i in range(panels)], (fig_w, fig_h)


def read_panel(png: str | os.PathLike, height: int, width: int, panel: int) -> np.ndarray:
    """RGB pixels in [0, 1] of image panel `panel` (0 input, 1 heatmap, 2 overlay) of a PNG that `image_figure`
    wrote for an HxW map: the panel's box, frame included."""
    from PIL import Image

    with Image.open(png) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64) / 255
    left, bottom, w, h = image_panel_boxes(height, width)[0][panel]
    rows, cols = pixels.shape[:2]
    top_px, left_px = int(round((1 - bottom - h) * rows)), int(round(left * cols))
    return pixels[top_px: top_px + int(round(h * rows)), left_px: left_px + int(round(w * cols))]


def show_picture(ax, picture, title: str, **kwargs):
    ax.imshow(picture, interpolation="nearest", **kwargs)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)


def image_figure(image: np.ndarray, relevance_map: np.ndarray, *, title: str = "",
                 threshold: float | None = None):
    """input | heatmap | overlay, with a colour bar for the heatmap's symmetric scale."""
    _, Figure = matplotlib_parts()
    image, relevance_map = np.asarray(image), np.asarray(relevance_map, dtype=np.float64)
    boxes, size = image_panel_boxes(*relevance_map.shape)
    fig = Figure(figsize=size, dpi=DPI)
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.12 / size[1], va="top")
    v = limit(relevance_map)
    axes = [fig.add_axes(box) for box in boxes]
    show_picture(axes[0], image, "input", cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1, aspect="auto")
    shown = apply_threshold(relevance_map, threshold)
    show_picture(axes[1], shown, "relevance" + (f" (|R| ≥ {threshold:.0%} of max)" if threshold else ""),
                    cmap=CMAP, vmin=-v, vmax=v, aspect="auto")
    show_picture(axes[2], overlay_rgb(image, relevance_map, threshold), "overlay", aspect="auto")
    bar = fig.add_axes((boxes[2][0] + boxes[2][2] + 0.04 / size[0], boxes[2][1], 0.12 / size[0], boxes[2][3]))
    colorbar = fig.colorbar(axes[1].images[0], cax=bar)
    colorbar.formatter = _compact_formatter()
    colorbar.update_ticks()
    bar.tick_params(labelsize=7)
    bar.yaxis.get_offset_text().set_fontsize(7)
    return fig


def _compact_formatter():
    """Tick labels that fit beside the colour bar: small or large scales as a common power of ten above it."""
    from matplotlib.ticker import ScalarFormatter

    formatter = ScalarFormatter(useMathText=True)
    formatter.set_powerlimits((-2, 3))
    return formatter


def slice_indices(relevance: np.ndarray, axis: int, count: int) -> list[int]:
    """`count` slices along `axis`, evenly spread over the range where relevance is non-zero (else the volume)."""
    other = tuple(a for a in range(relevance.ndim) if a != axis)
    mass = np.abs(relevance).sum(axis=other)
    nonzero = np.flatnonzero(mass > 0)
    low, high = (nonzero[0], nonzero[-1]) if len(nonzero) else (0, relevance.shape[axis] - 1)
    return sorted(set(np.linspace(low, high, min(count, high - low + 1)).round().astype(int).tolist()))


def montage_figure(volume: np.ndarray, relevance: np.ndarray, *, axis: int = 0, slices: int = 8,
                   title: str = "", threshold: float | None = None):
    """Two rows of slices along `axis`: overlay on the volume, and on the volume in reversed colours.
    Colours and the threshold are relative to the whole volume's max |R|, so slices compare."""
    _, Figure = matplotlib_parts()
    volume, relevance = np.asarray(volume, dtype=np.float64), np.asarray(relevance, dtype=np.float64)
    low, high = np.percentile(volume, [1, 99]) if volume.size else (0.0, 1.0)
    scaled = np.clip((volume - low) / (high - low if high > low else 1.0), 0, 1)
    picks = slice_indices(relevance, axis, slices)
    v = limit(relevance)
    height, width = np.rot90(np.take(scaled, picks[0], axis=axis)).shape
    panel = 1.7
    fig = Figure(figsize=(panel * len(picks) + 0.3, 2 * panel * height / width + 0.8), dpi=DPI)
    if title:
        fig.suptitle(title, fontsize=10)
    grid = fig.subplots(2, len(picks), squeeze=False)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.85 if title else 0.92, wspace=0.05, hspace=0.12)
    for column, index in enumerate(picks):
        image = np.rot90(np.take(scaled, index, axis=axis))
        rel = np.rot90(np.take(relevance, index, axis=axis))
        for row, base in enumerate((image, 1 - image)):
            show_picture(grid[row][column], overlay_rgb(base, rel, threshold, scale=v, dim=False),
                  f"slice {index}" if row == 0 else "")
    return fig


def bar_figure(relevance: np.ndarray, *, names: list[str] | None = None, top: int = 20, title: str = "",
               threshold: float | None = None):
    """Horizontal bars of the `top` features by |relevance|, largest first; red for, blue against; with a
    `threshold`, only features whose |R| reaches that fraction of the largest."""
    _, Figure = matplotlib_parts()
    relevance = np.asarray(relevance, dtype=np.float64).reshape(-1)
    order = np.argsort(-np.abs(relevance), kind="stable")[:top]
    order = order[np.abs(relevance[order]) >= (threshold or 0) * np.abs(relevance).max(initial=0)]
    labels = [names[i] if names and i < len(names) else f"feature {i}" for i in order]
    fig = Figure(figsize=(6, 0.28 * len(order) + 1.2), dpi=DPI)
    ax = fig.add_subplot()
    values = relevance[order]
    ax.barh(range(len(order)), values, color=["#d62728" if r > 0 else "#1f5fd6" for r in values])
    ax.set_yticks(range(len(order)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("relevance" + (f" (features with |R| ≥ {threshold:.0%} of max)" if threshold else ""))
    ax.set_title(title or f"top {len(order)} features by |relevance|", fontsize=10)
    fig.tight_layout()
    return fig


def sequence_figure(sample: np.ndarray, relevance: np.ndarray, *, title: str = "", threshold: float | None = None):
    """A (C, L) sequence: its channels as lines along the positions, above its relevance as a C x L heatmap (one row
    per channel; red for, blue against, on a symmetric scale)."""
    _, Figure = matplotlib_parts()
    sample, relevance = np.asarray(sample, dtype=np.float64), np.asarray(relevance, dtype=np.float64)
    fig = Figure(figsize=(7, 1.6 + 0.25 * len(sample)), dpi=DPI)
    signal, heat = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, max(1, len(sample) / 4)]})
    for channel, values in enumerate(sample):
        signal.plot(values, linewidth=0.9, label=f"channel {channel}")
    signal.set_title(title or "input and relevance", fontsize=10)
    if len(sample) <= 8:
        signal.legend(fontsize=7, loc="upper right")
    heat.imshow(heatmap_rgb(relevance, threshold), aspect="auto", interpolation="nearest",
                extent=(-0.5, relevance.shape[1] - 0.5, len(relevance) - 0.5, -0.5))
    heat.set_yticks(range(len(relevance)))
    heat.set_ylabel("channel", fontsize=8)
    heat.set_xlabel("position", fontsize=8)
    fig.tight_layout()
    return fig


def method_grid(images: list[np.ndarray], maps: list[list[np.ndarray]], *, row_titles: list[str],
                column_titles: list[str], threshold: float | None = None):
    """Rows of samples, columns: the input then one heatmap per method (each scaled to its own max |R|)."""
    _, Figure = matplotlib_parts()
    rows, columns = len(images), 1 + len(column_titles)
    fig = Figure(figsize=(1.6 * columns, 1.6 * rows + 0.3), dpi=DPI)
    grid = fig.subplots(rows, columns, squeeze=False)
    for r, (image, row_maps) in enumerate(zip(images, maps)):
        show_picture(grid[r][0], image, "input" if r == 0 else "", cmap="gray" if np.ndim(image) == 2 else None,
              vmin=0, vmax=1)
        grid[r][0].set_ylabel(row_titles[r], fontsize=9)
        for c, relevance_map in enumerate(row_maps, start=1):
            show_picture(grid[r][c], heatmap_rgb(relevance_map, threshold), column_titles[c - 1] if r == 0 else "")
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.01, top=0.93, wspace=0.05, hspace=0.08)
    return fig


def sample_figure(model, sample: np.ndarray, relevance: np.ndarray, *, title: str = "",
                  threshold: float | None = None, volume: np.ndarray | None = None, slice_axis: int = 0):
    """The picture of one explained input (no batch axis): a slice montage for volumes (`volume`: the full input
    volume when it came from a NIfTI file), input | heatmap | overlay for images, lines over a channels x positions
    heatmap for (C, L) sequences, input | heatmap | overlay for any other 2-D sample (scaled to its own range),
    else bars of the top features."""
    from .io.nifti import is_volume_input, sample_to_volume

    if volume is not None or is_volume_input(model):
        shown = volume if volume is not None else sample_to_volume(sample, model)
        if not 0 <= slice_axis < 3:
            raise OnnxplainError(f"--slice-axis must be 0, 1 or 2, got {slice_axis}")
        return montage_figure(shown, sample_to_volume(relevance, model, shown.shape), axis=slice_axis,
                              title=title, threshold=threshold)
    sequence = getattr(model, "sequence_layout", None) if np.ndim(sample) == 2 else None
    if sequence is not None:
        flip = np.transpose if sequence == "channels_last" else np.asarray   # drawn as (C, L)
        return sequence_figure(flip(sample), flip(relevance), title=title, threshold=threshold)
    spec = model.preprocess
    if spec is not None and (spec.layout != "flat" or spec.size is not None):
        try:
            image, relevance_map = spec.tensor_to_image(sample), spec.relevance_to_map(relevance)
        except ValueError:
            raise OnnxplainError(f"the preprocessing spec ({spec.layout}, size {spec.size}) does not fit an input "
                                 f"of shape {tuple(np.shape(sample))}") from None
        return image_figure(image, relevance_map, title=title, threshold=threshold)
    image = getattr(model, "image_layout", None) if np.ndim(sample) == 3 else None
    if image is not None:   # an image of C channels with no spec: their mean drawn, relevance summed over them
        axis = 0 if image == "channels_first" else 2
        sample, relevance = np.mean(sample, axis=axis), np.sum(relevance, axis=axis)
    if np.ndim(sample) == 2:   # tokens x features, or a gray image with no spec: shown scaled to its own range
        values = np.asarray(sample, dtype=np.float64)
        span = float(np.ptp(values)) or 1.0
        return image_figure((values - values.min()) / span, relevance, title=title, threshold=threshold)
    return bar_figure(relevance, title=title, threshold=threshold)


FIGURE_FORMATS = ("png", "jpg", "jpeg", "pdf", "svg", "tif", "tiff", "webp")


def figure_format(path: str | os.PathLike) -> str:
    """The image format a figure path names by its suffix (PNG without one); an unknown suffix is an error, so
    that a file never holds another format than its name says."""
    kind = Path(path).suffix.lower().lstrip(".") or "png"
    if kind not in FIGURE_FORMATS:
        raise OnnxplainError(f"cannot write a figure as .{kind} ({path}): use .png, .jpg, .pdf, .svg, .tif or .webp")
    return kind


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Write a figure in the format its suffix names (`figure_format`)."""
    path = Path(path)
    fig.savefig(path, format=figure_format(path), dpi=DPI)
    return path
