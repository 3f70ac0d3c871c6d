"""Helpers shared by the Fabric classes."""

from __future__ import annotations

from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside Fabric's wrapper (and DDP's), whose parameter names are the plain ones."""
    original = getattr(model, "_original_module", None)
    if isinstance(original, nn.Module):
        return original
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model
