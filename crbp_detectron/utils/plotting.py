"""Small matplotlib helpers shared by the tools' and the benchmarks' plots (headless: Agg)."""
from contextlib import contextmanager
from typing import Optional, Sequence, Tuple

import numpy as np


def headless_pyplot():
    """matplotlib.pyplot on the Agg backend: figures are written to files, no display needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextmanager
def saved_panels(path: str, title: str, labels: Sequence[Tuple[str, str]],
                 figsize: Optional[Tuple[float, float]] = None, dpi: int = 120, legend_below: bool = False):
    """Yields one Axes per (xlabel, ylabel), side by side; on exit labels them, adds grid and
    legend (`legend_below`: one legend under the panels, from the first panel's labels, where many
    curves leave no free corner inside), and writes the figure to `path`."""
    plt = headless_pyplot()
    fig, axes = plt.subplots(1, len(labels), figsize=figsize or (5.2 * len(labels), 4.2), squeeze=False)
    try:
        yield list(axes[0])
        for ax, (xlabel, ylabel) in zip(axes[0], labels):
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0] and not legend_below:
                ax.legend(fontsize=7)
        if len(labels) == 1:
            axes[0][0].set_title(title)
        else:
            fig.suptitle(title, fontsize=10)
        handles, names = axes[0][0].get_legend_handles_labels()
        if legend_below and handles:
            fig.legend(handles, names, loc="lower center", ncol=min(len(names), 3), fontsize=7)
            fig.tight_layout(rect=(0, 0.06 * ((len(names) + 2) // 3), 1, 1))
        else:
            fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)


@contextmanager
def saved_figure(path: str, title: str, xlabel: str, ylabel: str, figsize=(5, 3.5)):
    """Yields an Axes; on exit adds grid and legend, and writes the figure to `path`."""
    with saved_panels(path, title, [(xlabel, ylabel)], figsize=figsize) as (ax,):
        yield ax


GROUPING_LEGEND = ("green: predicted on the instance's own dashes; red: on another contour's dashes; "
                   "yellow: on background; light grey: own dashes missed; dark grey: other contours")


def grouping_colours(rgb, own, every, predicted):
    """The image dimmed, every contour grey (the instance's own light), and where a mask is predicted
    the colour of whose pixels it covers (GROUPING_LEGEND). `predicted`: a bool mask, or mask
    probabilities in [0, 1] that blend each pixel from its grey to its predicted colour."""
    other = every & ~own
    unpredicted = np.floor(0.25 * rgb.astype(np.float32))
    unpredicted[other] = (90, 90, 90)
    unpredicted[own] = (200, 200, 200)
    hit = unpredicted.copy()
    hit[own] = (40, 200, 60)
    hit[other] = (230, 40, 40)
    hit[~every] = (240, 200, 30)
    weight = np.asarray(predicted, dtype=np.float32)[..., None]
    return ((1 - weight) * unpredicted + weight * hit).round().astype(np.uint8)
