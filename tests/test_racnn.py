import pytest
import torch

from raccnn.losses import rank_loss, scale_ce_losses
from raccnn.models import RACNN, build_backbone, compose_boxes
from raccnn.models.boxes import clamp_squares
from raccnn.models.backbones import PretrainedWeightsError, torchvision_cache_file


def tiny(n_scales=3, **kw):
    sizes = [32] + [24] * (n_scales - 1)
    return RACNN(num_classes=5, backbone="vgg_small", width=4, n_scales=n_scales, input_sizes=sizes,
                 apn=dict(hidden=16, pool_size=1), **kw)


@pytest.mark.parametrize("n_scales", [1, 2, 3])
def test_shapes(n_scales):
    torch.manual_seed(0)
    model = tiny(n_scales)
    out = model(torch.randn(2, 3, 48, 48), return_crops=True)
    assert len(out.logits) == len(out.features) == len(out.maps) == n_scales
    assert all(l.shape == (2, 5) for l in out.logits)
    assert all(f.shape == (2, 32) for f in out.features)
    assert len(out.boxes) == len(out.abs_boxes) == n_scales - 1
    assert all(b.shape == (2, 3) for b in out.boxes)
    assert [c.shape[-1] for c in out.crops] == model.input_sizes
    expected_fusions = {1: [], 2: ["12"], 3: ["12", "123"]}[n_scales]
    assert sorted(out.fused) == expected_fusions
    assert all(out.fused[name].shape == (2, 5) for name in expected_fusions)


def test_scales_start_from_same_initialisation_but_are_separate_copies():
    model = tiny(3)
    s0, s1 = model.scales[0].backbone.state_dict(), model.scales[1].backbone.state_dict()
    assert all(torch.equal(s0[k], s1[k]) for k in s0)
    assert model.scales[0].backbone.features[0].weight is not model.scales[1].backbone.features[0].weight


def test_compose_boxes():
    parent = torch.tensor([[0.5, 0.5, 0.25]])  # pixels 0.25..0.75
    child = torch.tensor([[0.25, 0.75, 0.1]])
    torch.testing.assert_close(compose_boxes(parent, child), torch.tensor([[0.375, 0.625, 0.05]]))


def test_given_boxes_crop_from_full_resolution_input():
    model = tiny(2)
    images = torch.arange(48 * 48, dtype=torch.float32).reshape(1, 1, 48, 48).expand(1, 3, 48, 48).contiguous()
    box = torch.tensor([[0.5, 0.5, 0.25]])  # the central 24x24 pixels at full resolution
    out = model(images, boxes=[box], return_crops=True)
    torch.testing.assert_close(out.abs_boxes[0], box)
    inner = out.crops[1][0, 0, 2:-2, 2:-2]  # away from the mask's soft edge
    torch.testing.assert_close(inner, images[0, 0, 14:34, 14:34])


def test_a_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = tiny(3)
    images = torch.randn(16, 3, 48, 48)
    target = torch.arange(16) % 5
    images[torch.arange(16), target % 3] += 1.5  # a learnable colour cue
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss_fn():
        out = model(images)
        return sum(scale_ce_losses(out.logits, target)) + rank_loss(out.logits, target)

    first = loss_fn().item()
    for _ in range(15):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss_fn().item() < 0.7 * first


def test_apn_receives_gradient_from_finer_scale():
    torch.manual_seed(0)
    model = tiny(3)
    out = model(torch.randn(4, 3, 48, 48))
    rank_loss(out.logits, torch.tensor([0, 1, 2, 3])).backward()
    assert model.proposers[0].fc2.weight.grad.abs().sum() > 0
    assert model.proposers[1].fc2.weight.grad.abs().sum() > 0


def test_vgg_trunk_keeps_torchvision_keys_and_loads_weights(tmp_path):
    import torchvision

    ref = torchvision.models.vgg11(weights=None)
    path = tmp_path / "vgg11.pth"
    torch.save(ref.state_dict(), path)
    trunk = build_backbone("vgg11", pretrained=str(path))
    assert set(trunk.state_dict()) == {k for k in ref.state_dict() if k.startswith("features.")}
    torch.testing.assert_close(trunk.features[0].weight, ref.features[0].weight)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(trunk(x), ref.features[:-1](x))  # conv5 output, before pool5
    assert trunk(x).shape == (1, 512, 4, 4)


