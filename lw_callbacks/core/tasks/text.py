"""The ``text`` task: string inputs, or integer token ids ``(N, L)`` shown through ``decode``, in a ``text``
column; predictions may be strings (or token ids with ``decode``) or class scores."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from lw_callbacks.core.batches import InputError, describe, is_strings
from lw_callbacks.core.tasks import FirstBatch
from lw_callbacks.core.tasks.classification import Classification

__all__ = ["Text", "decode_rows"]


class Text(Classification):
    """Strings or token ids in, strings, token ids or class scores out."""

    name = "text"
    guess_rank = 30
    warns_nan = False  # generated text may read "nan"

    @classmethod
    def recognises(cls, first: FirstBatch) -> bool:
        x = first.x
        return is_strings(x) or (first.decoder is not None and isinstance(x, Tensor) and not x.is_floating_point())

    def check_inputs(self, x: Any, stage: str) -> str:
        if is_strings(x):
            return "text"
        if isinstance(x, Tensor) and not x.is_floating_point() and x.ndim == 2:
            if self.core.decoder is None:
                raise InputError(
                    f"{self.owner}(task='text'): the {stage} inputs are token ids ({describe(x)}) and no "
                    "decode is given; pass decode=<tokenizer.decode> (or its dotted import path) to show them as text."
                )
            return "text"
        raise InputError(
            f"{self.owner}(task='text'): the {stage} inputs are a {describe(x)}; expected a list of strings, "
            "or token ids (N, L) with decode=."
        )

    def check_values(self, stage: str, value: Tensor | None, y: Any, n: int) -> None:
        if decode_rows(value, self.core.decoder) is None:
            super().check_values(stage, value, y, n)  # class scores, not token ids to decode

    def predictions(self, rows: Any) -> tuple[list[Any], list[list[float]] | None]:
        texts = decode_rows(rows, self.core.decoder)
        return (texts, None) if texts is not None else super().predictions(rows)

    def truths(self, rows: Any) -> list[Any]:
        texts = decode_rows(rows, self.core.decoder)
        return texts if texts is not None else super().truths(rows)

    def shown(self, sample: Any, kind: str, sid: int) -> Any:
        if isinstance(sample, str):
            return sample
        return (decode_rows(sample[None], self.core.decoder) or [str(sample)])[0]


def decode_rows(rows: Any, decoder: Callable[[list[int]], str] | None) -> list[str] | None:
    """Strings for a few rows: given as strings, or integer token ids decoded with ``decode``."""
    if is_strings(rows):
        return list(rows)
    if decoder is not None and isinstance(rows, Tensor) and not rows.is_floating_point() and rows.ndim == 2:
        return [str(decoder(r)) for r in rows.detach().cpu().tolist()]
    return None
