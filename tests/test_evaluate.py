import json
import math
from types import SimpleNamespace

import pytest
import torch

from raccnn.engine.inference import collect_outputs, peak_boxes
from raccnn.engine.outputs import Outputs
from raccnn.engine.evaluate import (
    CUB_HEAD_PARTS,
    box_stats,
    compute_metrics,
    default_hit_parts,
    format_table,
    write_metrics,
)
from raccnn.models import RACNN

CLASSES = ["a", "b", "c"]
PART_NAMES = ["beak", "crown", "tail"]
H, W = 100, 200  # not square, so that x / W and y / H cannot be swapped unnoticed


def one_hot(preds, k=3):
    return torch.nn.functional.one_hot(torch.tensor(preds), k).float()


def square(tx, ty, tl, n=6):
    return torch.tensor([[tx, ty, tl]]).repeat(n, 1)


def hand_outputs(with_parts=True, with_boxes=True):
    labels = [0, 0, 1, 1, 2, 2]
    nan = [math.nan] * 4
    # (x, y, visible) in pixels for beak, crown, tail.
    parts = torch.tensor([
        [[100, 50, 1], [0, 0, 0], [0, 0, 0]],        # centre (0.5, 0.5): inside both squares
        [[150, 50, 1], [150, 75, 1], [0, 0, 0]],     # centre (0.75, 0.625): on scale 2's right border
        [[180, 50, 1], [20, 50, 1], [0, 0, 0]],      # mean of two outside parts is (0.5, 0.5): inside
        [[0, 0, 0], [0, 0, 0], [100, 50, 1]],        # no visible hit part: excluded
        [[190, 50, 1], [100, 50, 0], [0, 0, 0]],     # invisible crown ignored: centre x 0.95, outside
        [[100, 90, 1], [0, 0, 0], [0, 0, 0]],        # y = 90 / H = 0.9: outside (90 / W would be inside)
    ], dtype=torch.float32)
    return Outputs(
        logits=[one_hot([0, 0, 1, 1, 2, 2]), one_hot([0, 1, 1, 0, 2, 0]), one_hot([2, 2, 2, 2, 2, 2])],
        fused={"12": one_hot([0, 0, 1, 1, 2, 0]), "123": one_hot([0, 0, 0, 0, 0, 0])},
        abs_boxes=[square(0.5, 0.5, 0.25),  # pixels [50, 25, 150, 75]
                   square(0.5, 0.5, 0.1)],  # pixels [80, 40, 120, 60]
        rel_boxes=[torch.tensor([[0.5, 0.5, 0.1]] * 3 + [[0.5, 0.5, 0.3]] * 3), square(0.5, 0.5, 0.5)],
        tl_bounds=torch.tensor([[0.1, 0.5], [0.1, 0.5]]),
        label=torch.tensor(labels),
        box=torch.tensor([[50, 25, 150, 75], [0, 0, 100, 50]] + [nan] * 4 if with_boxes else [nan] * 6),
        parts=parts if with_parts else torch.zeros(6, 0, 3),
        index=torch.arange(6),
        image_size=(H, W),
    )


def test_accuracies_per_class_and_confusion():
    m = compute_metrics(hand_outputs(), CLASSES, PART_NAMES, ["beak", "crown"])
    assert m["num_images"] == 6
    assert m["heads"] == ["scale1", "scale2", "scale3", "fused12", "fused123"]
    assert m["acc_scale1"] == 1.0
    assert m["acc_scale2"] == 0.5
    assert m["acc_scale3"] == pytest.approx(1 / 3)
    assert m["acc_fused12"] == pytest.approx(5 / 6)
    assert m["acc_fused123"] == pytest.approx(1 / 3)
    assert m["per_class_acc"]["scale2"] == {"a": 0.5, "b": 0.5, "c": 0.5}
    assert m["per_class_acc"]["scale3"] == {"a": 0.0, "b": 0.0, "c": 1.0}
    assert m["per_class_acc"]["fused12"] == {"a": 1.0, "b": 1.0, "c": 0.5}
    assert m["confusion_matrix"]["scale2"] == [[1, 1, 0], [1, 1, 0], [1, 0, 1]]
    assert m["confusion_matrix"]["fused123"] == [[2, 0, 0], [2, 0, 0], [2, 0, 0]]
    json.dumps(m, allow_nan=False)


