"""The format version of what the callbacks save in a checkpoint (``state_dict``).

Every ``state_dict`` of the package carries ``FORMAT_KEY: FORMAT_VERSION``. :func:`load` reads a
state of any version up to this release's (a state without the key was saved before versions
existed: version 0, the same layout as version 1) and refuses a newer one with a message that names
the callback and the fix, instead of misreading it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lw_callbacks._errors import ConfigurationError

__all__ = ["FORMAT_KEY", "FORMAT_VERSION", "load", "save"]

#: The key of the format version in every saved state.
FORMAT_KEY = "format_version"
#: The format this release writes. 0: no key (the layout of 1); 1: the key added.
FORMAT_VERSION = 1


def save(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` with this release's format version."""
    return {FORMAT_KEY: FORMAT_VERSION, **state}


def load(owner: str, state: Any) -> dict[str, Any]:
    """The saved ``state`` without its version key, once its version is one this release reads.

    Raises:
        ConfigurationError: ``state`` is not a mapping, or its version is not an integer this
            release knows (a newer release saved it), naming ``owner`` and the fix.
    """
    if not isinstance(state, Mapping):
        raise ConfigurationError(
            f"{owner}.load_state_dict: the saved state is a {type(state).__name__}, not the dict that "
            f"{owner}.state_dict() returns; the checkpoint was not written by this callback."
        )
    version = state.get(FORMAT_KEY, 0)
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version <= FORMAT_VERSION:
        raise ConfigurationError(
            f"{owner}.load_state_dict: the checkpoint holds this callback's state in format version {version!r}, "
            f"but this lw_callbacks reads versions 0 to {FORMAT_VERSION}: it was saved by a newer lw_callbacks. "
            "Upgrade lw_callbacks (`pip install -U lw-callbacks`) to resume from it, or resume without this "
            "callback's state (drop its entry from the checkpoint's `callbacks`)."
        )
    return {k: v for k, v in state.items() if k != FORMAT_KEY}
