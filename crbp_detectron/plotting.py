"""Small matplotlib helper shared by the tools' plots (headless: the Agg backend)."""
from contextlib import contextmanager


@contextmanager
def saved_figure(path: str, title: str, xlabel: str, ylabel: str, figsize=(5, 3.5)):
    """Yields an Axes; on exit adds grid and legend, and writes the figure to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize)
    try:
        yield ax
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
