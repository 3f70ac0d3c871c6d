"""Prediction samples from a Fabric loop: :class:`FabricPredictionSamples`."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor, nn

from lw_callbacks._errors import ConfigurationError
from lw_callbacks._wandb import require_fabric_wandb_logger, run_of
from lw_callbacks.core.batches import take
from lw_callbacks.core.sample_options import STAGES, SampleOptions, SampleOptionsView, arguments
from lw_callbacks.core.samples import SampleCore

if TYPE_CHECKING:
    import lightning.fabric
    import lightning_fabric


class FabricPredictionSamples(SampleOptionsView):
    r"""Log prediction samples from a batch and the model's outputs in a Fabric loop.

    The hook :meth:`log_prediction_samples` logs the first ``num_samples`` examples of the batch you
    pass (global rank 0) as :class:`~lw_callbacks.LogPredictionSamples` does, whose core it shares;
    pass the same evaluation batch every time to follow the same samples.

    Args:
        num_samples: how many examples of the batch to log (its first ones).
        key: panel section name.
        class_names: names for labels ``0 .. C-1``.
        log_images: log the captioned-image panel.
        log_table: log the inputs table and a predictions table.
        log_scores: add ``score_<class>`` columns when outputs are class scores.
        input_key: key of the input in dict batches.
        target_key: key of the target in dict batches.
        output_key: key of the predictions in dict outputs.
        task, box_format, normalized_boxes, score_threshold, sample_rate, decode: as
            ``LogPredictionSamples``: segmentation masks, detection boxes, text, audio, regression
            and reconstruction samples (``task="auto"`` tells them from the first batch); a dotted
            ``decode`` path is imported at the first call.
        predict: ``predict(model, batch) -> predictions`` on a batch holding only the chosen rows,
            used in place of ``outputs`` (as ``LogPredictionSamples``); needs ``model=`` in the hook.
        ignore_index: target label(s) to ignore, as ``LogPredictionSamples``; ``None`` reads them from
            the ``model`` passed to the hook (its ``ignore_index``, ``hparams["ignore_index"]``, its direct
            submodules' ``ignore_index`` but ``-100``), ``[]`` ignores none.

    Raises:
        ConfigurationError: If an argument has a value it does not accept (as ``LogPredictionSamples``).
        ConfigurationError: If the hook gets a batch or outputs it cannot read, or an unknown ``stage``.
        ConfigurationError: If the hook gets no usable outputs (or ``predict`` is given) and no ``model``.
        ConfigurationError: If the Fabric has no W&B logger (from the hook).

    Example::

        >>> from pathlib import Path
        >>> import lightning as L
        >>> import torch
        >>> from lightning.pytorch.loggers import WandbLogger
        >>> from lw_callbacks.fabric import FabricPredictionSamples
        >>> from lw_callbacks.records import read_run
        >>> samples = FabricPredictionSamples(num_samples=3, class_names=["cat", "dog"])
        >>> logger = WandbLogger(project="pets", save_dir=Path("runs").resolve())
        >>> fabric = L.Fabric(accelerator="cpu", devices=1, loggers=[logger], callbacks=[samples])
        >>> batch = (torch.rand(8, 3, 16, 16), torch.randint(0, 2, (8,)))  # the same batch every time
        >>> for step in (10, 20):
        ...     logits = torch.randn(8, 2)  # the model's outputs on the batch
        ...     fabric.call("log_prediction_samples", fabric, batch, logits, step=step)
        >>> run = fabric.logger.experiment
        >>> folder = Path(run.dir).parent
        >>> run.finish()
        >>> records = read_run(folder)
        >>> len(records.tables("predictions/inputs")), len(records.tables("predictions/table"))  # inputs once
        (1, 2)
        >>> records.tables("predictions/table")[-1].columns
        ['id', 'sample', 'ground truth', 'prediction', 'score_cat', 'score_dog']
    """

    def __init__(
        self,
        num_samples: int = 16,
        key: str = "predictions",
        class_names: list[str] | None = None,
        log_images: bool = True,
        log_table: bool = True,
        log_scores: bool = True,
        input_key: str | None = None,
        target_key: str | None = None,
        output_key: str | None = None,
        task: str = "auto",
        box_format: str = "xyxy",
        normalized_boxes: bool = False,
        score_threshold: float = 0.3,
        sample_rate: int | None = None,
        decode: Callable[[list[int]], str] | str | None = None,
        predict: Callable[[Any, Any], Any] | str | None = None,
        ignore_index: int | list[int] | None = None,
    ) -> None:
        super().__init__(SampleOptions(**arguments(locals()), stages=STAGES, owner=type(self).__name__))
        self.core = SampleCore(self.options)
        self._fingerprints: dict[str, str] = {}

    def log_prediction_samples(
        self,
        fabric: lightning.fabric.Fabric | lightning_fabric.Fabric,
        batch: Any,
        outputs: Any = None,
        *,
        step: int,
        model: nn.Module | None = None,
        stage: str = "validation",
    ) -> None:
        """Log the first ``num_samples`` examples of ``batch`` with their predictions at ``step``.

        Args:
            fabric: the ``Fabric``.
            batch: ``(x, y, ...)``, a dict, or a bare input tensor (as ``LogPredictionSamples``).
            outputs: the model's outputs on ``batch``: labels ``(N,)``, logits / probabilities
                ``(N, C)``, or a dict holding them. ``None``: ``predict(model, batch)`` (when given),
                else ``model`` is run on the chosen samples.
            step: the x-axis value (``trainer/global_step``), e.g. your optimizer step count.
            model: the model to run when ``outputs`` holds no predictions.
            stage: ``"validation"``, ``"test"`` or ``"predict"``: which panel section.

        Raises:
            ValueError: for an unknown ``stage``, a batch or outputs it cannot read, or no usable
                ``outputs`` and no ``model``.
        """
        if stage not in STAGES:
            raise ConfigurationError(
                f"{type(self).__name__}.log_prediction_samples(stage={stage!r}): stage must be one of {list(STAGES)}."
            )
        logger = require_fabric_wandb_logger(fabric, type(self).__name__)
        core = self.core
        if model is None and self.options.predict is not None:
            raise ConfigurationError(
                f"{type(self).__name__}.log_prediction_samples: predict= is given, and it needs the model: pass "
                "model=<your model> to the hook."
            )
        core.resolve(model)  # dotted paths imported, ignored labels read from the model
        x, y, n = core.read_batch(stage, batch, outputs, model)  # every rank checks, so bad input fails alike
        if model is None and not core.has_predictions(stage, outputs, n):
            raise ConfigurationError(
                f"{type(self).__name__}.log_prediction_samples: `outputs` holds no predictions "
                f"(got {type(outputs).__name__}) and no `model` was given to compute them. Pass the model's "
                "outputs on this batch (labels (N,), logits (N, C), or a dict with 'preds' / 'logits'), or `model=`."
            )
        if fabric.global_rank != 0 or n == 0:
            return
        local = list(range(min(n, self.options.num_samples)))
        fingerprint = _fingerprint(take(x, local))
        if self._fingerprints.get(stage) != fingerprint:  # other inputs: ids 0.. now name other examples
            self._fingerprints[stage] = fingerprint
            core.forget_inputs(stage)
        core.states[stage].collected = {}
        core.collect_or_warn(stage, model, x, y, outputs, local, 0, batch)
        core.log_collected(stage, lambda: run_of(logger, 0), int(step))


def _fingerprint(chosen: Any) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    if isinstance(chosen, Tensor):
        chosen = chosen.detach().cpu().numpy()
    if isinstance(chosen, np.ndarray):
        digest.update(str((chosen.shape, chosen.dtype)).encode())
        digest.update(np.ascontiguousarray(chosen).tobytes())
    else:
        digest.update(repr(chosen).encode())
    return digest.hexdigest()
