"""Eigenspace bands and their t-SNE maps (Figures 2 and 4 of the paper).

The matrix: clean and triggered test images' features at one insertion point, flattened, stacked (N x D,
not centred). Its SVD A = U diag(s) V^T gives each image coordinates in the singular directions,
A V = U diag(s), computed from the N x N matrix A A^T = U diag(s^2) U^T. A band is a range of those
directions; the paper's three are the top 10, the next 90 and the rest. Each band's coordinates are
embedded in 2-D by t-SNE (scikit-learn, PCA initialisation, a fixed seed), the clean images coloured by
class and the triggered ones drawn in pink as an extra class.

A t-SNE map is a picture, easy to over-read. Beside it we measure, in each band's own coordinates (not in
the 2-D map), how separable the triggered images are: `triggered_purity`, the mean share of a triggered
image's 10 nearest neighbours that are triggered too (1: a cluster of their own, the backdoor direction is
in this band; the base rate, the triggered share of all points: mixed in), and `clean_purity`, the same for
clean images and their own class.
"""

from dataclasses import dataclass

import numpy as np
import torch

from eigenguard.errors import EigenguardError

PAPER_BANDS = ((0, 10), (10, 100), (100, None))
NEIGHBOURS = 10


@dataclass
class Band:
    start: int
    stop: int
    coordinates: np.ndarray  # (N, stop - start)

    @property
    def label(self) -> str:
        return f"singular directions {self.start + 1}-{self.stop}"


def band_coordinates(features: torch.Tensor, bands: tuple[tuple[int, int | None], ...] = PAPER_BANDS) -> list[Band]:
    """Coordinates of each row of `features` (N x D) in each band of its singular directions."""
    a = features.double()
    values, vectors = torch.linalg.eigh(a @ a.T)  # A A^T = U diag(s^2) U^T: an N x N problem, not an N x D SVD
    values, vectors = values.flip(0).clamp_min(0), vectors.flip(1)
    rank = min(a.shape)
    coords = (vectors[:, :rank] * values[:rank].sqrt()).numpy()  # U diag(s) = A V, row by row
    out = []
    for start, stop in bands:
        stop = coords.shape[1] if stop is None else min(stop, coords.shape[1])
        if start >= stop:
            raise EigenguardError(
                f"band {start + 1}-{stop} is empty: the matrix has only {coords.shape[1]} singular directions; "
                "use more images (--samples) or smaller bands"
            )
        out.append(Band(start, stop, coords[:, start:stop]))
    return out


def neighbour_purity(coords: np.ndarray, groups: np.ndarray, triggered: np.ndarray) -> dict[str, float]:
    """Mean share of same-group neighbours among the 10 nearest, for triggered and for clean points."""
    from sklearn.neighbors import NearestNeighbors

    k = min(NEIGHBOURS, len(coords) - 1)
    index = NearestNeighbors(n_neighbors=k + 1).fit(coords)
    _, idx = index.kneighbors(coords)
    same = groups[idx[:, 1:]] == groups[:, None]  # drop each point itself
    share = same.mean(axis=1)
    return {
        "triggered_purity": round(float(share[triggered].mean()), 4) if triggered.any() else float("nan"),
        "clean_purity": round(float(share[~triggered].mean()), 4) if (~triggered).any() else float("nan"),
        "triggered_base_rate": round(float(triggered.mean()), 4),
    }


def tsne_2d(coords: np.ndarray, seed: int = 0) -> np.ndarray:
    from sklearn.manifold import TSNE

    perplexity = min(30.0, (len(coords) - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(coords)


def class_colours(count: int) -> list[tuple[float, ...]]:
    """One colour per class, none of them pink (pink is the triggered images'): tab10 with its pink swapped
    for a dark blue up to 10 classes, viridis beyond."""
    import matplotlib

    if count <= 10:
        colours = list(matplotlib.colormaps["tab10"].colors)  # type: ignore[attr-defined]
        colours[6] = matplotlib.colors.to_rgb("#1a1a6e")
        return colours[:count]
    return [matplotlib.colormaps["viridis"](i / (count - 1)) for i in range(count)]


def tsne_figure(
    maps: list[np.ndarray],
    titles: list[str],
    labels: np.ndarray,
    triggered: np.ndarray,
    class_names: list[str],
    title: str,
) -> bytes:
    """One PNG, one panel per band: clean images by class (tab10), triggered images in pink, one legend."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(maps), figsize=(4.2 * len(maps) + 1.8, 4.4), dpi=150, constrained_layout=True)
    colours = class_colours(len(class_names))
    for ax, points, panel in zip(np.atleast_1d(axes), maps, titles, strict=True):
        for c, name in enumerate(class_names):
            chosen = (labels == c) & ~triggered
            ax.scatter(*points[chosen].T, s=4, color=colours[c], label=name, alpha=0.7, linewidths=0)
        ax.scatter(*points[triggered].T, s=6, color="hotpink", label="triggered (backdoor)", linewidths=0)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("t-SNE dimension 1")
        ax.set_ylabel("t-SNE dimension 2")
        ax.set_xticks([])
        ax.set_yticks([])
    handles, names = np.atleast_1d(axes)[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside right center", markerscale=3, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
