"""WatchModel on real offline W&B runs: keys, steps and histograms read back from the run's records."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import wandb
from harness import build_with_cli, make_logger, make_trainer, run_ranks
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn

from lw_callbacks.core.histograms import histograms
from lw_callbacks.demo import DigitsClassifier, DigitsDataModule
from lw_callbacks.records import RunRecords, find_runs, iter_records, read_run
from lw_callbacks.watch import WatchModel

PARAMS = [f"layer_{i}.{kind}" for i in (1, 2, 3) for kind in ("weight", "bias")]


# --------------------------------------------------------------------------------------------- helpers


def hook_count(model: nn.Module) -> int:
    """Every hook on any module or parameter of ``model``, and wandb.watch's markers."""
    total = 0
    for module in model.modules():
        for attr in (
            "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
            "_state_dict_hooks", "_load_state_dict_pre_hooks",
        ):
            total += len(getattr(module, attr, None) or {})
        total += int(hasattr(module, "_wandb_hook_names")) + int(hasattr(module, "_wandb_watch_called"))
    for param in model.parameters():
        total += len(param._backward_hooks or {})
        total += len(getattr(param, "_post_accumulate_grad_hooks", None) or {})
    return total


def histogram_steps(records: RunRecords, prefix: str) -> dict[str, list[int]]:
    """``{key: [trainer/global_step, ...]}`` for every history key under ``prefix``."""
    return {
        key[len(prefix):]: [int(step) for step, _ in records.series(key)]
        for key in sorted(records.keys())
        if key.startswith(prefix)
    }


def summary_updates(records: RunRecords, key: str) -> int:
    """How many summary records of the run's log set ``key`` (the reader keeps only the last value)."""
    count = 0
    for record in iter_records(records.path):
        kind = record.WhichOneof("record_type")
        if kind == "summary" and any(item.key == key for item in record.summary.update):
            count += 1
    return count


class HookProbe(Callback):
    """Counts hooks on the model at each training batch start (after WatchModel's own hook ran)."""

    def __init__(self) -> None:
        self.at_batch_start: list[int] = []
        self.at_optimizer_step: list[int] = []

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self.at_batch_start.append(hook_count(pl_module))

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        self.at_optimizer_step.append(hook_count(pl_module))


