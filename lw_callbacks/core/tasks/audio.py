"""The ``audio`` task: waveforms ``(N, T)``, ``(N, 1, T)`` or a list of 1-D ones (dict key ``audio`` /
``waveform`` / ...; or any float input when ``sample_rate`` is given) become ``wandb.Audio`` in the
inputs table's ``audio`` column (16-bit WAV at ``sample_rate``); predictions are read as classification's."""

from __future__ import annotations

import os
import tempfile
import wave
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

from lw_callbacks._errors import ConfigurationError
from lw_callbacks.core.batches import InputError, describe
from lw_callbacks.core.tasks import FirstBatch, Sample
from lw_callbacks.core.tasks.classification import Classification

if TYPE_CHECKING:
    from lw_callbacks.core.sample_options import SampleOptions
    from lw_callbacks.core.samples import SampleCore, StageState

__all__ = ["AUDIO_KEYS", "Audio", "check_audio", "write_wav"]

AUDIO_KEYS = ("audio", "audios", "waveform", "waveforms", "wav", "speech")


class Audio(Classification):
    """Waveforms in, as ``wandb.Audio``; labels or scores out."""

    name = "audio"
    guess_rank = 20
    input_keys = AUDIO_KEYS

    def __init__(self, core: SampleCore) -> None:
        super().__init__(core)
        self._dir: tempfile.TemporaryDirectory[str] | None = None  # the WAV files, made at the first sample

    @classmethod
    def recognises(cls, first: FirstBatch) -> bool:
        waveforms = first.opts.sample_rate is not None and _is_waveforms(first.x) and not first.image
        return first.x_key in AUDIO_KEYS or waveforms

    @classmethod
    def check_options(cls, opts: SampleOptions) -> None:
        if opts.sample_rate is None:
            raise ConfigurationError(
                f"{opts.owner}(task='audio'): the sample rate is missing; pass sample_rate=<samples per second>, "
                "e.g. sample_rate=16000."
            )

    def check_inputs(self, x: Any, stage: str) -> str:
        check_audio(x, self.core.options, stage)
        return "audio"

    def shown(self, sample: Any, kind: str, sid: int) -> Any:
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="lw-audio-")
        rate = self.core.options.sample_rate
        assert rate is not None  # checked at the first batch
        return write_wav(sample, os.path.join(self._dir.name, f"sample-{sid}.wav"), rate)  # written once per id

    def input_cell(self, st: StageState, s: Sample) -> Any:
        import wandb

        return wandb.Audio(s.display)


def _is_waveforms(x: Any) -> bool:
    if isinstance(x, (Tensor, np.ndarray)):
        return x.dtype.kind == "f" if isinstance(x, np.ndarray) else bool(x.is_floating_point())
    return isinstance(x, (list, tuple)) and bool(x) and all(isinstance(a, (Tensor, np.ndarray)) for a in x)


def check_audio(x: Any, opts: SampleOptions, stage: str) -> None:
    if opts.sample_rate is None:
        raise InputError(
            f"{opts.owner}: the {stage} inputs are audio ({describe(x)}) but the sample rate is missing; "
            f"pass {opts.owner}(sample_rate=<samples per second>), e.g. sample_rate=16000."
        )
    rows = x if isinstance(x, (list, tuple)) else [x[i] for i in range(len(x))]
    for i, a in enumerate(rows):
        shape = tuple(a.shape) if isinstance(a, (Tensor, np.ndarray)) else None
        if shape is None or not (len(shape) == 1 or (len(shape) == 2 and shape[0] == 1)) or shape[-1] < 1:
            raise InputError(
                f"{opts.owner}(task='audio'): sample {i} of the first {stage} batch is a waveform of shape "
                f"{shape} (batch {describe(x)}); expected one channel, 1-D (T,) or (1, T): a batch (N, T) or "
                "(N, 1, T), or a list of such waveforms."
            )


def waveform(sample: Any) -> np.ndarray:
    arr = sample.detach().float().cpu().numpy() if isinstance(sample, Tensor) else np.asarray(sample, np.float32)
    return np.ascontiguousarray(arr.reshape(-1), dtype=np.float32)


def write_wav(sample: Any, path: str, sample_rate: int) -> str:
    """A 16-bit PCM WAV of one waveform at ``path`` (W&B reads it from the path); returns the path."""
    a = waveform(sample)
    a = np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=-1.0)
    peak = float(np.abs(a).max()) if a.size else 0.0
    if peak > 1.0:
        a = a / peak  # out-of-range floats are scaled, as a player would clip them otherwise
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes((np.clip(a, -1.0, 1.0) * 32767.0).astype("<i2").tobytes())
    return path
