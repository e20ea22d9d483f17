"""Crop panels, fixed image batches and the TensorBoard helpers of raccnn.engine.visualize."""
import pytest
import torch

from raccnn.config import load_config
from raccnn.data.build import build_datasets
from raccnn.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from raccnn.engine import visualize as V
from raccnn.models.proposers import part_index
from raccnn.models.racnn import RACNN, RACNNOutput, compose_boxes

SIZE = 64  # images and crops of the synthetic panels below
PAD = 2  # make_grid's padding
BLACK = torch.tensor([0, 0, 0], dtype=torch.uint8)


def normalized_black(batch: int, size: int = SIZE) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((torch.zeros(batch, 3, size, size) - mean) / std)


def fake_output(rel_boxes: list[torch.Tensor]) -> RACNNOutput:
    """An output with black crops and the given APN squares (one image)."""
    n_scales = len(rel_boxes) + 1
    abs_boxes, parent = [], torch.tensor([[0.5, 0.5, 0.5]])
    for rel in rel_boxes:
        parent = compose_boxes(parent, rel)
        abs_boxes.append(parent)
    crops = [normalized_black(1) for _ in range(n_scales)]
    empty = [torch.zeros(1, 3)] * n_scales
    return RACNNOutput(empty, empty, empty, rel_boxes, abs_boxes, {}, crops)


def pixel(panel: torch.Tensor, tile: int, y: int, x: int) -> torch.Tensor:
    """RGB of pixel (y, x) of tile ``tile`` in the first row of a panel of SIZE x SIZE tiles."""
    return panel[:, PAD + y, PAD + tile * (SIZE + PAD) + x]


def colour(name: str) -> torch.Tensor:
    return torch.tensor(V.BOX_COLOURS[name], dtype=torch.uint8)


def test_denormalize_inverts_the_normalisation():
    raw = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    back = V.denormalize((raw / 255.0 - mean) / std)
    assert back.dtype == torch.uint8 and torch.equal(back, raw)


def test_square_to_xyxy():
    xyxy = V.square_to_xyxy(torch.tensor([[0.5, 0.25, 0.25]]), 40, 80)
    torch.testing.assert_close(xyxy, torch.tensor([[20.0, 0.0, 60.0, 20.0]]))


def test_boxes_are_drawn_in_their_colours_where_they_belong():
    out = fake_output([torch.tensor([[0.5, 0.5, 0.25]]), torch.tensor([[0.5, 0.5, 0.25]])])
    # scale 2: pixels 16..48 of the input; scale 3 (a quarter of scale 2's view): pixels 24..40
    parts = torch.tensor([[[4.0, 50.0, 12.0, 60.0], [50.0, 4.0, 60.0, 12.0], [float("nan")] * 4]])
    objects = torch.tensor([[2.0, 2.0, 61.0, 61.0]])
    panel = V.crop_panel(normalized_black(1), out, part_boxes=parts, object_boxes=objects, hit_part_index=0)

    assert panel.dtype == torch.uint8
    assert panel.shape == (3, SIZE + 2 * PAD, 3 * SIZE + 4 * PAD)
    # tile 0: the input with every box
    assert torch.equal(pixel(panel, 0, 32, 16), colour("scale2"))  # left edge of the scale-2 square
    assert torch.equal(pixel(panel, 0, 48, 32), colour("scale2"))  # its bottom edge
    assert torch.equal(pixel(panel, 0, 32, 24), colour("scale3"))  # left edge of the scale-3 square
    assert torch.equal(pixel(panel, 0, 24, 32), colour("scale3"))  # its top edge
    assert torch.equal(pixel(panel, 0, 55, 4), colour("part"))  # the chosen part box
    assert torch.equal(pixel(panel, 0, 8, 50), BLACK)  # the other part is not drawn
    assert torch.equal(pixel(panel, 0, 32, 2), colour("object"))
    assert torch.equal(pixel(panel, 0, 32, 32), BLACK)  # inside the squares
    # tile 1: scale-2 crop, with the scale-3 square in its own coordinates (16..48)
    assert torch.equal(pixel(panel, 1, 32, 16), colour("scale3"))
    assert torch.equal(pixel(panel, 1, 16, 32), colour("scale3"))
    assert torch.equal(pixel(panel, 1, 32, 32), BLACK)
    assert not (pixel(panel, 1, 32, 16) == colour("scale2")).all()
    # tile 2: the scale-3 crop, nothing drawn
    x0 = PAD + 2 * (SIZE + PAD)
    assert (panel[:, PAD : PAD + SIZE, x0 : x0 + SIZE] == 0).all()
    # grid padding
    assert (panel[:, 0, :] == 255).all()