class GradProbe(Callback):
    """Remembers the final gradient of one parameter at each optimizer step (runs after WatchModel)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.grads: dict[int, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        grad = dict(pl_module.named_parameters())[self.name].grad
        assert grad is not None
        self.grads[trainer.global_step] = grad.detach().clone()


@dataclass
class Fits:
    run_a: RunRecords
    run_b: RunRecords
    probe: HookProbe
    hooks_before: int
    hooks_after: list[int]
    steps: list[int]
    acc: RunRecords
    acc_steps: int
    acc_grads: dict[int, torch.Tensor]
    acc_warnings: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def fits(isolated_dir: Path) -> Fits:
    """One model fit twice into run A (log="all", log_freq=2, graph), then resumed into run B;
    and a second model under accumulate_grad_batches=4 with include / exclude filters."""
    root = isolated_dir
    model = DigitsClassifier()
    hooks_before = hook_count(model)
    watch = WatchModel(log="all", log_freq=2, log_graph=True)
    probe = HookProbe()
    logger_a = make_logger(root / "a")
    hooks_after = []
    steps = []
    for i in range(2):  # the same model, callback and run, fit twice
        trainer = make_trainer([watch, probe], logger=logger_a, default_root_dir=str(root / f"lightning{i}"))
        trainer.fit(model, datamodule=DigitsDataModule(batch_size=32))
        hooks_after.append(hook_count(model))
        steps.append(trainer.global_step)
    ckpt = trainer.checkpoint_callback.best_model_path  # type: ignore[union-attr]
    wandb.finish()
    run_a = read_run(find_runs(root / "a")[0])

    # resume from the checkpoint into a new run, with the same model object
    trainer = make_trainer([watch], logger=make_logger(root / "b"), max_epochs=3, default_root_dir=str(root / "lb"))
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=32), ckpt_path=ckpt)
    hooks_after.append(hook_count(model))
    steps.append(trainer.global_step)
    wandb.finish()
    run_b = read_run(find_runs(root / "b")[0])

    grad_probe = GradProbe("layer_3.bias")
    acc_watch = WatchModel(
        log="gradients", log_freq=2, include=["layer_*.weight", "layer_3.*", "decoder.*"], exclude=["layer_1.*"]
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = make_trainer(
            [acc_watch, grad_probe], logger=make_logger(root / "acc"), limit_train_batches=12,
            accumulate_grad_batches=4, default_root_dir=str(root / "lacc"),
        )
        trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule(batch_size=16))
    wandb.finish()
    acc = read_run(find_runs(root / "acc")[0])
    return Fits(
        run_a, run_b, probe, hooks_before, hooks_after, steps, acc, trainer.global_step, grad_probe.grads,
        [str(w.message) for w in caught if "WatchModel" in str(w.message)],
    )


# ---------------------------------------------------------------------------------------- histograms


def test_every_parameter_at_every_log_step(fits: Fits) -> None:
    assert fits.steps[:2] == [12, 12]
    once = [0, 2, 4, 6, 8, 10]
    for prefix in ("gradients/", "parameters/"):
        # two fits into one run: the same keys again from step 0, no `graph_1`-prefixed duplicates
        assert histogram_steps(fits.run_a, prefix) == {name: once + once for name in PARAMS}


def test_histograms_have_the_requested_bins_and_all_values(fits: Fits) -> None:
    model = DigitsClassifier()
    numel = {n: p.numel() for n, p in model.named_parameters()}
    for name in PARAMS:
        for _, hist in fits.run_a.series(f"parameters/{name}"):
            assert hist["_type"] == "histogram"
            assert len(hist["values"]) == 64 and len(hist["bins"]) == 65
            assert sum(hist["values"]) == numel[name]
            assert hist["bins"] == sorted(hist["bins"])
        for _, hist in fits.run_a.series(f"gradients/{name}"):
            assert sum(hist["values"]) == numel[name]


def test_resume_continues_at_the_restored_step(fits: Fits) -> None:
    assert fits.steps[2] == 18
    for prefix in ("gradients/", "parameters/"):
        assert histogram_steps(fits.run_b, prefix) == {name: [12, 14, 16] for name in PARAMS}


def test_accumulation_counts_optimizer_steps_and_reads_final_gradients(fits: Fits) -> None:
    # 12 micro-batches per epoch, 4 per optimizer step: 3 optimizer steps per epoch, 6 in all
    assert fits.acc_steps == 6
    watched = ["layer_2.weight", "layer_3.bias", "layer_3.weight"]
    assert histogram_steps(fits.acc, "gradients/") == {name: [0, 2, 4] for name in watched}
    assert histogram_steps(fits.acc, "parameters/") == {}
    # the histogram spans the gradient the optimizer used (accumulated over 4 micro-batches)
    for step, hist in fits.acc.series("gradients/layer_3.bias"):
        grad = fits.acc_grads[int(step)]
        assert math.isclose(hist["bins"][0], grad.min().item(), rel_tol=1e-5, abs_tol=1e-9)
        assert math.isclose(hist["bins"][-1], grad.max().item(), rel_tol=1e-5, abs_tol=1e-9)
        assert sum(hist["values"]) == grad.numel()


def test_unmatched_patterns_warn_once_naming_them(fits: Fits) -> None:
    unmatched = [w for w in fits.acc_warnings if "match no trainable parameter" in w]
    assert len(unmatched) == 1
    assert "include='decoder.*'" in unmatched[0]
    assert "layer_" not in unmatched[0].split("Parameter names")[0]  # matched patterns are not named


# ------------------------------------------------------------------------------------- graph and hooks


def test_graph_logged_on_each_fit(fits: Fits) -> None:
    for records, fits_into_run in ((fits.run_a, 2), (fits.run_b, 1)):
        graph = records.summary["graph_0"]
        assert graph["_type"] == "graph-file"
        assert summary_updates(records, "graph_0") == fits_into_run
        assert (records.run_dir / "files" / graph["path"]).is_file()
    nodes = json.loads((fits.run_a.run_dir / "files" / fits.run_a.summary["graph_0"]["path"]).read_text())["nodes"]
    assert [n["name"] for n in nodes] == ["layer_1", "layer_2", "layer_3"]
    assert nodes[0]["output_shape"] == [32, 64]


def test_no_hook_between_log_steps_and_none_after_fit(fits: Fits) -> None:
    assert fits.hooks_before == 0
    assert fits.hooks_after == [0, 0, 0]
    per_fit = len(fits.probe.at_batch_start) // 2
    for start in (0, per_fit):
        # graph hooks only during each fit's first batch (this proves the probe sees hooks) ...
        assert fits.probe.at_batch_start[start] == 3
        # ... and nothing on any module or parameter from the second batch on
        assert fits.probe.at_batch_start[start + 1 : start + per_fit] == [0] * (per_fit - 1)
    # the optimizer step of the first batch still sees the graph hooks; no other step sees any hook
    assert fits.probe.at_optimizer_step == ([3] + [0] * (per_fit - 1)) * 2


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"log": "weights"}, "`log` must be one of 'gradients', 'parameters', 'all'"),
        ({"log": None}, "`log` must be one of"),
        ({"log_freq": 0}, "`log_freq` must be an int >= 1"),
        ({"log_freq": 2.5}, "`log_freq` must be an int >= 1"),
        ({"bins": 0}, "`bins` must be an int from 1 to 512"),
        ({"bins": 513}, "`bins` must be an int from 1 to 512"),
        ({"include": ["ok", 3]}, "`include` must be a parameter-name pattern"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError, match="WatchModel") as err:
        WatchModel(**kwargs)
    assert needle in str(err.value)


class FrozenDigits(DigitsClassifier):
    """Every parameter frozen; the loss still has a graph so Lightning runs backward and the optimizer."""

    def __init__(self) -> None:
        super().__init__()
        self.requires_grad_(False)
        self.offset = torch.zeros((), requires_grad=True)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return super().training_step(batch, batch_idx) + self.offset

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([self.offset], lr=0.1)


def test_no_trainable_parameters_warns_and_trains() -> None:
    with pytest.warns(UserWarning, match="WatchModel: nothing to watch in FrozenDigits: it has no trainable"):
        trainer = make_trainer([WatchModel(log="all", log_freq=1, log_graph=True)], max_epochs=1)
        trainer.fit(FrozenDigits(), datamodule=DigitsDataModule(batch_size=32))
    assert trainer.global_step == 6
    wandb.finish()
    keys = read_run(find_runs("runs")[0]).keys()
    assert not any(k.startswith(("gradients/", "parameters/")) for k in keys)
    summary = read_run(find_runs("runs")[0]).summary
    assert summary["graph_0"]["_type"] == "graph-file"  # the graph does not need parameters


def test_logging_failure_warns_and_training_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected fault")

    monkeypatch.setattr("lw_callbacks.core.histograms.histograms", broken)
    with pytest.warns(UserWarning, match="computing histograms at step 0 failed .*injected fault"):
        trainer = make_trainer([WatchModel(log="all", log_freq=3)], max_epochs=1)
        trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule(batch_size=32))
    assert trainer.global_step == 6
    wandb.finish()
    keys = read_run(find_runs("runs")[0]).keys()
    assert "train_loss" in keys
    assert not any(k.startswith("gradients/") for k in keys)


def test_histogram_drops_non_finite_values_and_handles_edge_cases() -> None:
    nan, inf = float("nan"), float("inf")
    hists = histograms(
        [
            ("mixed", torch.tensor([0.0, 1.0, 2.0, nan, inf, -inf])),
            ("none_finite", torch.tensor([nan, inf])),
            ("empty", torch.zeros(0)),
            ("constant", torch.full((5,), 3.0)),
            ("half", torch.tensor([-1.0, 1.0], dtype=torch.float16)),
            ("sparse", torch.sparse_coo_tensor([[1, 3]], [2.0, 4.0], (10,))),
        ],
        bins=4,
    )
    assert sorted(hists) == ["constant", "half", "mixed", "sparse"]
    mixed = hists["mixed"]
    assert sum(mixed.histogram) == 3 and mixed.bins[0] == 0.0 and mixed.bins[-1] == 2.0
    assert hists["constant"].histogram == [5.0] and hists["constant"].bins == [3.0, 3.0]
    assert hists["half"].bins == [-1.0, -0.5, 0.0, 0.5, 1.0]
    sparse = hists["sparse"]
    assert sum(sparse.histogram) == 10 and sparse.histogram[0] == 8 and sparse.bins[0] == 0.0


def _histc_reference(tensor: torch.Tensor, bins: int) -> tuple[list[int], list[float]] | None:
    """What ``wandb.watch`` computes: ``torch.histc`` with the finite min and max, ``linspace`` edges."""
    flat = (tensor.to_dense() if tensor.is_sparse else tensor).detach().float().reshape(-1)
    flat = flat[torch.isfinite(flat)]
    if flat.numel() == 0:
        return None
    lo, hi = flat.min().item(), flat.max().item()
    if lo == hi:
        return [flat.numel()], [lo, hi]
    return torch.histc(flat, bins, lo, hi).long().tolist(), torch.linspace(lo, hi, bins + 1).tolist()


@pytest.mark.parametrize("bins", [1, 7, 64, 512])
def test_histograms_equal_histc_with_the_finite_min_and_max(bins: int) -> None:
    """Every size the histogram path treats its own way (tiny tensors grouped, large ones chunked),
    every dtype and kind of value: the counts are torch.histc's, the edges its linspace's."""
    gen = torch.Generator().manual_seed(bins)
    nan, inf = float("nan"), float("inf")

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    with_nan = randn(50_000)
    with_nan[torch.rand(50_000, generator=gen) < 0.01] = nan
    with_nan[:3] = torch.tensor([inf, -inf, nan])
    sparse = torch.sparse_coo_tensor(torch.tensor([[5, 900, 70_000]]), torch.tensor([-3.0, 0.5, 9.0]), (100_000,))
    cases = {
        "large": randn(300_000) * 1e-3 + 5.0,  # more than a chunk, far from 0
        "large_transposed": randn(400, 300).t(),  # not contiguous
        "small": randn(100) * 1e3,
        "tiny": randn(3),
        "one": torch.tensor([4.0]),
        "constant": torch.full((7,), 2.5),
        "constant_large": torch.full((70_000,), -1.0),
        "nan_inf": torch.tensor([1.0, nan, 3.0, inf, -inf, 2.0]),
        "large_nan_inf": with_nan,
        "all_nan": torch.tensor([nan, nan]),
        "all_inf_large": torch.full((40_000,), inf),
        "empty": torch.zeros(0),
        "float16": randn(1000).half(),
        "bfloat16": randn(40_000).bfloat16(),
        "float64": randn(500).double(),
        "sparse_small": torch.sparse_coo_tensor([[1, 3]], [2.0, 4.0], (10,)),
        "sparse_large": sparse,
        "sparse_empty": torch.sparse_coo_tensor(torch.zeros(1, 0, dtype=torch.long), torch.zeros(0), (6,)),
        "ties": torch.tensor([0.0, 1.0, 1.0, 2.0, 3.0, 3.0, 3.0]),  # values on the edges
        "parameter": nn.Parameter(randn(20, 20)),
    }
    named = list(cases.items())
    hists = histograms(named, bins)
    for key, tensor in named:
        expected = _histc_reference(tensor, bins)
        if expected is None:
            assert key not in hists, key
            continue
        counts, edges = expected
        assert hists[key].histogram == counts, key
        assert len(hists[key].bins) == len(edges), key
        assert hists[key].bins == pytest.approx(edges, rel=2**-23, abs=0.0), key  # 1 float32 rounding
    assert sum(hists["sparse_large"].histogram) == 100_000


@pytest.mark.parametrize("bins", [1, 7, 64, 512])
def test_a_small_models_log_step_counts_as_histc(bins: int) -> None:
    """The path a small model's log step takes (every tensor small, dense float32 on the CPU): the
    counts are torch.histc's, the edges its linspace's; anything else (a NaN, one value) takes the
    general path."""
    from lw_callbacks.core import bins as core

    gen = torch.Generator().manual_seed(bins)
    model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 2))
    loss = (model(torch.randn(4, 8, generator=gen)) * torch.randn(4, 2, generator=gen)).sum()
    loss.backward()
    named = [(f"gradients/{n}", p.grad) for n, p in model.named_parameters()]
    named += [(f"parameters/{n}", p) for n, p in model.named_parameters()]
    named += [("transposed", torch.randn(30, 20, generator=gen).t() * 1e3),
              ("ties", torch.tensor([0.0, 1.0, 1.0, 2.0, 3.0, 3.0, 3.0]))]
    assert core._small_on_cpu(named, bins) is not None  # the small path is the one taken
    hists = histograms(named, bins)
    assert list(hists) == [key for key, _ in named]
    for key, tensor in named:
        counts, edges = _histc_reference(tensor, bins)
        assert hists[key].histogram == counts, key
        assert hists[key].bins == pytest.approx(edges, rel=2**-23, abs=0.0), key
    for odd in (torch.tensor([1.0, float("nan")]), torch.full((3,), 2.0), torch.zeros(0), torch.randn(3).double()):
        assert core._small_on_cpu([*named, ("odd", odd)], bins) is None


def test_the_device_path_counts_as_histc() -> None:
    """The counts taken on a non-CPU device (CUDA: bincount per chunk, deterministic), run here on
    CPU tensors: the same as torch.histc with the tensor's min and max."""
    from lw_callbacks.core import bins as core

    gen = torch.Generator().manual_seed(1)
    flats = {0: torch.randn(300_000, generator=gen) * 1e-3 + 5.0, 1: torch.randn(100, generator=gen),
             2: torch.tensor([0.0, 1.0, 1.0, 2.0, 3.0, 3.0, 3.0])}
    ranges = {i: (f.min().item(), f.max().item()) for i, f in flats.items()}
    for bins in (1, 7, 64, 512):
        counts = core._device_counts(flats, ranges, bins)
        for i, flat in flats.items():
            assert counts[i].tolist() == torch.histc(flat, bins, *ranges[i]).long().tolist(), (i, bins)


