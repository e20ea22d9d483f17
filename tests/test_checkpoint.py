import copy
import random

import numpy as np
import pytest
import torch

from raccnn.config import default_config
from raccnn.engine import checkpoint as ckpt_mod
from raccnn.engine.checkpoint import (
    CheckpointError,
    capture_rng_state,
    check_compatible,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


def draw():
    return (random.random(), float(np.random.rand()), torch.rand(3).tolist(),
            torch.randint(0, 1000, (2,)).tolist())


def test_save_load_round_trip(tmp_path):
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3,
             "config": default_config(), "num_classes": 10, "rng": capture_rng_state(), "history": [0.5, 0.75]}
    path = tmp_path / "sub/dir/last.pth"
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert loaded["epoch"] == 3 and loaded["config"] == state["config"]
    assert loaded["history"] == [0.5, 0.75]
    assert [p.name for p in path.parent.iterdir()] == ["last.pth"]


def test_save_overwrites_existing(tmp_path):
    path = tmp_path / "c.pth"
    save_checkpoint(path, {"v": 1})
    save_checkpoint(str(path), {"v": 2})
    assert load_checkpoint(path)["v"] == 2


def test_failed_save_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "c.pth"
    save_checkpoint(path, {"v": 1})
    real_save = torch.save

    def half_written(obj, f, *args, **kwargs):
        f.write(b"partial data")
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(ckpt_mod.torch, "save", half_written)
    with pytest.raises(RuntimeError, match="killed mid-write"):
        save_checkpoint(path, {"v": 2})
    monkeypatch.setattr(ckpt_mod.torch, "save", real_save)

    assert load_checkpoint(path)["v"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pth"]


def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt_mod.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("io")))
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "c.pth", {"v": 1})
    assert list(tmp_path.iterdir()) == []


def test_load_missing_names_path(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint not found: .*nope\.pth"):
        load_checkpoint(tmp_path / "nope.pth")


def test_load_directory_is_an_error(tmp_path):
    with pytest.raises(CheckpointError, match="not a file"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all"])
def test_load_garbage_names_path(tmp_path, content):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*bad\.pth"):
        load_checkpoint(path)


def test_load_truncated_names_path(tmp_path):
    path = tmp_path / "t.pth"
    save_checkpoint(path, {"w": torch.zeros(1000)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*t\.pth"):
        load_checkpoint(path)


def test_load_non_dict(tmp_path):
    path = tmp_path / "l.pth"
    torch.save([1, 2], path)
    with pytest.raises(CheckpointError, match="holds a list, expected a dict"):
        load_checkpoint(path)


def test_rng_capture_restore_reproduces_numbers(tmp_path):
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    draw()
    state = capture_rng_state()
    expected = draw()

    draw()  # move every generator on
    restore_rng_state(state)
    assert draw() == expected

    # the same after a trip through a checkpoint file (loaded with weights_only=True)
    save_checkpoint(tmp_path / "rng.pth", {"rng": state})
    draw()
    restore_rng_state(load_checkpoint(tmp_path / "rng.pth")["rng"])
    assert draw() == expected


def test_rng_restore_partial_state_leaves_others_alone():
    random.seed(0)
    state = {"python": capture_rng_state()["python"]}
    expected = random.random()
    torch.manual_seed(11)
    expected_torch = torch.rand(1)
    torch.manual_seed(11)
    restore_rng_state(state)
    assert random.random() == expected
    assert torch.equal(torch.rand(1), expected_torch)


@pytest.fixture
def cfg():
    return default_config()


def test_compatible_passes(cfg):
    ckpt = {"config": copy.deepcopy(cfg), "num_classes": 10}
    ckpt["config"]["train"]["pretrain_cls"]["lr"] = 1.0  # not architectural
    ckpt["config"]["model"]["input_sizes"] = (64, 64, 64)  # tuple vs list is fine
    check_compatible(ckpt, cfg, num_classes=10)


def test_incompatible_lists_every_mismatch(cfg):
    other = copy.deepcopy(cfg)
    other["model"]["backbone"] = "vgg19"
    other["model"]["apn"]["hidden"] = 512
    other["model"]["input_sizes"] = [64, 64, 32]
    other["model"]["attention"].update(type="se", stages=[4])
    other["model"]["fusion"] = "log_probs"
    with pytest.raises(CheckpointError) as err:
        check_compatible({"config": other, "num_classes": 200}, cfg, num_classes=10)
    msg = str(err.value)
    assert "model.backbone: checkpoint has 'vgg19', config has 'vgg_small'" in msg
    assert "model.apn.hidden: checkpoint has 512, config has 256" in msg
    assert "model.input_sizes: checkpoint has [64, 64, 32], config has [64, 64, 64]" in msg
    assert "num_classes: checkpoint has 200, the dataset has 10" in msg
    assert "model.attention.type: checkpoint has 'se', config has 'none'" in msg
    assert "model.attention.stages: checkpoint has [4], config has []" in msg
    assert "model.fusion: checkpoint has 'log_probs', config has 'features'" in msg
    assert "model.width" not in msg


def test_incompatible_missing_entries(cfg):
    with pytest.raises(CheckpointError, match="no 'config' entry"):
        check_compatible({"num_classes": 10}, cfg, num_classes=10)
    partial = copy.deepcopy(cfg)
    del partial["model"]["apn"]["pool_size"]
    with pytest.raises(CheckpointError) as err:
        check_compatible({"config": partial}, cfg, num_classes=10)
    assert "model.apn.pool_size: checkpoint has nothing, config has 4" in str(err.value)
    assert "num_classes: checkpoint has nothing, the dataset has 10" in str(err.value)
