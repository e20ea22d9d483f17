"""train.alternate.ema: the weights' moving average (engine/averaging.py), by hand and in the trainer."""
import pytest
import torch
from conftest import DEFAULT_CONFIG, make_trainer
from torch import nn

from raccnn.config import ConfigError, load_config
from raccnn.engine.averaging import WeightAverage
from raccnn.engine.checkpoint import load_checkpoint


def net(weight: float) -> nn.Module:
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    model[0].weight.data.fill_(weight)
    return model


def test_the_average_follows_the_warmed_up_decay_by_hand():
    model, average = net(0.0), WeightAverage()
    average.start(model, decay=0.9)
    assert "1.num_batches_tracked" not in average.average  # an integer buffer is not averaged
    model[0].weight.data.fill_(1.0)
    average.update(model)  # t = 1: decay min(0.9, 2/11) = 2/11
    assert average.average["0.weight"].item() == pytest.approx(9 / 11, abs=1e-7)
    model[0].weight.data.fill_(2.0)
    average.update(model)  # t = 2: decay 3/12, so 3/12 * 9/11 + 9/12 * 2
    assert average.average["0.weight"].item() == pytest.approx(75 / 44, abs=1e-6)
    average.update(model, on=False)  # a phase without averaging leaves it alone
    assert average.updates == 2 and average.average["0.weight"].item() == pytest.approx(75 / 44, abs=1e-6)
    assert average.decay_at(79) < 0.9 and average.decay_at(80) == 0.9  # (1 + t) / (10 + t) reaches d at t = 80
    average.updates, before = 99, average.average["0.weight"].item()
    model[0].weight.data.fill_(-3.0)
    average.update(model)  # t = 100: decay 0.9
    assert average.average["0.weight"].item() == pytest.approx(0.9 * before + 0.1 * -3.0, abs=1e-6)
    average.start(net(5.0), decay=0.5)  # started once: a later phase's start does not restart it
    assert average.decay == 0.9 and average.updates == 100


def test_applied_swaps_the_average_in_and_the_own_weights_back_even_after_an_error():
    model, average = net(1.0), WeightAverage()
    average.start(model, decay=0.0)  # decay 0: no averaging at all
    assert average.state_dict() is None
    with average.applied(model):
        assert model[0].weight.item() == 1.0
    average.start(model, decay=0.99)
    model[0].weight.data.fill_(4.0)
    with pytest.raises(RuntimeError), average.applied(model):
        assert model[0].weight.item() == 1.0  # the average, still the starting weights
        raise RuntimeError("inside the block")
    assert model[0].weight.item() == 4.0
    with average.applied(model, on=False):
        assert model[0].weight.item() == 4.0
    restored = WeightAverage()
    restored.load_state_dict(average.state_dict(), torch.device("cpu"))
    assert restored.decay == 0.99 and torch.equal(restored.average["0.weight"], average.average["0.weight"])


def test_an_ema_of_one_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"train\.alternate\.ema.*below 1"):
        load_config(DEFAULT_CONFIG, ["train.alternate.ema=1.0"])


def test_the_alternation_validates_and_keeps_the_average_and_a_resume_continues_it(data_root, tmp_path):
    ema = ["train.alternate.ema=0.8"]
    full = make_trainer(data_root, tmp_path / "full", extra=ema)
    full.run()
    best = load_checkpoint(tmp_path / "full" / "best_alternate.pt")
    kept = best["average"]["average"]
    assert best["phase"].startswith("alternate_") and best["average"]["updates"] > 0
    for k, v in kept.items():  # the epoch kept is the average at that epoch
        torch.testing.assert_close(best["model"][k], v, rtol=0, atol=0, msg=k)
    # ... and its recorded validation is that of the average: validated again, the same accuracies
    row = next(h for h in full.progress.history if h["step"] == best["progress"]["step"])
    check = make_trainer(data_root, tmp_path / "check", extra=ema)
    check.model.load_state_dict(best["model"])
    again = check.validation(check.model).row()
    assert {k: again[k] for k in again if k.startswith("acc_")} == {k: row[k] for k in row if k.startswith("acc_")}
    # the averaged weights are not the trained ones: in the middle of the alternation last.pt holds both
    resume_at = {"mid": next(h["step"] for h in full.progress.history if h["phase"] == "alternate_apn[round 1]"),
                 "start": [h["step"] for h in full.progress.history if h["phase"] == "init_apn"][-1]}
    for where, stop_step in resume_at.items():  # in the middle, and just before the alternation starts
        part = make_trainer(data_root, tmp_path / where, extra=ema)
        part.run(stop_after_step=stop_step)
        last = load_checkpoint(tmp_path / where / "last.pt")
        if where == "mid":
            assert any(not torch.equal(last["model"][k], v) for k, v in last["average"]["average"].items())
        else:
            assert last["average"] is None and last["progress"]["phase_index"] == 2
        resumed = make_trainer(data_root, tmp_path / where, extra=ema)
        resumed.resume(str(tmp_path / where / "last.pt"))
        resumed.run()
        assert resumed.average.updates == full.average.updates, where
        for k, v in full.average.average.items():
            torch.testing.assert_close(resumed.average.average[k], v, rtol=0, atol=0, msg=f"{where}: {k}")
        for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"{where}: {k}")