class OwnersGradients(Callback):
    """Copies, at each optimizer step, the gradients of the parameters that optimizer owns (runs
    after WatchModel): ``steps`` holds (optimizer index, W&B step of the batch, {name: gradient})."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, int, dict[str, torch.Tensor]]] = []

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        index = next(i for i, opt in enumerate(trainer.optimizers) if opt is optimizer)
        owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
        grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters()
                 if id(p) in owned and p.grad is not None}
        self.steps.append((index, trainer.fit_loop.epoch_loop._batches_that_stepped, grads))


def test_several_optimizers_log_their_own_parameters_at_their_own_steps() -> None:
    """A GAN under manual optimization: each optimizer's steps are counted apart, and at its log
    steps exactly the gradients it stepped with are logged, never the other one's leftovers."""
    from modules import PerStepGAN

    torch.manual_seed(0)
    probe = OwnersGradients()
    trainer = make_trainer([WatchModel(log="all", log_freq=3), probe], max_epochs=1, limit_train_batches=8,
                           limit_val_batches=0)
    model = PerStepGAN()
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=32))
    wandb.finish()
    records = read_run(find_runs("runs")[0])

    owners = {n: 0 if n.startswith("generator.") else 1 for n, _ in model.named_parameters()}
    expected: dict[str, dict[int, torch.Tensor]] = {name: {} for name in owners}
    counts = [0, 0]
    for index, wb_step, grads in probe.steps:
        if counts[index] % 3 == 0:
            for name, grad in grads.items():
                expected[name][wb_step] = grad
        counts[index] += 1
    assert counts == [8, 8]
    for name, by_step in expected.items():
        assert sorted(by_step) == [0, 3, 6], name  # every optimizer's parameters, at its own log steps
        logged = records.series(f"gradients/{name}")
        assert [int(s) for s, _ in logged] == [0, 3, 6], name
        for step, hist in logged:
            want = histograms([(name, by_step[int(step)])], bins=64)[name]
            assert hist["values"] == want.histogram and hist["bins"] == want.bins, (name, step)
        assert [int(s) for s, _ in records.series(f"parameters/{name}")] == [0, 3, 6], name