def test_missing_weights_say_which_file_to_put_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(PretrainedWeightsError) as err:
        build_backbone("vgg19", pretrained=True)
    msg = str(err.value)
    assert str(torchvision_cache_file("vgg19")) in msg and "vgg19-dcbb9e9d.pth" in msg
    with pytest.raises(PretrainedWeightsError, match="no such file"):
        build_backbone("vgg16_bn", pretrained=str(tmp_path / "nope.pth"))
    with pytest.raises(ValueError, match="unknown backbone 'vgg20'"):
        build_backbone("vgg20")


def test_timm_backbone():
    trunk = build_backbone("timm:resnet18")
    fmap = trunk(torch.randn(1, 3, 64, 64))
    assert fmap.shape == (1, trunk.out_channels, 2, 2)


def test_compose_boxes_with_an_off_centre_parent():
    """Parent (0.3, 0.6) half side 0.2 spans x 0.1-0.5, y 0.4-0.8; the child's (0.25, 0.75, 0.5)
    is x 0.1 + 0.25 * 0.4 = 0.2, y 0.4 + 0.75 * 0.4 = 0.7, half side 0.5 * 0.4 = 0.2."""
    torch.testing.assert_close(compose_boxes(torch.tensor([[0.3, 0.6, 0.2]]), torch.tensor([[0.25, 0.75, 0.5]])),
                               torch.tensor([[0.2, 0.7, 0.2]]))


def test_weights_saved_under_the_former_name_apns_load_into_the_proposers():
    torch.manual_seed(0)
    trained, fresh = tiny(3), tiny(3)
    with torch.no_grad():
        trained.proposers[1].fc2.bias.add_(0.3)
    former = {k.replace("proposers.", "apns.", 1): v for k, v in trained.state_dict().items()}
    assert any(k.startswith("apns.") for k in former) and not any(k.startswith("proposers.") for k in former)
    fresh.load_state_dict(former)  # strict: every key found under the new name
    assert torch.equal(fresh.proposers[1].fc2.bias, trained.proposers[1].fc2.bias)
    assert fresh.apns is fresh.proposers  # the former attribute name still reads them


def test_box_jitter_adds_its_noise_to_the_squares_within_the_bounds_and_only_past_scale_1():
    torch.manual_seed(0)
    model = tiny(3).eval()  # eval: no dropout, so the jitter's draws are the only random numbers
    images = torch.randn(256, 3, 48, 48)
    plain = model(images, detach_boxes=True)
    torch.manual_seed(1)
    jittered = model(images, detach_boxes=True, box_jitter=0.05)
    torch.manual_seed(1)
    noise = torch.randn(256, 3)  # the first of the two draws: APN 1's
    apn = model.proposers[0]
    expected = clamp_squares(plain.boxes[0] + 0.05 * noise, apn.tl_min, apn.tl_max, apn.keep_inside)
    torch.testing.assert_close(jittered.boxes[0], expected)
    moved = jittered.boxes[0] - plain.boxes[0]
    assert 0.04 < moved[:, 0].std() < 0.06 and moved[:, 0].mean().abs() < 0.01
    for squares, p in zip(jittered.boxes, model.proposers):
        tx, ty, tl = squares.unbind(1)
        assert (tl >= p.tl_min).all() and (tl <= p.tl_max).all()
        assert (tx >= tl - 1e-6).all() and (tx <= 1 - tl + 1e-6).all() and (ty >= tl - 1e-6).all()
    assert torch.equal(jittered.logits[0], plain.logits[0])  # scale 1 sees the whole image either way
    assert not torch.allclose(jittered.logits[1], plain.logits[1])
    with pytest.raises(ValueError, match="detach_boxes"):
        model(images[:2], box_jitter=0.05)  # the APN phases' squares must stay the APN's own


def test_alternate_cls_trains_the_scales_on_jittered_squares_and_never_the_apns():
    from raccnn.config import load_config
    from raccnn.engine.phases import AlternateCls
    from raccnn.models.racnn import build_racnn
    cfg = load_config("experiments/configs/fgsynth_default.yaml",
                      ["model.width=4", "model.input_sizes=[32,32,32]", "model.apn.hidden=16",
                       "train.alternate.cls.box_jitter=0.1"])
    torch.manual_seed(0)
    model = build_racnn(cfg, num_classes=5).eval()
    images, target = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    torch.manual_seed(2)
    loss, _ = AlternateCls(cfg, 0).loss(model, images, target, None)
    torch.manual_seed(2)
    out = model(images, detach_boxes=True, box_jitter=0.1)
    torch.testing.assert_close(loss, sum(scale_ce_losses(out.logits, target)))
    loss.backward()
    assert all(p.grad is None for p in model.proposers.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.scales[1].classifier.parameters())