def test_class_without_images_has_no_accuracy():
    out = hand_outputs()
    m = compute_metrics(out, CLASSES + ["d"], PART_NAMES, ["beak"])
    assert m["per_class_acc"]["scale1"]["d"] is None
    assert len(m["confusion_matrix"]["scale1"]) == 4


def test_part_hit():
    m = compute_metrics(hand_outputs(), CLASSES, PART_NAMES, ["beak", "crown"])
    assert m["hit_parts"] == ["beak", "crown"]
    assert m["part_hit_count"] == 5
    assert m["part_hit_scale2"] == pytest.approx(3 / 5)  # images 0, 1 (border), 2
    assert m["part_hit_scale3"] == pytest.approx(2 / 5)  # images 0, 2
    # both squares are centred at (0.5, 0.5): offsets 0, 0.25, 0, 0.45, 0.4 (x 0.95; y 90 / H = 0.9)
    assert m["part_offset_scale2"] == pytest.approx(0.25) and m["part_offset_scale3"] == pytest.approx(0.25)


def test_part_offset_is_the_aim_whatever_the_square_size():
    """A square on the part has offset 0 at any size; one grown to cover the part keeps its offset."""
    out = hand_outputs()
    out.abs_boxes = [square(0.25, 0.5, 0.5), torch.tensor([[0.5, 0.5, 0.05], [0.75, 0.625, 0.05], [0.5, 0.5, 0.05],
                                                            [0.1, 0.1, 0.05], [0.95, 0.5, 0.05], [0.5, 0.9, 0.05]])]
    m = compute_metrics(out, CLASSES, PART_NAMES, ["beak", "crown"])
    assert m["part_hit_scale2"] == pytest.approx(4 / 5)  # every centre but x 0.95 lies within 0.5 of (0.25, 0.5)
    assert m["part_offset_scale2"] == pytest.approx(0.4)  # offsets 0.25, 0.5, 0.25, 0.7, 0.4
    assert m["part_hit_scale3"] == 1.0 and m["part_offset_scale3"] == 0.0


def test_peak_hit_uses_the_peak_squares_like_part_hit():
    out = hand_outputs()
    out.peak_boxes = [square(0.25, 0.5, 0.25)]  # pixels [0, 25, 100, 75]: holds centre (0.5, 0.5) on its border
    m = compute_metrics(out, CLASSES, PART_NAMES, ["beak", "crown"])
    assert m["peak_hit_scale2"] == pytest.approx(2 / 5)  # images 0 and 2; 1 (x 0.75) and 4 (x 0.95) are outside
    assert "peak_hit_scale3" not in m and m["part_hit_scale2"] == pytest.approx(3 / 5)


def test_peak_boxes_sit_on_the_strongest_response():
    """A one-hot channel-summed map puts the square's centre on that cell; deeper scales compose
    the peak with their parent square; the half side is the scale's own square's."""
    maps = [torch.zeros(2, 4, 4, 4), torch.zeros(2, 4, 2, 2), torch.zeros(2, 4, 2, 2)]
    maps[0][0, :, 1, 3] = 1.0  # row 1, column 3 of 4: centre (0.875, 0.375)
    maps[0][1, 0, 0, 0] = 5.0  # row 0, column 0: centre (0.125, 0.125)
    maps[1][:, :, 1, 0] = 1.0  # row 1, column 0 of 2: (0.25, 0.75) of scale 2's view
    rel = [torch.tensor([[0.5, 0.5, 0.2]] * 2), torch.tensor([[0.5, 0.5, 0.3]] * 2)]
    parent = torch.tensor([[0.5, 0.5, 0.25]] * 2)  # scale 2's view: [0.25, 0.75]^2
    out = SimpleNamespace(maps=maps, boxes=rel, abs_boxes=[parent, parent])
    peaks = peak_boxes(out)
    torch.testing.assert_close(peaks[0], torch.tensor([[0.875, 0.375, 0.2], [0.125, 0.125, 0.2]]))
    # scale 3: (0.25 + 0.5 * 0.25, 0.25 + 0.5 * 0.75) = (0.375, 0.625), half side 0.5 * 0.3
    torch.testing.assert_close(peaks[1], torch.tensor([[0.375, 0.625, 0.15]] * 2))