# ---------------------------------------------------------------------------------- CLI and processes


def test_lightning_cli_yaml_sets_log_freq(tmp_path: Path) -> None:
    cli = build_with_cli(
        """
- class_path: lw_callbacks.watch.WatchModel
  init_args:
    log: parameters
    log_freq: 3
    exclude: ["*.bias"]
    bins: 16
""",
        tmp_path,
        extra_args=[
            "--trainer.max_epochs=1", "--trainer.limit_train_batches=7", "--trainer.limit_val_batches=0",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            "--trainer.enable_checkpointing=false", "--data.batch_size=32",
            # absolute: the wandb service started by an earlier test resolves relative paths elsewhere
            f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        ],
    )
    watch = next(c for c in cli.trainer.callbacks if isinstance(c, WatchModel))
    assert (watch.log_mode, watch.log_freq, watch.exclude, watch.bins) == ("parameters", 3, ["*.bias"], 16)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    wandb.finish()
    records = read_run(find_runs(tmp_path)[0])
    weights = [n for n in PARAMS if n.endswith("weight")]
    assert histogram_steps(records, "parameters/") == {n: [0, 3, 6] for n in weights}
    assert histogram_steps(records, "gradients/") == {}
    assert all(len(h["values"]) == 16 for _, h in records.series("parameters/layer_1.weight"))


