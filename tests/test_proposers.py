import pytest
import torch

from raccnn.models import RACNN
from raccnn.models.boxes import clamp_squares, part_squares
from raccnn.models.proposers import CenterProposer, HeatmapProposer


def test_center_proposer_is_the_centred_square():
    boxes = CenterProposer(tl=0.3)(torch.zeros(4, 8, 5, 5))
    torch.testing.assert_close(boxes, torch.tensor([[0.5, 0.5, 0.3]]).expand(4, 3))


def test_heatmap_proposer_boxes_the_largest_hot_component():
    feats = torch.zeros(2, 3, 8, 8)
    feats[0, 1, 1:3, 5:8] = 5.0  # a 2x3 hot region (rows 1-2, columns 5-7)
    feats[0, 2, 6, 0] = -4.9  # |activation| counts: a single hot pixel, smaller component
    feats[1, 0, 4:8, 0:4] = 1.0  # image 1: a 4x4 block in the bottom-left corner
    boxes = HeatmapProposer(threshold=0.7, tl_min=0.05, tl_max=0.5)(feats)
    # image 0: columns 5..7 -> x in [5/8, 1], rows 1..2 -> y in [1/8, 3/8]; half side = 3/16
    torch.testing.assert_close(boxes[0], torch.tensor([13 / 16, 1 / 4, 3 / 16]).clamp(max=1 - 3 / 16))
    torch.testing.assert_close(boxes[1], torch.tensor([0.25, 0.75, 0.25]))


def test_clamp_squares_keeps_inside_and_bounds():
    out = clamp_squares(torch.tensor([[0.05, 0.98, 0.01], [0.5, 0.5, 0.9]]), 0.1, 0.5)
    torch.testing.assert_close(out, torch.tensor([[0.1, 0.9, 0.1], [0.5, 0.5, 0.5]]))


def test_part_squares_and_missing_boxes():
    pb = torch.tensor([[[10.0, 20.0, 30.0, 30.0]], [[float("nan")] * 4]])  # [B, P=1, 4] xyxy
    sq = part_squares(pb, 0, 100, 100, margin=1.0)
    torch.testing.assert_close(sq, torch.tensor([[0.2, 0.25, 0.1], [0.5, 0.5, 0.5]]))


def test_oracle_racnn_crops_the_part():
    model = RACNN(3, backbone="vgg_small", width=4, n_scales=3, input_sizes=[32, 32, 32],
                  apn=dict(tl_min=0.05, tl_max=0.5), proposer="oracle", proposer_cfg={"oracle_margin": 1.0},
                  oracle_part=1)
    images = torch.rand(2, 3, 64, 64)
    part_boxes = torch.zeros(2, 2, 4)
    part_boxes[:, 1] = torch.tensor([16.0, 16.0, 32.0, 32.0])
    out = model(images, part_boxes=part_boxes)
    torch.testing.assert_close(out.abs_boxes[0], torch.tensor([[0.375, 0.375, 0.125]]).expand(2, 3))
    torch.testing.assert_close(out.abs_boxes[1], out.abs_boxes[0])  # deeper scales keep the view
    with pytest.raises(RuntimeError, match="part_boxes"):
        model(images)


@pytest.mark.parametrize("proposer", ["center", "heatmap"])
def test_fixed_proposers_have_no_parameters_and_build_no_apn_phases(proposer):
    from raccnn.config import load_config
    from raccnn.engine.phases import build_plan

    model = RACNN(3, backbone="vgg_small", width=4, input_sizes=[32, 32, 32], proposer=proposer)
    assert list(model.proposers.parameters()) == []
    cfg = load_config("experiments/configs/fgsynth_default.yaml", [f"model.proposer={proposer}"])
    names = [p.name for p in build_plan(cfg)]
    assert "init_apn" not in names and "alternate_apn" not in names and "alternate_cls" in names


def test_part_squares_on_a_non_square_image_with_a_margin():
    """Box x 20-60, y 10-30 in a 50-high, 200-wide image: centre (40 / 200, 20 / 50) = (0.2, 0.4);
    the longer side, 40 px, is 0.2 of the width; half of it times margin 1.1 is 0.22."""
    squares = part_squares(torch.tensor([[[20.0, 10.0, 60.0, 30.0]]]), 0, 50, 200, margin=1.1)
    torch.testing.assert_close(squares, torch.tensor([[0.2, 0.4, 0.22]]))
