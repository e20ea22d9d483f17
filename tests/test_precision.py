"""Mixed precision, channels_last and torch.compile in the trainer (all on the CPU)."""
from __future__ import annotations

import math
import shutil

import pytest
import torch

from conftest import make_trainer
from raccnn.engine.precision import amp_dtype, check_compiler, use_channels_last
from raccnn.engine.step import DivergenceError, MAX_SKIPPED_STEPS
from raccnn.models.crop import compiled_attention_crop
from raccnn.models.racnn import RACNN


def test_auto_means_bf16_on_cuda_and_full_precision_on_the_cpu():
    assert amp_dtype("auto", torch.device("cuda")) is torch.bfloat16
    assert amp_dtype("auto", torch.device("cpu")) is None
    assert amp_dtype("fp16", torch.device("cpu")) is torch.float16 and amp_dtype("none", torch.device("cuda")) is None
    assert use_channels_last("auto", torch.device("cuda")) and not use_channels_last("auto", torch.device("cpu"))
    assert use_channels_last(True, torch.device("cpu"))


def test_under_bf16_autocast_boxes_and_losses_stay_fp32():
    from raccnn.engine.phases import AlternateAPN, AlternateCls, Fusion, PretrainCls
    from raccnn.config import load_config
    from conftest import DEFAULT_CONFIG, TINY
    cfg = load_config(DEFAULT_CONFIG, TINY)
    torch.manual_seed(0)
    model = RACNN(3, width=4, input_sizes=(32, 32, 32), apn={"hidden": 16, "pool_size": 2})
    images, target = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images)
        assert out.logits[0].dtype == torch.bfloat16  # the networks do run in 16 bits
        assert all(b.dtype == torch.float32 for b in out.boxes + out.abs_boxes)
        for phase in (PretrainCls(cfg), AlternateCls(cfg, 0), AlternateAPN(cfg, 0), Fusion(cfg)):
            loss, terms = phase.loss(model, images, target, None)
            assert loss.dtype == torch.float32 and all(t.dtype == torch.float32 for t in terms.values())


def test_a_bf16_run_finishes_with_finite_weights_and_moves_the_apn(data_root, tmp_path):
    trainer = make_trainer(data_root, tmp_path, ["train.amp=bf16"])
    before = [p.clone() for p in trainer.model.proposers.parameters()]
    trainer.run()
    assert trainer.amp_dtype is torch.bfloat16
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.proposers.parameters()))
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # autocast keeps fp32 masters


def test_fp16_scaler_that_keeps_skipping_stops_the_run(data_root, tmp_path):
    trainer = make_trainer(data_root, tmp_path, ["train.amp=fp16", "train.pretrain_cls.epochs=20"])
    assert trainer.scaler is not None
    for p in trainer.model.scales[0].parameters():  # every gradient overflows, as in an fp16 blow-up
        p.register_hook(lambda g: torch.full_like(g, math.inf))
    with pytest.raises(DivergenceError, match=rf"pretrain_cls.*skipped {MAX_SKIPPED_STEPS} steps in a row"):
        trainer.run()
    assert not (tmp_path / "best.pt").exists()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())  # skipped steps change nothing


def test_channels_last_gives_the_same_outputs(data_root, tmp_path):
    a = make_trainer(data_root, tmp_path / "a", ["train.channels_last=false"])
    b = make_trainer(data_root, tmp_path / "b", ["train.channels_last=true"])
    b.model.load_state_dict(a.model.state_dict())
    assert b.model.scales[0].backbone.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        oa, ob = a.model.eval()(x), b.model.eval()(b.to_input(x))
    for la, lb in zip(oa.logits, ob.logits):
        torch.testing.assert_close(la, lb, rtol=1e-4, atol=1e-5)


def run_counting_graphs(trainer, counters) -> dict[str, int]:
    """Run ``trainer``; returns Dynamo's count of compiled graphs at the start of every phase."""
    graphs_before = {}
    start_phase = trainer.start_phase

    def recording_start(phase, fresh=True):
        graphs_before[phase.label] = counters["stats"]["unique_graphs"]
        start_phase(phase, fresh)

    trainer.start_phase = recording_start
    trainer.run()
    return graphs_before


@pytest.mark.parametrize("sizes", ["[32,32,32]", "[48,32,32]"])  # the second as the paper's 448 -> 224 -> 224
def test_compiled_scales_do_not_recompile_once_every_phase_state_was_seen(data_root, tmp_path, monkeypatch, sizes):
    """Dynamo guards on train/eval mode and requires_grad: the phases switch between a few such
    states, each compiled once; a second alternation round must add no graph, and no graph may
    reach Dynamo's recompile limit (past it Dynamo would run the network eager without a word, and
    add no graph either). (The eager backend keeps the test fast: what is counted is Dynamo's
    guarding, the same for every backend.)"""
    dynamo = pytest.importorskip("torch._dynamo")
    real = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: real(self, backend="eager"))
    dynamo.reset()
    counters = dynamo.utils.counters
    counters.clear()
    trainer = make_trainer(data_root, tmp_path, ["train.compile=true", "train.alternate.rounds=3",
                                                 f"model.input_sizes={sizes}"])
    with dynamo.config.patch(fail_on_recompile_limit_hit=True):  # no silent fall-back to eager
        graphs_before = run_counting_graphs(trainer, counters)
    assert graphs_before["alternate_cls[round 2]"] > 0  # compiled in the first round
    assert graphs_before["alternate_cls[round 3]"] == graphs_before["alternate_cls[round 2]"]  # round 2 added none


def test_compiled_crop_does_not_recompile_once_every_phase_state_was_seen(data_root, tmp_path, monkeypatch):
    """``model.crop.compile``: the crop is compiled once per grad mode (training with and without
    box gradient, evaluation) and batch size; after the first alternation round nothing adds a
    graph (the eager backend again; tests/test_crop.py checks inductor's numbers)."""
    dynamo = pytest.importorskip("torch._dynamo")
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, backend="eager"))
    compiled_attention_crop.cache_clear()
    dynamo.reset()
    counters = dynamo.utils.counters
    counters.clear()
    try:
        trainer = make_trainer(data_root, tmp_path, ["model.crop.compile=true", "train.alternate.rounds=3"])
        with dynamo.config.patch(fail_on_recompile_limit_hit=True):
            graphs_before = run_counting_graphs(trainer, counters)
    finally:
        compiled_attention_crop.cache_clear()  # later tests compile with the real backend
    assert graphs_before["alternate_cls[round 2]"] > 0
    assert graphs_before["alternate_cls[round 3]"] == graphs_before["alternate_cls[round 2]"]
    assert counters["stats"]["unique_graphs"] == graphs_before["alternate_cls[round 3]"]


def test_compiling_without_a_compiler_is_refused_before_training(monkeypatch):
    from raccnn.config import load_config
    from raccnn.errors import ConfigError

    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.delenv("CC", raising=False)
    cfg = load_config("experiments/configs/fgsynth_default.yaml", ["model.crop.compile=true"])
    with pytest.raises(ConfigError, match=r"model\.crop\.compile: torch.compile needs a C/C\+\+ compiler"):
        check_compiler(cfg, torch.device("cpu"))
    check_compiler(load_config("experiments/configs/fgsynth_default.yaml"), torch.device("cpu"))  # nothing compiled