def test_part_hit_names_are_checked_and_default_to_head_parts():
    with pytest.raises(ValueError, match="wing"):
        compute_metrics(hand_outputs(), CLASSES, PART_NAMES, ["wing"])
    assert default_hit_parts(["back", "beak", "nape", "tail"]) == ["beak", "nape"]
    assert default_hit_parts(["body", "crest"]) == ["body", "crest"]
    assert "left eye" in CUB_HEAD_PARTS and len(CUB_HEAD_PARTS) == 7
    m = compute_metrics(hand_outputs(), CLASSES, PART_NAMES, [])
    assert m["hit_parts"] == ["beak", "crown"]


def test_iou_with_object_box():
    m = compute_metrics(hand_outputs(), CLASSES, PART_NAMES, ["beak"])
    assert m["iou_object_count"] == 2
    # Image 0's box is the scale-2 square; image 1's box [0, 0, 100, 50] overlaps it by 50 x 25.
    assert m["iou_object_scale2"] == pytest.approx((1 + 1250 / 8750) / 2)
    # Scale-3 square [80, 40, 120, 60] (area 800) lies inside box 0; overlaps box 1 by 20 x 10.
    assert m["iou_object_scale3"] == pytest.approx((800 / 5000 + 200 / 5600) / 2)


def test_no_parts_no_boxes():
    out = hand_outputs(with_parts=False, with_boxes=False)
    m = compute_metrics(out, CLASSES, [], ["beak"])
    assert m["hit_parts"] == [] and m["part_hit_count"] == 0 and m["iou_object_count"] == 0
    for s in (2, 3):
        assert m[f"part_hit_scale{s}"] is None and m[f"part_offset_scale{s}"] is None
        assert m[f"iou_object_scale{s}"] is None
    assert m["acc_scale1"] == 1.0
    json.dumps(m, allow_nan=False)
    table = format_table(m)
    assert "Part hit" not in table and "IoU" not in table


def test_box_stats_known_boxes():
    boxes = torch.tensor([[0.2, 0.4, 0.1], [0.4, 0.6, 0.3], [0.6, 0.8, 0.5], [0.8, 0.2, 0.5]])
    st = box_stats(boxes, 0.1, 0.5)
    assert st["n"] == 4
    assert st["tx_mean"] == pytest.approx(0.5)
    assert st["tx_std"] == pytest.approx(math.sqrt(0.05))
    assert st["ty_mean"] == pytest.approx(0.5)
    assert st["tl_mean"] == pytest.approx(0.35)
    assert st["frac_at_min"] == 0.25
    assert st["frac_at_max"] == 0.5
    # Bounds 0.05 .. 0.45: nothing near the lower bound, but tl = 0.5 >= 0.44.
    st = box_stats(boxes, 0.05, 0.45)
    assert st["frac_at_min"] == 0.0 and st["frac_at_max"] == 0.5
    # Without bounds the observed extremes are used.
    assert box_stats(boxes)["tl_min"] == pytest.approx(0.1)
    assert box_stats(boxes[:1])["tx_std"] == 0.0
    empty = box_stats(torch.zeros(0, 3), 0.1, 0.5)
    assert empty["n"] == 0 and empty["tl_mean"] is None and empty["frac_at_min"] is None


def test_box_stats_in_metrics():
    m = compute_metrics(hand_outputs(), CLASSES, PART_NAMES, ["beak"])
    rel = m["rel_box_stats_scale2"]
    assert rel["tl_min"] == pytest.approx(0.1) and rel["tl_max"] == pytest.approx(0.5)
    assert rel["frac_at_min"] == 0.5 and rel["frac_at_max"] == 0.0
    assert m["rel_box_stats_scale3"]["frac_at_max"] == 1.0
    assert m["abs_box_stats_scale3"]["tl_mean"] == pytest.approx(0.1)


def test_format_table():
    m = compute_metrics(hand_outputs(), CLASSES, PART_NAMES, ["beak", "crown"])
    table = format_table(m)
    for label, value in [("scale 1", "100.00"), ("scale 2", "50.00"), ("scale 3", "33.33"),
                         ("fused 1+2", "83.33"), ("fused 1+2+3", "33.33")]:
        assert f"| {label} | {value} |" in table
    assert "60.00%" in table and "40.00%" in table and "beak, crown" in table
    assert f"{(1 + 1250 / 8750) / 2:.3f}" in table


