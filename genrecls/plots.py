"""Matplotlib figures written straight to PNG files (no display needed)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # headless: never needs a screen
import matplotlib.pyplot as plt  # noqa: E402

from genrecls.errors import GenreclsError  # noqa: E402

SOFTWARE = "genrecls"  # the PNG Software tag that proves genrecls wrote a plot


def _save(fig, path, dpi: int) -> None:
    fig.savefig(path, dpi=dpi, format="png", metadata={"Software": SOFTWARE})
    plt.close(fig)


def written_by_genrecls(path: str | os.PathLike) -> bool:
    """True for a PNG (not a link) that carries genrecls's Software tag."""
    from PIL import Image

    if os.path.islink(path):
        return False
    try:
        with Image.open(path) as image:
            return image.info.get("Software") == SOFTWARE
    except (OSError, SyntaxError, ValueError):
        return False


def save_png(image, path: str | os.PathLike) -> None:
    """A PIL image as PNG with genrecls's Software tag (so a later run may replace it)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Software", SOFTWARE)
    image.save(path, format="PNG", pnginfo=info)


def check_plot_path(path: str | os.PathLike) -> None:
    """A plot path a user named: a .png in an existing folder, and never a file genrecls did not write."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise GenreclsError(f"--plot {path} is a folder; name the .png file to write")
    if os.path.splitext(path)[1].lower() != ".png":
        raise GenreclsError(f"--plot {path} must end in .png (the plot is written as PNG)")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise GenreclsError(f"--plot {path}: the folder {parent} is missing; create it first")
    if os.path.lexists(path):
        if not written_by_genrecls(path):
            raise GenreclsError(f"--plot {path} already exists and genrecls did not write it; "
                                "name a new file (genrecls never overwrites files it did not create)")


def plot_genre_distribution(genre_counts: dict, path: str | os.PathLike, title: str = "Genre distribution") -> None:
    """Horizontal bar chart of posters per genre, largest on top (report 000)."""
    names = list(genre_counts)[::-1]
    values = [genre_counts[n] for n in names]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(names) + 1.2))
    bars = ax.barh(names, values, color="#4C72B0")
    ax.bar_label(bars, padding=2, fontsize=8)
    ax.set_xlabel("posters")
    ax.set_title(title)
    ax.margins(x=0.12)
    fig.tight_layout()
    _save(fig, path, 120)


def _grid(n: int, cols: int = 4, size: float = 2.6):
    rows = max(1, -(-n // cols))
    cols = min(cols, n) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes.flat


def plot_training_curves(history, path: str | os.PathLike) -> None:
    """Loss and validation loss per epoch; one faint line per member for OvA runs."""
    fig, ax = plt.subplots(figsize=(7, 4))
    if "genre" in history:
        for genre, rows in history.groupby("genre", sort=False):
            (line,) = ax.plot(rows["epoch"] + 1, rows["val_loss"], alpha=0.8, label=genre)
            ax.plot(rows["epoch"] + 1, rows["loss"], ls=":", alpha=0.5, color=line.get_color())
        ax.set_title("OvA members: validation loss (solid), training loss (dotted)")
        ax.legend(fontsize=6, ncol=2)
    else:
        ax.plot(history["epoch"] + 1, history["loss"], marker="o", label="training")
        ax.plot(history["epoch"] + 1, history["val_loss"], marker="o", label="validation")
        ax.set_title("Loss per epoch")
        ax.legend()
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    fig.tight_layout()
    _save(fig, path, 120)


def plot_f1_against_random(report: dict, path: str | os.PathLike) -> None:
    """Per-genre F1 of the model beside the random-guess F1."""
    names = list(report["genres"])
    f1 = [report["genres"][n]["f1"] for n in names]
    rand = [report["genres"][n]["random_f1"] for n in names]
    y = range(len(names))
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1.5))
    ax.barh([i + 0.2 for i in y], f1, height=0.4, label="model", color="#4C72B0")
    ax.barh([i - 0.2 for i in y], rand, height=0.4, label="random guess", color="#BBBBBB")
    ax.set_yticks(list(y), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1")
    ax.set_title("Per-genre F1 against the random-guess baseline")
    ax.legend(loc="lower right")
    fig.tight_layout()
    _save(fig, path, 120)


def plot_precision_recall(y_true, probabilities, names, path: str | os.PathLike) -> None:
    """One precision-recall curve per genre, with its average precision."""
    from sklearn.metrics import PrecisionRecallDisplay

    fig, axes = _grid(len(names))
    for j, (ax, name) in enumerate(zip(axes, names)):
        if y_true[:, j].sum() == 0:
            ax.text(0.5, 0.5, "no positives", ha="center", va="center")
            ax.set_title(name, fontsize=9)
            continue
        PrecisionRecallDisplay.from_predictions(y_true[:, j], probabilities[:, j], ax=ax, name=name,
                                                plot_chance_level=True)
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    _save(fig, path, 110)


def plot_confusion_matrices(report: dict, path: str | os.PathLike) -> None:
    """A 2x2 confusion matrix per genre (report 001), counts in the cells."""
    names = list(report["genres"])
    fig, axes = _grid(len(names), size=2.2)
    for ax, name in zip(axes, names):
        cm = report["genres"][name]["confusion"]
        ax.imshow(cm, cmap="Blues")
        for r in range(2):
            for c in range(2):
                ax.text(c, r, cm[r][c], ha="center", va="center", fontsize=9,
                        color="white" if cm[r][c] > max(map(max, cm)) / 2 else "black")
        ax.set_xticks([0, 1], ["no", "yes"], fontsize=7)
        ax.set_yticks([0, 1], ["no", "yes"], fontsize=7)
        ax.set_xlabel("predicted", fontsize=7)
        ax.set_ylabel("true", fontsize=7)
        ax.set_title(name, fontsize=9)
    fig.tight_layout()
    _save(fig, path, 110)


def plot_reliability(y_true, probabilities, names, path: str | os.PathLike, bins: int = 10) -> None:
    """Reliability diagram per genre: observed frequency against predicted probability, with ECE."""
    from genrecls.calibration import expected_calibration_error, reliability

    table = reliability(y_true, probabilities, bins)
    ece = expected_calibration_error(y_true, probabilities, bins)
    fig, axes = _grid(len(names), size=2.4)
    for j, (ax, name) in enumerate(zip(axes, names)):
        ax.plot([0, 1], [0, 1], ls=":", color="#888888")
        seen = table["count"][j] > 0
        ax.plot(table["predicted"][j][seen], table["observed"][j][seen], marker="o", ms=3, color="#4C72B0")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{name}  ECE {ece[j]:.3f}", fontsize=8)
        ax.tick_params(labelsize=6)
    fig.supxlabel("predicted probability", fontsize=8)
    fig.supylabel("observed frequency", fontsize=8)
    fig.tight_layout()
    _save(fig, path, 110)
