"""Composable PyTorch Lightning callbacks for Weights & Biases.

Each callback is one concern, works alone, and is safe beside the others on every rank.
"""

from lw_callbacks.run_dir import ShareRunDir

__version__ = "0.1.0"

__all__ = ["ShareRunDir", "__version__"]
