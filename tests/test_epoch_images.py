"""train.epoch_images: an epoch of at least that many training images, whole shuffled passes over a
small split chained and the last one cut short, so that a schedule counted in epochs keeps its
optimiser steps when the training split shrinks."""
import pytest
import torch

from conftest import make_trainer
from raccnn.config import ConfigError, load_config
from raccnn.engine.distributed import ShardSampler, World


def test_an_epoch_chains_fresh_permutations_and_cuts_the_last_short():
    order = list(ShardSampler(5, torch.Generator().manual_seed(4), World(), epoch_images=12))
    g = torch.Generator().manual_seed(4)
    expected = [i for _ in range(3) for i in torch.randperm(5, generator=g).tolist()][:12]
    assert order == expected
    assert sorted(order[:5]) == sorted(order[5:10]) == list(range(5))  # every image once per pass
    assert len(set(order[10:])) == 2
    assert order[:5] != order[5:10]  # a fresh draw per pass, not the same order repeated


def test_an_epoch_images_within_the_split_changes_nothing():
    for epoch_images in (0, 3, 10):
        a, b = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
        assert list(ShardSampler(10, a, World(), epoch_images)) == list(ShardSampler(10, b, World()))
        assert a.get_state().equal(b.get_state())


def test_ranks_share_the_longer_epoch():
    shards = [list(ShardSampler(4, torch.Generator().manual_seed(2), World(r, 3), epoch_images=10)) for r in range(3)]
    g = torch.Generator().manual_seed(2)
    order = [i for _ in range(3) for i in torch.randperm(4, generator=g).tolist()][:10]
    assert [len(s) for s in shards] == [4, 4, 4]
    assert [shards[i % 3][i // 3] for i in range(12)] == order + order[:2]  # padded by wrapping, as before


def test_the_trainer_runs_the_longer_epochs(data_root, tmp_path):
    # TINY's training split: 3 classes x 6 images = 18, in batches of 8 (drop_last): 2 steps an epoch
    plain = make_trainer(data_root, tmp_path / "plain")
    longer = make_trainer(data_root, tmp_path / "longer", ["train.epoch_images=40"])
    assert len(plain.train_loader.dataset) == 18
    assert (len(plain.train_loader), len(longer.train_loader)) == (2, 5)


def test_a_negative_epoch_images_is_refused():
    with pytest.raises(ConfigError, match="train.epoch_images"):
        load_config("experiments/configs/fgsynth_default.yaml", ["train.epoch_images=-1"])