def test_write_metrics(tmp_path):
    path = tmp_path / "sub" / "metrics.json"
    write_metrics({"acc": 0.5, "loss": float("nan"), "t": torch.tensor([1, 2])}, path)
    assert json.loads(path.read_text()) == {"acc": 0.5, "loss": None, "t": [1, 2]}
    write_metrics({"acc": 0.75}, path)
    assert json.loads(path.read_text()) == {"acc": 0.75}
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]


def tiny_loader(sizes=(2, 3), h=40, w=48, parts=2):
    g = torch.Generator().manual_seed(0)
    loader, start = [], 0
    for b in sizes:
        loader.append({
            "image": torch.randn(b, 3, h, w, generator=g),
            "label": torch.randint(0, 3, (b,), generator=g),
            "box": torch.tensor([[4.0, 4.0, 30.0, 20.0]]).repeat(b, 1),
            "parts": torch.tensor([[[10.0, 10.0, 1.0]] * parts]).repeat(b, 1, 1),
            "index": torch.arange(start, start + b),
        })
        start += b
    return loader


@pytest.mark.parametrize("training", [True, False])
def test_collect_outputs(training):
    torch.manual_seed(0)
    model = RACNN(num_classes=3, backbone="vgg_small", width=4, n_scales=3, input_sizes=[32, 24, 24],
                  apn=dict(hidden=8, pool_size=1))
    model.train(training)
    loader = tiny_loader()
    out = collect_outputs(model, loader, "cpu")
    assert model.training is training
    assert [x.shape for x in out.logits] == [(5, 3)] * 3
    assert list(out.heads()) == ["scale1", "scale2", "scale3", "fused12", "fused123"]
    assert {name: x.shape for name, x in out.fused.items()} == {"12": (5, 3), "123": (5, 3)}
    for squares in (out.abs_boxes, out.rel_boxes, out.peak_boxes):
        assert [x.shape for x in squares] == [(5, 3)] * 2  # scales 2 and 3
    assert out.box_scales() == [2, 3]
    assert out.label.shape == (5,) and out.label.dtype == torch.int64
    assert out.box.shape == (5, 4)
    assert out.parts.shape == (5, 2, 3)
    assert out.index.tolist() == [0, 1, 2, 3, 4]
    assert tuple(out.image_size) == (40, 48)
    assert out.tl_bounds.tolist() == [[0.1, 0.5], [0.1, 0.5]]
    tensors = [*out.logits, *out.fused.values(), *out.abs_boxes, *out.rel_boxes, *out.peak_boxes, out.label, out.box]
    assert all(not v.requires_grad and v.device.type == "cpu" for v in tensors)

    # Same numbers as an eval-mode forward pass.
    model.eval()
    with torch.no_grad():
        ref = model(loader[1]["image"])
    assert torch.allclose(out.logits[2][2:], ref.logits[2])
    assert torch.allclose(out.abs_boxes[1][2:], ref.abs_boxes[1])

    m = compute_metrics(out, CLASSES, ["beak", "tail"], ["beak"])
    assert m["part_hit_count"] == 5 and m["iou_object_count"] == 5
    assert all(0 <= m[f"peak_hit_scale{s}"] <= 1 for s in (2, 3))
    json.dumps(m, allow_nan=False)


def test_collect_outputs_single_scale_without_annotations():
    model = RACNN(num_classes=3, backbone="vgg_small", width=4, n_scales=1, input_sizes=[32])
    loader = [{"image": torch.randn(2, 3, 32, 32), "label": torch.tensor([0, 1]),
               "box": torch.full((2, 4), math.nan), "parts": torch.zeros(2, 0, 3), "index": torch.tensor([7, 8])}]
    out = collect_outputs(model, loader, "cpu")
    assert list(out.heads()) == ["scale1"] and out.abs_boxes == [] and out.fused == {}
    assert out.tl_bounds is None
    m = compute_metrics(out, CLASSES, [], [])
    assert m["heads"] == ["scale1"]
    assert not any(k.startswith(("part_hit_scale", "peak_hit_scale", "iou_object_scale")) for k in m)
    assert "| scale 1 |" in format_table(m)


