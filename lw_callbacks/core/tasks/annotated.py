"""What the tasks that draw on their images share (segmentation masks, detection boxes): image inputs,
the ground truth kept once with the pixels, the predictions drawn each epoch, and class labels."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lw_callbacks.core.batches import InputError, describe
from lw_callbacks.core.offheap import off_heap
from lw_callbacks.core.pixels import display, looks_like_images
from lw_callbacks.core.tasks import Chosen, Sample, Task, as_tensor, class_labels

if TYPE_CHECKING:
    from lw_callbacks.core.samples import StageState

__all__ = ["Annotated"]


class Annotated(Task):
    """A task whose ground truth and predictions are drawn on the input image (masks, boxes)."""

    def check(self, stage: str, x: Any, y: Any, outputs: Any, raw: Any, n: int, what: str) -> str:
        if not looks_like_images(x):
            raise InputError(
                f"{self.owner}(task={self.name!r}): the {stage} inputs are a {describe(x)}, not images; "
                f"{self.name} needs image inputs (N, C, H, W) / (N, H, W) / (N, H, W, C) or a list of images."
            )
        self.check_lengths(stage, x, y, n)
        value = self.check_annotations(stage, x, y, raw, n)
        if self.core.sharded and value is None:
            raise self.core.sharded_error(stage, f"the {self.name} predictions from the {stage} step")
        return "image"

    def check_annotations(self, stage: str, x: Any, y: Any, raw: Any, n: int) -> Any:
        """Check the first batch's targets and predictions; returns the predictions (``None``: none given)."""
        raise NotImplementedError

    def read_predictions(self, c: Chosen, raw: Any) -> list[Any]:
        """The chosen rows' predictions (``raw``: what holds them), as kept."""
        raise NotImplementedError

    def read_truth(self, c: Chosen, i: int) -> Any:
        """Row ``i``'s ground truth, as kept."""
        raise NotImplementedError

    def score(self, truth: Any, pred: Any) -> float:
        """The per-sample measure of a prediction against its ground truth."""
        raise NotImplementedError

    def count_ignored(self, truth: Any) -> int:
        """Ignored pixels / boxes of a ground truth."""
        raise NotImplementedError

    def labels_in(self, layer: Any) -> tuple[list[int], list[int]]:
        """The class ids present in a mask / boxes, and the ids drawn as ``"ignored"``."""
        raise NotImplementedError

    def summary(self, v: Any) -> str | None:
        """Classes in a mask, or boxes per class (ignored ones left out); ``None`` for no ground truth."""
        raise NotImplementedError

    def draw(self, s: Sample, layers: dict[str, Any], labels: dict[int, str], caption: bool) -> Any:
        """The sample's ``wandb.Image`` with ``layers`` (``ground_truth``, ``predictions``) on it."""
        raise NotImplementedError

    def has_predictions(self, outputs: Any, n: int, stage: str) -> bool:
        return self.reads_output(self.core.raw_output(outputs))

    def collect(self, st: StageState, c: Chosen) -> None:
        """Pixels and ground truth once per sample id, predictions every epoch."""
        preds = self.read_predictions(c, as_tensor(self.core.raw_output(c.out)))
        for j, sid in enumerate(c.ids):
            if sid in st.images:
                continue
            i = c.local[j]  # read in place: the row's pixels and truth are converted straight into the kept copy
            truth = None if c.y is None else self.read_truth(c, i)
            st.images[sid] = (off_heap(display(c.x[i], "image")), truth)
        counts = bool(self.core.ignored)
        for j, pos in enumerate(c.positions):
            shown, truth = st.images[c.ids[j]]
            metric: float | None = None
            skipped: int | None = None
            if truth is not None:
                metric = self.score(truth, preds[j])
                skipped = self.count_ignored(truth) if counts else None
            st.collected[pos] = Sample(
                id=c.ids[j], display=shown, truth=truth, pred=preds[j], metric=metric, ignored=skipped
            )

    def class_name(self, c: int) -> str:
        return str(self.core.label_name(int(c)))

    def annotated_image(self, s: Sample, caption: bool) -> Any:
        """The sample's image with its ground truth (and, with ``caption``, the panel's prediction) on it."""
        layers: dict[str, Any] = {}
        if s.truth is not None:
            layers["ground_truth"] = s.truth
        if caption:
            layers["predictions"] = s.pred
        present: list[int] = []
        ignored: list[int] = []
        for layer in layers.values():
            ids, skipped = self.labels_in(layer)
            present += ids
            ignored += skipped
        return self.draw(s, layers, class_labels(present, self.core.options.class_names, ignored), caption)

    def input_cell(self, st: StageState, s: Sample) -> Any:
        return self.annotated_image(s, caption=False)

    def truth_cell(self, st: StageState, s: Sample) -> Any:
        return self.summary(s.truth)

    def images(self, st: StageState, samples: list[Sample]) -> list[Any] | None:
        return [self.annotated_image(s, caption=True) for s in samples]  # masks / boxes change each epoch