@pytest.mark.slow
def test_ddp_two_processes_one_set_of_histograms(tmp_path: Path) -> None:
    reports = run_ranks("watch_ddp.py", str(tmp_path / "runs"), out_dir=tmp_path / "reports", timeout=240)
    assert [r["rank"] for r in reports] == [0, 1]
    rank0, rank1 = reports
    assert rank0["global_step"] == rank1["global_step"] == 12
    assert len(rank0["runs"]) == 1
    once = [0, 2, 4, 6, 8, 10]
    assert rank0["series"] == {f"{p}/{n}": once for p in ("gradients", "parameters") for n in rank0["param_names"]}
    assert all(rank0["has_run"]) and rank0["watched"] == PARAMS
    assert not any(rank1["has_run"]) and rank1["watched"] == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="AMP with a GradScaler needs a CUDA device")
def test_amp_gradients_are_unscaled() -> None:
    probe = GradProbe("layer_3.weight")
    trainer = make_trainer(
        [WatchModel(log="gradients", log_freq=2), probe], accelerator="gpu", precision="16-mixed", max_epochs=1
    )
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule(batch_size=32))
    wandb.finish()
    records = read_run(find_runs("runs")[0])
    series = records.series("gradients/layer_3.weight")
    assert [int(s) for s, _ in series] == [0, 2, 4]
    for step, hist in series:
        grad = probe.grads[int(step)].float()
        # scaled gradients would be about 2**16 times larger
        assert math.isclose(hist["bins"][-1], grad.max().item(), rel_tol=1e-3, abs_tol=1e-6)