def test_fused_head_against_each_scale_image_by_image():
    """The last fused head against every scale on the same images (hand-counted from hand_outputs)."""
    m = compute_metrics(hand_outputs(), CLASSES, PART_NAMES, ["beak", "crown"])
    assert m["paired_fused123"] == {
        "scale1": {"head_only": 0, "scale_only": 4, "p_value": pytest.approx(2 / 2**4)},
        "scale2": {"head_only": 1, "scale_only": 2, "p_value": pytest.approx(1.0)},
        "scale3": {"head_only": 2, "scale_only": 2, "p_value": pytest.approx(1.0)},
    }
    assert "scale 1 +0 / -4 (p = 0.125)" in format_table(m)
    json.dumps(m, allow_nan=False)


def ranked_logits(rankings, k=7):
    """Logits [N, k] whose order of classes, highest first, is each row of ``rankings``."""
    logits = torch.zeros(len(rankings), k)
    for i, order in enumerate(rankings):
        logits[i, torch.tensor(order)] = torch.arange(k, 0, -1).float()
    return logits


def test_top5_and_mean_per_class_accuracy_by_hand():
    """7 classes, of which only 0, 1, 2 have images (4, 1 and 2): top-5 differs from top-1 and from
    100 %, and the mean per-class accuracy from the accuracy over images."""
    classes = list("abcdefg")
    labels = [0, 0, 0, 0, 1, 2, 2]
    scale1 = [[0, 1, 2, 3, 4, 5, 6],   # right
              [1, 2, 3, 4, 0, 5, 6],   # label 5th: top-5 only
              [1, 2, 3, 4, 5, 0, 6],   # label 6th: neither
              [6, 5, 4, 3, 2, 1, 0],   # label last: neither
              [1, 0, 2, 3, 4, 5, 6],   # right
              [0, 2, 1, 3, 4, 5, 6],   # label 2nd: top-5 only
              [2, 0, 1, 3, 4, 5, 6]]   # right
    scale2 = [[2, 0, 1, 3, 4, 5, 6]] * 7  # always class 2, then 0 and 1: top-5 holds every label
    outputs = Outputs(logits=[ranked_logits(scale1), ranked_logits(scale2)], fused={"12": ranked_logits(scale1[::-1])},
                      label=torch.tensor(labels), image_size=(H, W))
    m = compute_metrics(outputs, classes)
    assert m["top5_k"] == 5
    assert m["acc_scale1"] == pytest.approx(3 / 7)
    assert m["top5_acc_scale1"] == pytest.approx(5 / 7)
    assert m["mean_class_acc_scale1"] == pytest.approx((1 / 4 + 1 / 1 + 1 / 2) / 3)  # classes d-g have no images
    assert m["acc_scale2"] == pytest.approx(2 / 7)
    assert m["top5_acc_scale2"] == 1.0
    assert m["mean_class_acc_scale2"] == pytest.approx((0 + 0 + 1) / 3)
    # fused12 gives image i scale 1's row 6 - i: right on images 1 and 4; the label is in the top 5
    # everywhere but on image 3 (last)
    assert m["acc_fused12"] == pytest.approx(2 / 7)
    assert m["top5_acc_fused12"] == pytest.approx(6 / 7)
    assert m["mean_class_acc_fused12"] == pytest.approx((1 / 4 + 1 + 0) / 3)
    table = format_table(m)
    assert "| head | top-1 accuracy (%) | top-5 accuracy (%) | mean per-class accuracy (%) |" in table
    assert "| scale 1 | 42.86 | 71.43 | 58.33 |" in table and "| scale 2 | 28.57 | 100.00 | 33.33 |" in table
    assert "| fused 1+2 | 28.57 | 85.71 | 41.67 |" in table
    json.dumps(m, allow_nan=False)


def test_top5_with_ties_and_with_fewer_than_five_classes():
    from raccnn.engine.evaluate import top_k_accuracy

    # equal logits rank classes by index, as argmax does: classes 0-4 are the top 5
    assert top_k_accuracy(torch.zeros(2, 7), torch.tensor([4, 5]), 5) == 0.5
    m = compute_metrics(hand_outputs(), CLASSES, PART_NAMES, ["beak", "crown"])  # 3 classes
    assert m["top5_k"] == 3
    assert all(m[f"top5_acc_{h}"] == 1.0 for h in m["heads"])
    assert m["mean_class_acc_scale3"] == pytest.approx(1 / 3)
    table = format_table(m)
    assert "top-3 accuracy (%)" in table and "fewer than 5: top-3 counts every image" in table
