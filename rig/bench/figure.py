"""Saving the bench's PNG figures: headless pyplot, provenance caption, one file each.

matplotlib is imported only when a figure is drawn, so the rest of the rig starts fast.
"""
from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Figure, out_png: Path, caption: str = "", *,
                caption_size: float = 7, bottom: float = 0.2) -> Path:
    """Write ``fig`` to ``out_png`` with ``caption`` (its provenance) under the axes, then close it.

    ``bottom`` is the share of the figure's height kept free for the caption.
    """
    if caption:
        fig.text(0.01, 0.01, caption, fontsize=caption_size, ha="left", va="bottom", wrap=True)
        fig.subplots_adjust(bottom=bottom)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    pyplot().close(fig)
    return out_png
