"""torchrun with two CPU processes (gloo): the whole schedule, one set of files, exact resume."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from raccnn.engine.distributed import EvalShardSampler, ShardSampler, World, gather_outputs
from raccnn.engine.outputs import Outputs
from test_recovery import KILLER, assert_same_tensors, model_tensors, run, train_cmd

REPO = Path(__file__).resolve().parents[1]


def test_shard_sampler_of_one_process_is_the_random_sampler():
    a, b = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert list(ShardSampler(10, a, World())) == list(torch.utils.data.RandomSampler(range(10), generator=b))


def test_shards_cover_the_same_permutation_and_pad_by_wrapping():
    shards = [list(ShardSampler(10, torch.Generator().manual_seed(3), World(r, 3))) for r in range(3)]
    order = torch.randperm(10, generator=torch.Generator().manual_seed(3)).tolist()
    assert [len(s) for s in shards] == [4, 4, 4]
    merged = [shards[i % 3][i // 3] for i in range(12)]  # rank r holds positions r, r + 3, ...
    assert merged == order + order[:2]
    evals = [list(EvalShardSampler(10, World(r, 3))) for r in range(3)]
    assert sorted(sum(evals, [])) == list(range(10))


def _gather_worker(rank, path):
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=2)
    idx = torch.tensor(list(EvalShardSampler(5, World(rank, 2))))
    out = Outputs(logits=[idx[:, None].float() * torch.ones(1, 3)], label=idx % 2, index=idx, image_size=(8, 8),
                  abs_boxes=[idx[:, None].float().repeat(1, 3)], tl_bounds=torch.tensor([[0.1, 0.5]]))
    merged = gather_outputs(out)
    assert merged.index.tolist() == [0, 1, 2, 3, 4]
    assert torch.equal(merged.logits[0][:, 0], torch.arange(5.0))
    assert torch.equal(merged.abs_boxes[0][:, 2], torch.arange(5.0)) and merged.label.tolist() == [0, 1, 0, 1, 0]
    assert merged.image_size == (8, 8) and torch.equal(merged.tl_bounds, out.tl_bounds)
    dist.destroy_process_group()


def test_gather_outputs_puts_every_image_once_in_dataset_order(tmp_path):
    mp.spawn(_gather_worker, args=(str(tmp_path / "rendezvous"),), nprocs=2)


def _fusion_start_worker(rank, rendezvous, work_dir):
    """Rank 0 writes best_alternate.pt a second late, as after a slow disk; every rank's fusion
    phase must start from that file, not from the one an earlier epoch left."""
    import time
    from types import SimpleNamespace

    from raccnn.config import default_config
    from raccnn.engine.checkpoint import save_checkpoint
    from raccnn.engine.phases import Fusion

    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    model = torch.nn.Linear(2, 2)
    torch.nn.init.zeros_(model.weight)  # what both ranks hold before the fusion phase starts
    if rank == 0:
        time.sleep(1.0)
        save_checkpoint(os.path.join(work_dir, "best_alternate.pt"),
                        {"model": {"weight": torch.full((2, 2), 2.0), "bias": torch.zeros(2)}, "phase": "final"})
    trainer = SimpleNamespace(work_dir=work_dir, model=model, progress=SimpleNamespace(best={}))
    Fusion(default_config()).on_start(trainer)
    assert torch.equal(model.weight, torch.full((2, 2), 2.0)), f"rank {rank} started fusion from a stale file"
    dist.destroy_process_group()


def test_every_rank_starts_fusion_from_the_file_rank_0_finished_writing(tmp_path):
    from raccnn.engine.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "best_alternate.pt",  # an earlier epoch's best
                    {"model": {"weight": torch.ones(2, 2), "bias": torch.zeros(2)}, "phase": "earlier"})
    mp.spawn(_fusion_start_worker, args=(str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2)


def torchrun(script, *args, env=None):
    return run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script, *args],
               env={"OMP_NUM_THREADS": "1", **(env or {})})


def generate_data(data_root, tmp_path) -> None:
    """FG-Synth written by one process (a run of no epoch at all) before two processes read it."""
    warm = run([sys.executable, *train_cmd(data_root, tmp_path / "warm"), "train.pretrain_cls.epochs=0",
                "train.init_apn.epochs=0", "train.alternate.rounds=0", "model.fusion=log_probs"])
    assert warm.returncode == 0, warm.stderr[-2000:]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed missing")
def test_two_processes_run_every_phase_write_once_and_resume_exactly(data_root, tmp_path):
    generate_data(data_root, tmp_path)
    ref = tmp_path / "ddp"
    res = torchrun(*train_cmd(data_root, ref))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "weights identical on all 2 ranks" in res.stdout
    assert "2 process(es)" in res.stdout
    files = sorted(p.name for p in ref.iterdir())
    assert [f for f in files if not f.startswith("events")] == [
        ".train.lock", "best.pt", "best_alternate.pt", "config.yaml", "last.pt", "metrics.json", "predictions.csv",
        "train.log"]
    assert sum(f.startswith("events") for f in files) == 1
    metrics = json.loads((ref / "metrics.json").read_text())
    assert metrics["num_images"] == 24  # the tiny test split, each image once
    assert (ref / "train.log").read_text().count("== phase fusion") == 1  # one process logs

    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    work = tmp_path / "ddp_killed"
    res = torchrun(str(killer), *train_cmd(data_root, work)[1:], env={"KILL_AT": "step|alternate_apn[round 1]|1"})
    assert res.returncode != 0 and not (work / "best.pt").exists()
    res = torchrun(*train_cmd(data_root, work))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "resumed from" in (work / "train.log").read_text()
    for name in ("best_alternate.pt", "best.pt", "last.pt"):
        assert_same_tensors(model_tensors(work / name), model_tensors(ref / name), name)

    # the log_probs heads: fitted once on the outputs gathered from both processes, rank 0's weights
    # given to both (no training epoch before them here: the fit is what is tested)
    fit = tmp_path / "ddp_log_probs"
    res = torchrun(*train_cmd(data_root, fit, "train.pretrain_cls.epochs=0", "train.init_apn.epochs=0",
                              "train.alternate.rounds=0", "model.fusion=log_probs"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "weights identical on all 2 ranks" in res.stdout
    assert res.stdout.count("fusion 123: per-scale weights") == 1  # rank 0 logs
    best = torch.load(fit / "best.pt", map_location="cpu", weights_only=True)
    assert best["phase"] == "fusion" and not torch.allclose(best["model"]["fusion.123.raw"], torch.full((3,), 0.5413), atol=1e-3)

    # two tries of pretrain_cls: every rank starts the second from the file rank 0 wrote and keeps the same
    # try, and scale 3 starts from the other one (runner_up_scales)
    tries = tmp_path / "ddp_tries"
    res = torchrun(*train_cmd(data_root, tries, "train.pretrain_cls.tries=2", "train.pretrain_cls.runner_up_scales=[3]",
                              "train.init_apn.epochs=0", "train.alternate.rounds=0", "model.fusion=log_probs"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "weights identical on all 2 ranks" in res.stdout
    assert res.stdout.count("pretrain_cls[try 2]: val accuracy of scale 1") == 1
    assert (tries / "pretrain_start.pt").exists() and (tries / "best_pretrain.pt").exists()
    model = torch.load(tries / "best.pt", map_location="cpu", weights_only=True)["model"]
    for name, kept_file, scale in (("best", "best_pretrain.pt", 2), ("runner-up", "runner_up_pretrain.pt", 3)):
        kept = torch.load(tries / kept_file, map_location="cpu", weights_only=True)["scale"]
        assert all(torch.equal(model[f"scales.{scale - 1}.{k}"], v) for k, v in kept.items()), name
    assert not torch.equal(model["scales.1.classifier.weight"], model["scales.2.classifier.weight"])


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed missing")
def test_phase_wrap_exchanges_only_the_phase_parameters(tmp_path):
    """The ddp benchmark under torchrun (2 gloo processes, tiny model): the trainer's wrap
    (``wrap_ddp`` after the phase froze the model) all-reduces exactly the phase's trainable
    parameters, fp32, once per step; one wrap of the whole model exchanges every parameter, and
    without find_unused_parameters it stops at the second step."""
    from raccnn.config import load_config
    from raccnn.engine.phases import AlternateAPN, AlternateCls, Fusion
    from raccnn.models.racnn import build_racnn

    tiny = ["model.width=4", "model.input_sizes=[32,32,32]", "model.apn.hidden=16", "data.resize=48", "data.crop=48"]
    out = tmp_path / "ddp.json"
    res = torchrun("tools/benchmark.py", "ddp", "--opts", *tiny, "--classes", "3", "--batch", "2", "--rounds", "2",
                   "--warmup", "1", "--json", str(out))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    cfg = load_config("experiments/configs/fgsynth_default.yaml", tiny)
    model = build_racnn(dict(cfg, model=dict(cfg["model"], pretrained=False)), 3)
    total = sum(p.numel() for p in model.parameters())
    for case, phase in (("alternate_cls", AlternateCls), ("alternate_apn", AlternateAPN), ("fusion", Fusion)):
        mine = sum(p.numel() for p in phase(cfg, 0).parameters(model))
        assert 0 < mine < total
        sent = {r["wrap"]: r for r in rows if r["case"] == case}
        assert sent["phase"]["trainable_params"] == mine and sent["phase"]["model_params"] == total
        assert sent["none"]["allreduced_bytes"] == 0
        assert sent["phase"]["allreduced_bytes"] == 4 * mine
        assert sent["whole"]["allreduced_bytes"] == 4 * total
        assert sent["whole_strict"]["outcome"].startswith("fails: Expected to have finished reduction")
        assert all(r["ms_per_step"] > 0 and r["processes"] == 2 for r in sent.values() if "ms_per_step" in r)
    assert res.stdout.count("alternate_apn  phase") == 1  # rank 0 prints
