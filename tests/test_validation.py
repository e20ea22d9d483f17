"""The validation of a training run: what it measures (by hand on a tiny model), its flat history
row, its TensorBoard tags (from the one declaration) and its log lines."""
import math

import pytest
import torch
import torch.nn.functional as F

from raccnn.config import default_config
from raccnn.engine.validation import Validation, ValidationResult
from raccnn.engine.visualize import scalar_tags
from raccnn.losses import rank_loss
from raccnn.models import RACNN


def hand_result(moved=True):
    stats = {"n": 4, "tx_mean": 0.5, "tx_std": 0.1, "ty_mean": 0.25, "ty_std": 0.05, "tl_mean": 0.3, "tl_std": 0.02,
             "tl_min": 0.1, "tl_max": 0.5, "frac_at_min": 0.25, "frac_at_max": 0.0}
    boxes = [dict(stats, **({"dtx": 0.01, "dty": 0.02, "dtl": 0.03} if moved else {})), dict(stats)]
    return ValidationResult(accuracy={"scale1": 0.5, "scale2": 0.75, "scale3": 0.25, "fused12": 1.0, "fused123": 0.5},
                            ce=3.5, rank=0.125, active=[0.5, 1.0], boxes=boxes)


def test_the_row_keeps_the_history_keys_in_their_order():
    row = hand_result().row()
    assert list(row)[:9] == ["acc_scale1", "acc_scale2", "acc_scale3", "acc_fused12", "acc_fused123", "ce", "rank",
                             "rank_active_1_2", "rank_active_2_3"]
    assert row["apn1_dtx"] == 0.01 and row["apn2_tl_mean"] == 0.3 and "apn2_dtx" not in row


def test_the_tensorboard_scalars_come_from_the_declared_tags():
    tags = hand_result().scalars()
    declared = set(scalar_tags(3))
    assert set(tags) <= declared
    expected = {"val/acc_scale1", "val/acc_scale2", "val/acc_scale3", "val/acc_fused12", "val/acc_fused123", "val/ce",
                "val/rank", "val/rank_active_1_2", "val/rank_active_2_3"}
    expected |= {f"apn{a}/{s}" for a in (1, 2) for s in
                 ("tl_mean", "tl_std", "tx_mean", "ty_mean", "frac_at_min", "frac_at_max")}
    expected |= {"apn1/dtx", "apn1/dty", "apn1/dtl"}  # apn2 has not moved yet
    assert set(tags) == expected
    assert tags["val/rank_active_2_3"] == 1.0 and tags["apn1/dtl"] == 0.03 and tags["val/acc_fused12"] == 1.0


def test_the_log_lines():
    lines = hand_result().lines("alternate_apn[round 1]", 3, 0.25, 12.4, {"train/rank_active_1_2": 0.75,
                                                                           "train/grad_norm": 0.5})
    assert lines[0] == ("alternate_apn[round 1] epoch 3: train loss 0.2500 (12 img/s) | val ce 3.5000 rank 0.1250 | "
                        "scale1=0.500 scale2=0.750 scale3=0.250 fused12=1.000 fused123=0.500")
    assert lines[1] == ("  apn1 boxes: tl 0.300±0.020, centre (0.500±0.100, 0.250±0.050), at tl_min 25%, "
                        "at tl_max 0%, moved |dtx| 0.0100 |dty| 0.0200 |dtl| 0.0300")
    assert lines[2].endswith("at tl_max 0%")
    assert lines[3] == "  active rank hinges: val 1_2=0.50 2_3=1.00 | train 1_2=0.75; train grad norm 0.5"
    fitted = hand_result().lines("fusion", 1, math.nan, 0, {})  # the log_probs fusion takes no training step
    assert fitted[0].startswith("fusion epoch 1: no training step | val ce 3.5000")
    assert fitted[3].endswith("| train -; train grad norm -")
    diverged = hand_result().lines("cls", 2, math.nan, 40, {"train/grad_norm": math.nan})  # steps taken: nan shown
    assert diverged[0].startswith("cls epoch 2: train loss nan (40 img/s)") and diverged[3].endswith("grad norm nan")


