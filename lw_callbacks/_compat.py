"""Both Lightning namespaces in one place: every type check of a Lightning object goes through here.

``pip install lightning`` installs two packages with distinct classes: ``lightning.pytorch`` /
``lightning.fabric`` and the standalone ``pytorch_lightning`` / ``lightning_fabric`` (a
``pytorch_lightning`` ``WandbLogger`` is not an instance of ``lightning.pytorch.loggers.WandbLogger``).
A Trainer of either package calls this package's callbacks, and the objects on it (loggers,
``ModelCheckpoint``, ``EarlyStopping``, strategies, the LightningModule) may come from either one, so
each check here accepts a class of both. A package that was never imported cannot have made an
object, so the standalone one is only consulted once it is in ``sys.modules``: checking never imports
it.

Lightning itself refuses some mixes before any callback hook runs (a LightningModule of one package
in a Trainer of the other; a ``ModelCheckpoint`` of one package beside the default one of the other);
:func:`mix_hint` words the fix for the mixes this package sees.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

__all__ = [
    "FABRIC_ROOTS",
    "TRAINER_ROOTS",
    "classes",
    "foreign_checkpoints",
    "has_class_named",
    "is_checkpoint",
    "is_dummy_logger",
    "is_early_stopping",
    "is_fabric_wandb_logger",
    "is_lightning_module",
    "is_model_checkpoint",
    "is_wandb_logger",
    "mix_hint",
    "model_checkpoints",
    "namespace_of",
]

#: The two packages of Lightning's Trainer API: the one this package builds on, then the standalone one.
TRAINER_ROOTS = ("lightning.pytorch", "pytorch_lightning")
#: The two packages of Lightning Fabric.
FABRIC_ROOTS = ("lightning.fabric", "lightning_fabric")

_cache: dict[tuple[str, str, tuple[str, ...]], tuple[type, ...]] = {}


def _loaded(roots: tuple[str, ...]) -> tuple[str, ...]:
    # The first root is this package's own dependency, imported anyway; the others only when loaded.
    return tuple(root for i, root in enumerate(roots) if i == 0 or root in sys.modules)


def classes(module: str, name: str, roots: tuple[str, ...] = TRAINER_ROOTS) -> tuple[type, ...]:
    """The class ``<root>.<module>.<name>`` of every namespace in ``roots`` that is loaded.

    ``classes("loggers", "WandbLogger")`` is ``(lightning.pytorch.loggers.WandbLogger,)``, and also holds
    ``pytorch_lightning.loggers.WandbLogger`` once ``pytorch_lightning`` was imported.
    """
    loaded = _loaded(roots)
    key = (module, name, loaded)
    found = _cache.get(key)
    if found is None:
        out: list[type] = []
        for root in loaded:
            try:
                cls = getattr(importlib.import_module(f"{root}.{module}"), name)
            except (ImportError, AttributeError):
                continue
            if isinstance(cls, type):
                out.append(cls)
        found = _cache[key] = tuple(out)
    return found


def is_wandb_logger(obj: Any) -> bool:
    """A Lightning ``WandbLogger`` of either namespace."""
    return isinstance(obj, classes("loggers", "WandbLogger"))


def is_fabric_wandb_logger(obj: Any) -> bool:
    """A W&B logger a Fabric loop can use: wandb's own Fabric ``WandbLogger``
    (``wandb.integration.lightning.fabric``) or Lightning's ``WandbLogger`` of either namespace."""
    if is_wandb_logger(obj):
        return True
    # wandb's Fabric logger; its module is loaded whenever such a logger exists (importing it warns)
    fabric_module = sys.modules.get("wandb.integration.lightning.fabric")
    fabric_logger = getattr(fabric_module, "WandbLogger", None)
    return isinstance(fabric_logger, type) and isinstance(obj, fabric_logger)


def is_dummy_logger(obj: Any) -> bool:
    """The ``DummyLogger`` that ``fast_dev_run`` puts in place of the Trainer's loggers."""
    return isinstance(obj, classes("loggers.logger", "DummyLogger"))


def is_model_checkpoint(obj: Any) -> bool:
    """A ``ModelCheckpoint`` (or a subclass) of either namespace."""
    return isinstance(obj, classes("callbacks", "ModelCheckpoint"))


def is_checkpoint(obj: Any) -> bool:
    """A ``Checkpoint`` callback of either namespace (Lightning runs these last)."""
    return isinstance(obj, classes("callbacks", "Checkpoint"))


def is_early_stopping(obj: Any) -> bool:
    """An ``EarlyStopping`` of either namespace."""
    return isinstance(obj, classes("callbacks", "EarlyStopping"))


def is_lightning_module(obj: Any) -> bool:
    """A ``LightningModule`` of either namespace."""
    return isinstance(obj, classes("core.module", "LightningModule"))


def has_class_named(obj: Any, *names: str) -> bool:
    """Whether ``obj``'s class, or a base, has one of ``names`` and comes from a Lightning package.

    For classes that live in different modules across releases (strategies, precision plugins):
    ``has_class_named(trainer.strategy, "FSDPStrategy", "DeepSpeedStrategy")``.
    """
    roots = (*TRAINER_ROOTS, *FABRIC_ROOTS)
    return any(
        cls.__name__ in names and cls.__module__.split(".")[0] in {r.split(".")[0] for r in roots}
        for cls in type(obj).__mro__
    )


def namespace_of(obj: Any) -> str | None:
    """``"lightning.pytorch"``, ``"pytorch_lightning"``, ``"lightning.fabric"`` or ``"lightning_fabric"``:
    the Lightning package ``obj``'s class (or its nearest Lightning base) comes from; ``None`` for none."""
    for cls in type(obj).__mro__:
        module = cls.__module__ or ""
        for root in (*TRAINER_ROOTS, *FABRIC_ROOTS):
            if module == root or module.startswith(root + "."):
                return root
    return None


def mix_hint(trainer: Any, obj: Any) -> str:
    """A sentence naming the two packages when ``obj`` comes from the other Lightning package than
    ``trainer``, with the fix; ``""`` when they agree (or either is not a Lightning object)."""
    mine, theirs = namespace_of(trainer), namespace_of(obj)
    if mine is None or theirs is None or mine == theirs:
        return ""
    return (
        f" The Trainer comes from `{mine}` and {type(obj).__name__} from `{theirs}`: Lightning only counts "
        f"objects of the Trainer's own package. Import both from one package, e.g. "
        f"`from {mine}.callbacks import {type(obj).__name__}`."
    )


def model_checkpoints(trainer: Any) -> list[Any]:
    """The ``ModelCheckpoint`` callbacks of ``trainer`` (either namespace), in the Trainer's order.

    Lightning counts only a ``ModelCheckpoint`` of the Trainer's own package among
    ``trainer.checkpoint_callbacks``; one of the other package still saves its files (Lightning accepts
    it with ``enable_checkpointing=False``), so it is listed here too.
    """
    return [cb for cb in getattr(trainer, "callbacks", ()) if is_model_checkpoint(cb)]


def foreign_checkpoints(trainer: Any) -> list[Any]:
    """The ``ModelCheckpoint`` callbacks of ``trainer`` that come from the other Lightning package: the
    Trainer runs them, but ``trainer.checkpoint_callback`` and ``ckpt_path="best"`` do not see them."""
    counted = {id(cb) for cb in getattr(trainer, "checkpoint_callbacks", ())}
    return [cb for cb in model_checkpoints(trainer) if id(cb) not in counted]
