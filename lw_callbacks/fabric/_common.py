"""Helpers shared by the Fabric classes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from typing import TypeAlias

    import lightning.fabric
    import lightning_fabric

    #: ``lightning.fabric.Fabric`` or the standalone ``lightning_fabric.Fabric``
    Fabric: TypeAlias = lightning.fabric.Fabric | lightning_fabric.Fabric


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside Fabric's wrapper (and DDP's), whose parameter names are the plain ones."""
    original = getattr(model, "_original_module", None)
    if isinstance(original, nn.Module):
        return original
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model
