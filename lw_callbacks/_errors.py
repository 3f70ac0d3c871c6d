"""The package's one error for bad arguments, its warning category, and the checks of its arguments.

* :class:`ConfigurationError`: every bad argument, at construction (or when a function is called),
  naming the class or function called, the argument, what it got and what it accepts.
* :class:`LWCallbacksWarning`: the category of every warning the package emits; :func:`warn` is the one
  way a warning leaves the package, and :class:`WarnOnce` says each cause once.
* ``check_*``: the small checks every constructor shares (booleans, durations, paths, sequences of
  names, integers, choices), so one argument kind is refused the same way everywhere.
* :class:`Option`: a read-only option; setting it after construction raises ``AttributeError`` naming
  the constructor argument to use instead.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Collection, Hashable, Sequence
from typing import Any, Generic, TypeVar, overload

from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning_utilities.core.rank_zero import rank_zero_only

__all__ = [
    "ConfigurationError",
    "LWCallbacksWarning",
    "Option",
    "WarnOnce",
    "check_bool",
    "check_choice",
    "check_int",
    "check_names",
    "check_path",
    "check_seconds",
    "check_str",
    "warn",
]


class ConfigurationError(MisconfigurationException, ValueError):
    """A callback got an argument or an input it cannot use; the message names it and the fix.

    Raised at construction for bad arguments, at ``setup`` for a Trainer the callback cannot work
    with, and at the first batch a callback sees for data it cannot read. It is a Lightning
    ``MisconfigurationException`` (what Lightning's own callbacks raise) and a ``ValueError``, so
    either ``except`` clause catches it.
    """


class LWCallbacksWarning(UserWarning):
    """The category of every warning ``lw_callbacks`` emits.

    Filter them as one: ``warnings.filterwarnings("ignore", category=LWCallbacksWarning)``, or turn
    them into errors in a test run with ``-W error::lw_callbacks.LWCallbacksWarning``.
    """


# ---------------------------------------------------------------------- warnings
def warn(message: str, *, all_ranks: bool = False, stacklevel: int = 3) -> None:
    """Emit ``message`` as an :class:`LWCallbacksWarning`, on global rank 0 only unless ``all_ranks``.

    Every warning of the package goes through here (a warning that can recur goes through a
    :class:`WarnOnce`, which calls this once per cause).
    """
    if all_ranks or getattr(rank_zero_only, "rank", 0) == 0:
        warnings.warn(message, LWCallbacksWarning, stacklevel=stacklevel)


class WarnOnce:
    """Says each cause once: the first :meth:`warn` of a cause warns, later ones are silent.

    A cause is the message itself unless ``cause`` names it (so a message that carries a changing
    detail, a step or a path, is still said once). Each callback or core holds its own, so a new
    callback (a new fit) warns again; :data:`PACKAGE` is the one for module-level functions.
    """

    def __init__(self) -> None:
        self._seen: set[Hashable] = set()

    def warn(self, message: str, cause: Hashable | None = None, *, all_ranks: bool = False) -> bool:
        """Warn ``message`` unless its cause was already warned about; ``True`` when it warned."""
        key = message if cause is None else cause
        if key in self._seen:
            return False
        self._seen.add(key)
        warn(message, all_ranks=all_ranks, stacklevel=4)
        return True

    def clear(self) -> None:
        """Forget every cause: each warns again."""
        self._seen.clear()


#: The causes already warned about by module-level functions (the doorway, restore).
PACKAGE = WarnOnce()


# ---------------------------------------------------------------------- argument checks
def _bad(owner: str, argument: str, value: Any, accepts: str) -> ConfigurationError:
    return ConfigurationError(
        f"{owner}({argument}={value!r}): {argument} must be {accepts}; got {type(value).__name__}."
    )


def check_bool(owner: str, argument: str, value: Any) -> bool:
    """``value`` if it is ``True`` or ``False`` (not ``0``, ``"no"`` or ``None``)."""
    if not isinstance(value, bool):
        raise _bad(owner, argument, value, f"True or False, e.g. {argument}=True")
    return value


def check_seconds(
    owner: str, argument: str, value: Any, *, allow_none: bool = False, allow_zero: bool = False,
    allow_inf: bool = False, example: str = "30",
) -> float | None:
    """``value`` as a ``float`` of seconds: a real number (not ``bool``, not a string), finite, > 0
    (or >= 0 with ``allow_zero``), or ``None`` with ``allow_none``."""
    if value is None and allow_none:
        return None
    lower = ">= 0" if allow_zero else "> 0"
    accepts = f"a number of seconds {lower}" + (" or None" if allow_none else "") + f", e.g. {argument}={example}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(owner, argument, value, accepts)
    number = float(value)
    if math.isnan(number) or (math.isinf(number) and not allow_inf) or number < 0 or (number == 0 and not allow_zero):
        raise _bad(owner, argument, value, accepts)
    return number


def check_int(
    owner: str, argument: str, value: Any, *, minimum: int = 0, allow_none: bool = False, example: str | None = None
) -> int | None:
    """``value`` if it is an ``int`` (not ``bool``) >= ``minimum``, or ``None`` with ``allow_none``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        accepts = f"an integer >= {minimum}" + (" or None" if allow_none else "")
        raise _bad(owner, argument, value, accepts + f", e.g. {argument}={example or max(minimum, 1)}")
    return value


def check_str(
    owner: str, argument: str, value: Any, *, allow_none: bool = False, example: str = "'name'"
) -> str | None:
    """``value`` if it is a non-empty ``str``, or ``None`` with ``allow_none``."""
    if value is None and allow_none:
        return None
    if not isinstance(value, str) or not value:
        raise _bad(owner, argument, value, "a non-empty string" + (" or None" if allow_none else "")
                   + f", e.g. {argument}={example}")
    return value


def check_path(owner: str, argument: str, value: Any, *, allow_none: bool = True) -> str | None:
    """``value`` as a ``str`` path if it is a non-empty ``str`` or ``os.PathLike``, or ``None``."""
    if value is None and allow_none:
        return None
    accepts = "a folder path (a non-empty str or os.PathLike)" + (" or None" if allow_none else "")
    if not isinstance(value, (str, os.PathLike)):
        raise _bad(owner, argument, value, accepts + f", e.g. {argument}='checkpoints'")
    path = os.fspath(value)
    if not isinstance(path, str) or not path:
        raise _bad(owner, argument, value, accepts + f", e.g. {argument}='checkpoints'")
    return path


def check_names(
    owner: str, argument: str, value: Any, *, allow_none: bool = False, allow_empty: bool = True,
    example: str = "['a', 'b']",
) -> tuple[str, ...] | None:
    """``value`` as a tuple of non-empty strings: a list or tuple of them, not a bare string."""
    if value is None and allow_none:
        return None
    accepts = "a list of non-empty strings" + (" or None" if allow_none else "") + f", e.g. {argument}={example}"
    if isinstance(value, (str, bytes)):
        raise ConfigurationError(
            f"{owner}({argument}={value!r}): {argument} must be {accepts} (a single string is not split: "
            f"write {argument}=[{value!r}])."
        )
    if not isinstance(value, Sequence) or (not value and not allow_empty):
        raise _bad(owner, argument, value, accepts)
    bad = [item for item in value if not isinstance(item, str) or not item]
    if bad:
        raise ConfigurationError(
            f"{owner}({argument}={value!r}): {argument} must be {accepts}; {bad[0]!r} is not a non-empty string."
        )
    return tuple(value)


T = TypeVar("T")


def check_choice(owner: str, argument: str, value: Any, choices: Collection[T]) -> T:
    """``value`` if it is one of ``choices`` (compared by equality, ``bool`` never taken for ``int``)."""
    for choice in choices:
        if type(value) is type(choice) and value == choice:
            return choice
    listed = [repr(c) for c in choices]
    accepted = listed[0] if len(listed) == 1 else ", ".join(listed[:-1]) + " or " + listed[-1]
    raise ConfigurationError(f"{owner}({argument}={value!r}): {argument} must be {accepted}.")


# ---------------------------------------------------------------------- options
class Option(Generic[T]):
    """A read-only option of a callback, set by its constructor.

    Reading gives what the constructor kept (under ``_<name>`` on the instance, or ``<name>`` of the
    core named by ``via``, which keeps the one copy the callback reads); setting raises
    ``AttributeError`` naming the constructor argument, since a changed option would not be checked
    or would disagree with what the callback already prepared::

        class MyCallback(Callback):
            log_freq = Option[int]("Log every ``log_freq`` optimizer steps.")
    """

    def __init__(self, doc: str = "", *, via: str | None = None) -> None:
        self.__doc__ = doc
        self.name = ""
        self.attr = ""
        self.via = via  # the instance attribute holding the one copy (a core), or None: ``_<name>`` here

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self.attr = name if self.via else "_" + name

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> Option[T]: ...

    @overload
    def __get__(self, obj: object, objtype: type | None = None) -> T: ...

    def __get__(self, obj: object | None, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        holder = obj
        for part in self.via.split(".") if self.via else ():
            holder = getattr(holder, part)
        return getattr(holder, self.attr)

    def __set__(self, obj: object, value: Any) -> None:
        owner = type(obj).__name__
        raise AttributeError(
            f"{owner}.{self.name} is read-only: options are set once, at construction. Build a new callback "
            f"with the value instead, e.g. {owner}(..., {self.name}={value!r})."
        )

    def __delete__(self, obj: object) -> None:
        raise AttributeError(f"{type(obj).__name__}.{self.name} is read-only and cannot be deleted.")
