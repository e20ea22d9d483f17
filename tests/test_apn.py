import pytest
import torch

from raccnn.models import APN


@pytest.mark.parametrize("keep_inside", [True, False])
@pytest.mark.parametrize("bounds", [(0.1, 0.5), (0.05, 0.2), (0.3, 0.3)])
def test_extreme_inputs_stay_in_bounds(keep_inside, bounds):
    torch.manual_seed(0)
    apn = APN(8, hidden=16, pool_size=2, tl_min=bounds[0], tl_max=bounds[1], keep_inside=keep_inside)
    with torch.no_grad():  # large random weights so the sigmoid saturates in both directions
        for p in apn.parameters():
            p.normal_(0, 50.0)
    feats = torch.cat([torch.randn(64, 8, 5, 5) * 1e6, torch.zeros(1, 8, 5, 5), torch.full((1, 8, 5, 5), -1e9)])
    with torch.no_grad():
        boxes = apn(feats)
    assert torch.isfinite(boxes).all()
    tl = boxes[:, 2]
    assert (tl >= bounds[0]).all() and (tl <= bounds[1]).all()
    # saturation reaches both bounds, so these checks are not vacuous
    assert tl.min().item() == pytest.approx(bounds[0]) and tl.max().item() == pytest.approx(bounds[1])
    if keep_inside:
        assert (boxes[:, 0] - tl >= 0).all() and (boxes[:, 0] + tl <= 1).all()
        assert (boxes[:, 1] - tl >= 0).all() and (boxes[:, 1] + tl <= 1).all()
    else:
        assert ((boxes[:, :2] >= 0) & (boxes[:, :2] <= 1)).all()


def test_initial_box_is_centred_and_from_box_inverts_to_box():
    apn = APN(4, hidden=8, pool_size=2, tl_min=0.1, tl_max=0.5)
    box = apn(torch.randn(3, 4, 6, 6))
    torch.testing.assert_close(box, torch.tensor([[0.5, 0.5, 0.3]]).expand(3, 3))
    target = torch.tensor([[0.3, 0.7, 0.2], [0.5, 0.5, 0.45], [0.8, 0.2, 0.15]])
    torch.testing.assert_close(apn.to_box(apn.from_box(target)), target)


def test_invalid_bounds_rejected():
    with pytest.raises(ValueError, match="tl_min"):
        APN(4, tl_min=0.3, tl_max=0.2)
    with pytest.raises(ValueError, match="tl_max"):
        APN(4, tl_min=0.1, tl_max=0.6)


def test_apn_learns_to_point_at_the_bright_cell():
    """A few gradient steps through the box are enough to track a bright feature."""
    torch.manual_seed(0)
    apn = APN(1, hidden=32, pool_size=4, tl_min=0.1, tl_max=0.5)
    opt = torch.optim.Adam(apn.parameters(), lr=1e-2)
    cells = torch.randint(0, 4, (256, 2))
    feats = torch.zeros(256, 1, 4, 4)
    feats[torch.arange(256), 0, cells[:, 0], cells[:, 1]] = 1.0
    target = torch.stack(((cells[:, 1] + 0.5) / 4, (cells[:, 0] + 0.5) / 4), dim=1).clamp(0.2, 0.8)
    for _ in range(300):
        loss = (apn(feats)[:, :2] - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 1e-3


def test_init_loss_clips_targets_the_apn_cannot_reach_into_its_bounds():
    """A peak in the corner pixel of a 4x4 map (centre 0.125) with tl 0.45, bounds [0.1, 0.3] and
    keep_inside: the reachable target is tl 0.3 centred at (0.3, 0.3); from the centred start
    (0.5, 0.5, 0.2) the mean squared error is (0.2² + 0.2² + 0.1²) / 3 = 0.03."""
    apn = APN(1, hidden=4, pool_size=1, tl_min=0.1, tl_max=0.3)
    fmap = torch.zeros(1, 1, 4, 4)
    fmap[0, 0, 0, 0] = 1.0
    assert apn.init_loss(fmap, 0.45).item() == pytest.approx((2 * 0.2 ** 2 + 0.1 ** 2) / 3, abs=1e-4)


def test_class_activation_map_peaks_where_the_true_class_is_spoken_for_not_where_features_are_strongest():
    from raccnn.models.apn import peak_targets
    from raccnn.engine.phases import class_activation_map
    fmap = torch.zeros(2, 2, 2, 2)
    fmap[:, 0, 0, 0] = 5.0  # a strong, class-blind response top left
    fmap[:, 1, 1, 1] = 1.0  # a weak one bottom right
    classifier = torch.nn.Linear(2, 2)
    with torch.no_grad():
        classifier.weight.copy_(torch.tensor([[0.0, 2.0], [1.0, -1.0]]))  # class 0 reads channel 1, class 1 channel 0
    cam = class_activation_map(fmap, classifier, torch.tensor([0, 1]))
    expected = torch.tensor([[[[0.0, 0.0], [0.0, 2.0]]], [[[5.0, 0.0], [0.0, -1.0]]]])
    torch.testing.assert_close(cam, expected)
    torch.testing.assert_close(peak_targets(cam, 0.25), torch.tensor([[0.75, 0.75, 0.25], [0.25, 0.25, 0.25]]))
    torch.testing.assert_close(peak_targets(fmap, 0.25), torch.tensor([[0.25, 0.25, 0.25], [0.25, 0.25, 0.25]]))


@pytest.mark.parametrize("target", ["response", "class"])
def test_init_apn_regresses_each_apn_onto_the_chosen_peak(target):
    from raccnn.config import load_config
    from raccnn.engine.phases import InitAPN, class_activation_map
    from raccnn.models.racnn import build_racnn
    cfg = load_config("experiments/configs/fgsynth_default.yaml",
                      ["model.width=4", "model.input_sizes=[32,32,32]", "model.apn.hidden=16", f"train.init_apn.target={target}"])
    torch.manual_seed(0)
    model = build_racnn(cfg, num_classes=5).eval()
    images, labels = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    loss, _ = InitAPN(cfg).loss(model, images, labels, None)
    with torch.no_grad():
        out = model(images)
    expected = 0
    for s, apn in enumerate(model.proposers):
        peak = class_activation_map(out.maps[s], model.scales[s].classifier, labels) if target == "class" else out.maps[s]
        expected = expected + apn.init_loss(out.maps[s], 0.25, peak)
    torch.testing.assert_close(loss, expected)
    response = sum(apn.init_loss(out.maps[s], 0.25) for s, apn in enumerate(model.proposers))
    assert torch.isclose(loss, response) == (target == "response")  # the class's peaks are elsewhere here
    loss.backward()
    assert all(p.grad is None for p in model.scales.parameters())
    assert model.proposers[0].fc2.weight.grad.abs().sum() > 0