def test_without_hit_part_index_every_known_part_is_drawn():
    out = fake_output([torch.tensor([[0.5, 0.5, 0.25]])])
    parts = torch.tensor([[[4.0, 50.0, 12.0, 60.0], [50.0, 4.0, 60.0, 12.0], [float("nan")] * 4]])
    panel = V.crop_panel(normalized_black(1), out, part_boxes=parts)
    assert panel.shape == (3, SIZE + 2 * PAD, 2 * SIZE + 3 * PAD)
    assert torch.equal(pixel(panel, 0, 55, 4), colour("part"))
    assert torch.equal(pixel(panel, 0, 8, 50), colour("part"))


@pytest.mark.parametrize("n_scales", [2, 3])
def test_panel_of_a_real_model(n_scales):
    torch.manual_seed(0)
    model = RACNN(num_classes=3, width=4, n_scales=n_scales, input_sizes=[32] * n_scales,
                  apn=dict(hidden=16, pool_size=2)).eval()
    images = torch.randn(3, 3, 48, 40)  # not square: tiles are padded to a common width
    with torch.no_grad():
        out = model(images, return_crops=True)
    panel = V.crop_panel(images, out, object_boxes=torch.tensor([[1.0, 1.0, 30.0, 40.0]] * 3))
    assert panel.shape == (3, 3 * (48 + PAD) + PAD, n_scales * (48 + PAD) + PAD)
    assert panel.dtype == torch.uint8
    assert (panel == torch.tensor(V.BOX_COLOURS["scale2"]).view(3, 1, 1)).all(0).any()
    with pytest.raises(ValueError, match="return_crops"):
        V.crop_panel(images, model(images))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("fgsynth")
    cfg = load_config("experiments/configs/fgsynth_default.yaml", [
        "data.synth.classes=3", "data.synth.images_per_class=16", "data.synth.size=96", "data.resize=96",
        "data.crop=80", "data.val_fraction=0.25", f"data.root={root}", "data.synth.check=false",
    ])
    return build_datasets(cfg, splits=("train", "val"))


def test_fixed_images_are_the_same_every_call(tiny_data):
    val = tiny_data["val"]
    a, b = V.fixed_images(val, n=4), V.fixed_images(val, n=4)
    assert a["image"].shape == (4, 3, 80, 80)
    assert a["part_boxes"].shape[:2] == (4, len(val.part_names)) and a["box"].shape == (4, 4)
    assert a["index"].tolist() == [i * len(val) // 4 for i in range(4)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["index"], b["index"])
    # a random (training) transform is run under a fixed seed
    train = tiny_data["train"]
    assert torch.equal(V.fixed_images(train, n=3)["image"], V.fixed_images(train, n=3)["image"])
    assert len(V.fixed_images(val, n=1000)["index"]) == len(val)
    assert part_index(val.part_names, ["crest"]) == val.part_names.index("crest")
    assert part_index(val.part_names, ["nothing"]) is None


def test_tag_lists():
    scalars = V.scalar_tags(3)
    for tag in ("train/ce_scale1", "train/ce_scale3", "train/rank", "train/lr", "val/acc_scale2",
                "val/acc_fused12", "val/acc_fused123", "schedule/phase_index", "schedule/round",
                "apn1/tl_mean", "apn2/tl_mean", "train/rank_active_2_3", "val/rank_active_1_2", "apn2/dtl"):
        assert tag in scalars
    assert "apn3/tl_mean" not in scalars and "val/acc_fused1234" not in scalars and "val/rank_active_3_4" not in scalars
    assert len(set(scalars)) == len(scalars)
    assert V.histogram_tags(2) == ["apn1/tx", "apn1/ty", "apn1/tl"]
    assert V.crops_tag("alternate_apn[round 2]") == "crops/alternate_apn_round_2"
    assert V.crops_tag("fusion") == "crops/fusion"


def test_tensorboard_round_trip(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    torch.manual_seed(0)
    model = RACNN(num_classes=3, width=4, n_scales=3, input_sizes=[32] * 3, apn=dict(hidden=16, pool_size=2))
    batch = {"image": torch.randn(2, 3, 48, 48), "box": torch.tensor([[1.0, 1.0, 30.0, 40.0]] * 2)}
    with torch.no_grad():
        out = model(batch["image"])
    writer = SummaryWriter(str(tmp_path))
    V.log_box_histograms(writer, out.boxes, step=5)
    V.log_phase_crops(writer, model, batch, "alternate_cls[round 1]", step=5)
    writer.close()
    assert model.training  # mode restored

    events = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    assert set(V.histogram_tags(3)) <= set(tags["histograms"])
    hist = events.Histograms("apn1/tl")[0]
    assert hist.step == 5 and hist.histogram_value.num == 2
    assert tags["images"] == ["crops/alternate_cls_round_1"]
    image = events.Images("crops/alternate_cls_round_1")[0]
    assert (image.height, image.width) == (2 * (48 + PAD) + PAD, 3 * (48 + PAD) + PAD)
