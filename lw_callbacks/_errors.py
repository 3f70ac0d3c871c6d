"""The package's one error for bad arguments and unreadable input."""

from __future__ import annotations

from lightning.pytorch.utilities.exceptions import MisconfigurationException

__all__ = ["ConfigurationError"]


class ConfigurationError(MisconfigurationException, ValueError):
    """A callback got an argument or an input it cannot use; the message names it and the fix.

    Raised at construction for bad arguments, at ``setup`` for a Trainer the callback cannot work
    with, and at the first batch a callback sees for data it cannot read. It is a Lightning
    ``MisconfigurationException`` (what Lightning's own callbacks raise) and a ``ValueError``, so
    either ``except`` clause catches it.
    """