def test_a_validation_measures_by_hand_and_the_moves_of_the_squares():
    torch.manual_seed(0)
    cfg = default_config()
    model = RACNN(num_classes=3, backbone="vgg_small", width=4, n_scales=3, input_sizes=[32, 24, 24],
                  apn=dict(hidden=8, pool_size=1))
    images, labels = torch.randn(5, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1])

    class Data(torch.utils.data.Dataset):
        part_names, classes = [], ["a", "b", "c"]

        def __len__(self):
            return 5

        def __getitem__(self, i):
            return {"image": images[i], "label": labels[i], "index": i}

    loader = torch.utils.data.DataLoader(Data(), batch_size=2)
    validation = Validation(cfg, loader, "cpu")
    first = validation(model)
    model.eval()
    with torch.no_grad():
        out = model(images)
    margin = cfg["train"]["alternate"]["margin"]
    assert first.ce == pytest.approx(sum(F.cross_entropy(x, labels).item() for x in out.logits), rel=1e-5)
    assert first.rank == pytest.approx(rank_loss(out.logits, labels, margin=margin).item(), rel=1e-5)
    p = [F.softmax(x, 1)[torch.arange(5), labels] for x in out.logits]
    assert first.active == pytest.approx([((p[s] - p[s + 1] + margin) > 0).float().mean().item() for s in (0, 1)])
    assert first.accuracy["scale2"] == pytest.approx((out.logits[1].argmax(1) == labels).float().mean().item())
    assert first.boxes[0]["tx_mean"] == pytest.approx(out.boxes[0][:, 0].mean().item(), abs=1e-6)
    assert "dtx" not in first.boxes[0]
    with torch.no_grad():  # move proposer 1's squares, then validate again
        model.proposers[0].fc2.bias.add_(0.5)
    second = validation(model)
    with torch.no_grad():
        moved = model(images).boxes[0]
    assert second.boxes[0]["dtx"] == pytest.approx((moved[:, 0] - out.boxes[0][:, 0]).abs().mean().item(), abs=1e-6)
    assert second.boxes[0]["dtx"] > 0
    # the previous squares survive a checkpoint
    again = Validation(cfg, loader, "cpu")
    again.load_state_dict(validation.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(again.previous, validation.previous))


def test_the_part_hit_of_each_square_on_the_validation_images_by_hand():
    """With part annotations each proposer's squares get the part hit of evaluate.py (the centre of
    the visible hit part inside the square, in input-image coordinates), checked by hand; an image
    whose part is hidden does not count, and a dataset without parts gets none."""
    torch.manual_seed(0)
    cfg = default_config()
    cfg["data"]["hit_parts"] = ["crest"]
    model = RACNN(num_classes=3, backbone="vgg_small", width=4, n_scales=3, input_sizes=[32, 24, 24],
                  apn=dict(hidden=8, pool_size=1))
    images, labels = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad():
        squares = model.eval()(images).abs_boxes  # [6, 3] (tx, ty, tl) as fractions of the image
    # crest centres (pixels): on the square's centre (hit), just outside its right edge (miss), or hidden
    parts = torch.zeros(6, 2, 3)
    for i in range(6):
        tx, ty, tl = squares[0][i].tolist()
        x = tx if i % 2 == 0 else tx + tl + 0.02
        parts[i, 1] = torch.tensor([x * 32, ty * 32, 0.0 if i == 5 else 1.0])

    def data(with_parts):
        class Data(torch.utils.data.Dataset):
            part_names, classes = (["beak", "crest"] if with_parts else []), ["a", "b", "c"]

            def __len__(self):
                return 6

            def __getitem__(self, i):
                item = {"image": images[i], "label": labels[i], "index": i}
                return {**item, "parts": parts[i]} if with_parts else item
        return torch.utils.data.DataLoader(Data(), batch_size=4)

    result = Validation(cfg, data(True), "cpu")(model)
    assert result.boxes[0]["part_hit"] == pytest.approx(3 / 5)  # images 0, 2, 4 hit; 1, 3 miss; 5 hidden
    hand = [(max(abs(parts[i, 1, 0] / 32 - b[0]), abs(parts[i, 1, 1] / 32 - b[1])) <= b[2]).item()
            for i, b in enumerate(squares[1].tolist()) if i != 5]
    assert result.boxes[1]["part_hit"] == pytest.approx(sum(hand) / 5)
    assert result.row()["apn1_part_hit"] == pytest.approx(0.6) and result.scalars()["apn1/part_hit"] == pytest.approx(0.6)
    assert result.lines("alternate_apn[round 1]", 1, 0.5, 10.0, {})[1].endswith(", part hit 60.0%")
    plain = Validation(cfg, data(False), "cpu")(model)
    assert "part_hit" not in plain.boxes[0] and "apn1/part_hit" not in plain.scalars()
