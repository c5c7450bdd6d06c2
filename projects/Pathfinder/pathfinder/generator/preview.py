"""Pictures of Pathfinder samples: image above label, in a grid."""
import math
from typing import Dict, Optional, Sequence

import numpy as np

from crbp_detectron.utils.plotting import headless_pyplot
from .storage import PathfinderDataset


def save_preview(path: str, samples: Sequence[Dict], columns: int = 8, title: Optional[str] = None):
    """A PNG grid: each sample's image above its label (mask in red over the image, or the class)."""
    plt = headless_pyplot()
    n = len(samples)
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(2 * rows, cols, figsize=(1.6 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, s in enumerate(samples):
        r, c = 2 * (i // cols), i % cols
        axes[r, c].imshow(s["image"], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        over = np.stack([s["image"] / 255.0] * 3, -1) * 0.5
        if s.get("class") is not None:
            axes[r, c].set_title(f"class {s['class']}", fontsize=7)
            axes[r + 1, c].imshow(over, interpolation="nearest")
        else:
            over[s["mask"]] = [1.0, 0.15, 0.15]
            axes[r + 1, c].imshow(over, interpolation="nearest")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def preview_dataset(path: str, dataset: PathfinderDataset, count: int = 16, columns: int = 8):
    samples = []
    for i in range(min(count, len(dataset))):
        cls = int(dataset.classes[i]) if dataset.classes is not None else None
        samples.append({"image": np.asarray(dataset.images[i]), "mask": dataset.mask(i), "class": cls})
    cfg = dataset.config
    save_preview(path, samples, columns,
                 title=f"Pathfinder {cfg.variant}, {cfg.size}px, length {cfg.length}, {cfg.distractors} distractors")

