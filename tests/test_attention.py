import math
from unittest.mock import patch

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vgg import cfgs as tv_vgg_plans
from torchvision.models.vgg import make_layers as tv_make_vgg_layers

from raccnn.attention import ATTENTION_TYPES, build_attention, insert_attention
from raccnn.attention.danet import channel_affinity
from raccnn.attention.eca import eca_kernel_size
from raccnn.attention.placement import ReLUThenAttention, replace_convs, stage_ends
from raccnn.attention import sasa
from raccnn.attention.sasa import SASAConv, local_attention
from raccnn.config import SCHEMA, resolve_config
from raccnn.errors import ConfigError
from raccnn.models import RACNN, build_backbone, build_racnn

C = 32


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: one thread avoids thread contention on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

BLOCKS = [name for name in ATTENTION_TYPES if name != "none"]

# Parameters that receive a non-zero gradient at init with identity_init=True (the zeroed last
# layer, or the blending scalar), as each block's docstring states.
TRAINABLE_AT_INIT = {
    "se": ["fc2.weight", "fc2.bias"],
    "cbam": ["channel.fc2.weight", "channel.fc2.bias", "spatial.conv.bn.weight", "spatial.conv.bn.bias"],
    "nonlocal": ["bn.weight", "bn.bias"],
    "ge": ["gamma"],
    "ge_theta": ["gather.7.weight", "gather.7.bias"],  # last BatchNorm of the 3 gather steps (extent 8)
    "eca": ["conv.weight"],
    "gc": ["mlp_add.fc2.weight", "mlp_add.fc2.bias"],
    "danet": ["position.value.weight", "position.value.bias", "beta"],
    "sagan": ["v.weight"],
    "bam": ["channel.3.weight", "channel.3.bias", "spatial.9.weight", "spatial.9.bias"],
    "parsenet": ["proj.weight", "proj.bias"],
    "sasa": ["out.weight"],
}
# Blocks whose paper already initialises them to the identity (a zero last layer or zero
# residual scale): identity_init=False, which keeps the paper's init, is the identity too.
PAPER_INIT_IS_IDENTITY = {"nonlocal", "gc", "danet", "sagan"}


def test_config_choices_are_the_factory_names():
    assert SCHEMA["model"]["attention"]["type"].choices is ATTENTION_TYPES
    assert set(TRAINABLE_AT_INIT) == set(BLOCKS)


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="valid types: none, se, cbam"):
        build_attention("sex", C)
    with pytest.raises(ValueError, match="bad keyword"):
        build_attention("se", C, nonsense=1)


@pytest.mark.parametrize("name", ATTENTION_TYPES)
def test_shape_preserved(name):
    torch.manual_seed(0)
    for identity_init in (True, False):
        block = build_attention(name, C, identity_init=identity_init)
        for hw in ((8, 8), (7, 9), (1, 1)):
            x = torch.randn(2, C, *hw)
            assert block(x).shape == x.shape, (identity_init, hw)


@pytest.mark.parametrize("name", ATTENTION_TYPES)
def test_identity_at_init(name):
    torch.manual_seed(0)
    block = build_attention(name, C)
    x = torch.randn(2, C, 7, 9) * 3
    assert (block(x) - x).abs().max() == 0
    block.eval()
    assert (block(x) - x).abs().max() == 0


@pytest.mark.parametrize("name", BLOCKS)
def test_last_layer_gets_gradient_at_init(name):
    torch.manual_seed(0)
    block = build_attention(name, C)
    x = torch.randn(2, C, 7, 9, requires_grad=True)
    (block(x) * torch.randn(2, C, 7, 9)).sum().backward()
    params = dict(block.named_parameters())
    for pname in TRAINABLE_AT_INIT[name]:
        assert params[pname].grad is not None and params[pname].grad.abs().max() > 0, pname
    assert x.grad.abs().max() > 0


@pytest.mark.parametrize("name", BLOCKS)
def test_paper_init(name):
    torch.manual_seed(0)
    block = build_attention(name, C, identity_init=False)
    x = torch.randn(2, C, 7, 9)
    diff = (block(x) - x).abs().max()
    if name in PAPER_INIT_IS_IDENTITY:
        assert diff == 0
    else:
        assert diff > 1e-3


# ---------------------------------------------------------------- hand-checked equations


def test_se_gate_by_hand():
    block = build_attention("se", 4, reduction=2, identity_init=False)
    with torch.no_grad():
        block.fc1.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1]]).view(2, 4, 1, 1))
        block.fc1.bias.zero_()
        block.fc2.weight.copy_(torch.tensor([[1.0, 0], [0, 1], [1, 1], [0, -1]]).view(4, 2, 1, 1))
        block.fc2.bias.copy_(torch.tensor([0.0, 0, 0, 1]))
    x = torch.tensor([1.0, 2, 3, -4]).view(1, 4, 1, 1).expand(1, 4, 3, 3)
    # hidden = relu([1, -4]) = [1, 0]; logits = [1, 0, 1, 1]
    expected = torch.tensor([1 / (1 + math.exp(-1)), 0.5, 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(-1))])
    torch.testing.assert_close(block(x) / x, expected.view(1, 4, 1, 1).expand(1, 4, 3, 3))


def test_cbam_spatial_map_by_hand():
    block = build_attention("cbam", 3, reduction=3, identity_init=False).eval()
    spatial = block.spatial
    with torch.no_grad():
        spatial.conv.conv.weight.zero_()
        spatial.conv.conv.weight[0, 0, 3, 3] = 1.0  # centre tap on the channel mean
        spatial.conv.conv.weight[0, 1, 3, 3] = 2.0  # centre tap on the channel max
    x = torch.tensor([[1.0, -2.0], [0.0, 3.0], [2.0, -1.0]]).view(1, 3, 1, 2)
    # column 0: mean 1, max 2 -> 5; column 1: mean 0, max 3 -> 6; BN eval: / sqrt(1 + 1e-5)
    z = torch.tensor([5.0, 6.0]) / math.sqrt(1 + 1e-5)
    torch.testing.assert_close(spatial(x), x * torch.sigmoid(z).view(1, 1, 1, 2))


@pytest.mark.parametrize("identity_init", [False, True])
def test_cbam_is_the_papers_equations(identity_init):
    """timm's CbamModule, as built, against CBAM written out: channel map with a shared biased MLP
    over the average- and max-pooled descriptors, then a bias-free 7x7 conv + BN spatial map."""
    torch.manual_seed(0)
    block = build_attention("cbam", 32, reduction=4, identity_init=identity_init).eval()
    with torch.no_grad():  # random values everywhere, also where identity_init put zeros
        for p in block.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        bn = block.spatial.conv.bn
        bn.running_mean.fill_(0.2)
        bn.running_var.fill_(1.7)
    g = (lambda z: 2 * torch.sigmoid(z)) if identity_init else torch.sigmoid
    x = torch.randn(2, 32, 9, 7)
    c = block.channel
    mlp = lambda v: c.fc2.weight[:, :, 0, 0] @ torch.relu(c.fc1.weight[:, :, 0, 0] @ v + c.fc1.bias) + c.fc2.bias
    mc = torch.stack([g(mlp(xb.mean((1, 2))) + mlp(xb.amax((1, 2)))) for xb in x])  # [B, C]
    assert c.fc1.bias is not None and c.fc1.weight.shape[0] == 8  # MLP biases on, hidden C / r
    x1 = x * mc[:, :, None, None]
    conv = block.spatial.conv.conv
    assert conv.bias is None and conv.kernel_size == (7, 7)
    z = F.conv2d(torch.cat((x1.mean(1, keepdim=True), x1.amax(1, keepdim=True)), 1), conv.weight, padding=3)
    z = (z - 0.2) / math.sqrt(1.7 + bn.eps) * bn.weight + bn.bias
    torch.testing.assert_close(block(x), x1 * g(z), rtol=1e-5, atol=1e-5)


def test_nonlocal_softmax_by_hand():
    block = build_attention("nonlocal", 2, sub_sample=False, identity_init=False)
    with torch.no_grad():
        block.theta.weight.copy_(torch.tensor([[1.0, 0.0]]).view(1, 2, 1, 1))
        block.phi.weight.copy_(torch.tensor([[0.0, 1.0]]).view(1, 2, 1, 1))
        block.theta.bias.zero_()
        block.phi.bias.zero_()
    x = torch.tensor([[1.0, 2.0], [0.0, 1.0]]).view(1, 2, 1, 2)  # θ = [1, 2], φ = [0, 1]
    e = math.e
    expected = torch.tensor([[1 / (1 + e), e / (1 + e)], [1 / (1 + e**2), e**2 / (1 + e**2)]])
    torch.testing.assert_close(block.affinity(x), expected.unsqueeze(0))


def test_nonlocal_inner_width_and_subsampling():
    block = build_attention("nonlocal", 16)
    assert block.theta.out_channels == block.phi.out_channels == block.g.out_channels == 8
    f = block.affinity(torch.randn(2, 16, 7, 9))
    assert f.shape == (2, 63, 4 * 5)  # φ max-pooled 2x2 (ceil mode)
    torch.testing.assert_close(f.sum(-1), torch.ones(2, 63))
    assert build_attention("nonlocal", 16, sub_sample=False).affinity(torch.randn(1, 16, 7, 9)).shape == (1, 63, 63)


def test_danet_channel_affinity_by_hand():
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0]]).view(1, 2, 1, 2)  # A₁ = [1, 0], A₂ = [1, 1]
    # A Aᵀ = [[1, 1], [1, 2]], softmax over each row
    e = math.e
    expected = torch.tensor([[0.5, 0.5], [1 / (1 + e), e / (1 + e)]])
    torch.testing.assert_close(channel_affinity(x), expected.unsqueeze(0))


@pytest.mark.parametrize("channels,k", [(4, 1), (16, 3), (32, 3), (64, 3), (128, 5), (256, 5), (512, 5), (1024, 5)])
def test_eca_kernel_size_from_channels(channels, k):
    assert eca_kernel_size(channels) == k
    assert build_attention("eca", channels).conv.kernel_size == (k,)


def test_eca_convolves_over_channels():
    block = build_attention("eca", 64, identity_init=False)
    with torch.no_grad():
        block.conv.weight.copy_(torch.tensor([1.0, 0.0, 0.0]).view(1, 1, 3))
    x = torch.randn(1, 64, 5, 5)
    gap = x.mean(dim=(2, 3)).flatten()
    shifted = torch.cat((torch.zeros(1), gap[:-1]))  # tap 0 reads the previous channel
    torch.testing.assert_close(block(x) / x, torch.sigmoid(shifted).view(1, 64, 1, 1).expand_as(x))


def test_bam_dilated_spatial_branch():
    block = build_attention("bam", 64)
    dilated = [m for m in block.spatial if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(dilated) == 2
    assert all(m.dilation == (4, 4) and m.padding == (4, 4) for m in dilated)
    assert block.spatial[0].out_channels == 64 // 16
    assert block.logits(torch.randn(2, 64, 7, 9)).shape == (2, 64, 7, 9)


def test_gather_excite_extent():
    block = build_attention("ge", 8, extent=2, identity_init=False)
    x = torch.arange(9.0).view(1, 1, 3, 3).expand(1, 8, 3, 3)
    gathered = block.gathered(x)[0, 0]
    # 2x2 windows with stride 2; border windows average only what they cover
    torch.testing.assert_close(gathered, torch.tensor([[2.0, 3.5], [6.5, 8.0]]))
    theta = build_attention("ge", 8, extent=4, param=True)
    assert sum(isinstance(m, nn.Conv2d) for m in theta.gather) == 2
    with pytest.raises(ValueError, match="power of two"):
        build_attention("ge_theta", 8, extent=3)


# ---------------------------------------------------------------- placement


def small_trunk():
    torch.manual_seed(0)
    return build_backbone("vgg_small", width=4)


def test_stage_ends_of_torchvision_vgg19():
    with torch.device("meta"):  # layout only, no weights needed
        features = tv_make_vgg_layers(tv_vgg_plans["E"])
        bn = tv_make_vgg_layers(tv_vgg_plans["E"], batch_norm=True)
    assert [i for i, _ in stage_ends(features)] == [3, 8, 17, 26, 35]
    assert [c for _, c in stage_ends(features)] == [64, 128, 256, 512, 512]
    assert [i for i, _ in stage_ends(bn)] == [5, 12, 25, 38, 51]


def test_trunk_parameter_names_unchanged():
    plain = small_trunk()
    trunk = insert_attention(small_trunk(), "cbam", [1, 4])
    names, plain_names = set(trunk.state_dict()), set(plain.state_dict())
    assert plain_names <= names
    assert all(".attn." in n for n in names - plain_names)
    ends = [i for i, _ in stage_ends(plain.features)]
    assert isinstance(trunk.features[ends[0]], ReLUThenAttention)
    assert isinstance(trunk.features[ends[3]], ReLUThenAttention)
    assert len(trunk.features) == len(plain.features)


def test_unknown_type_and_stage():
    with pytest.raises(ValueError, match="valid types"):
        insert_attention(small_trunk(), "sex", [1])
    with pytest.raises(ValueError, match=r"valid stages: \[1, 2, 3, 4\]"):
        insert_attention(small_trunk(), "se", [5])
    with pytest.raises(ValueError, match="VGG trunks"):
        insert_attention(nn.Sequential(nn.Conv2d(3, 4, 3)), "se", [1])


@pytest.mark.parametrize("name", ATTENTION_TYPES)
def test_every_block_in_a_trunk(name):
    trunk = insert_attention(small_trunk(), name, [2, 3, 4])
    x = torch.randn(2, 3, 32, 32)
    assert trunk(x).shape == small_trunk()(x).shape == (2, 32, 4, 4)  # conv output before the last pool


def test_torchvision_state_dict_loads_and_features_are_unchanged(tmp_path):
    torch.manual_seed(0)
    reference = tv_make_vgg_layers(tv_vgg_plans["A"])  # torchvision's VGG-11 features
    path = tmp_path / "vgg11.pth"
    torch.save({f"features.{k}": v for k, v in reference.state_dict().items()}, path)
    attention = {"type": "cbam", "stages": [2, 5], "identity_init": True, "kwargs": {"reduction": 8}}
    trunk = build_backbone("vgg11", pretrained=str(path), attention=attention)
    assert [i for i, _ in stage_ends(trunk.features)] == [1, 4, 9, 14, 19]
    assert trunk.features[4].attn.channel.fc1.out_channels == 128 // 8
    torch.testing.assert_close(trunk.features[0].weight, reference[0].weight)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(trunk.eval()(x), reference.eval()[:-1](x))  # identity at init; no pool5


def test_racnn_with_attention_from_config():
    cfg = resolve_config({"model": {
        "backbone": "vgg_small", "width": 4, "input_sizes": [32, 32, 32],
        "apn": {"hidden": 8, "pool_size": 1},
        "attention": {"type": "se", "stages": [3, 4], "kwargs": {"reduction": 4}},
    }})
    torch.manual_seed(0)
    model = build_racnn(cfg, num_classes=5)
    first, second = (net.backbone for net in model.scales[:2])
    s0, s1 = first.state_dict(), second.state_dict()
    assert any(".attn." in k for k in s0) and set(s0) == set(s1)
    assert all(torch.equal(s0[k], s1[k]) for k in s0)  # every scale starts equal
    ends = [i for i, _ in stage_ends(first.features)]
    assert first.features[ends[2]].attn is not second.features[ends[2]].attn
    out = model(torch.randn(2, 3, 32, 32))
    assert all(logits.shape == (2, 5) for logits in out.logits)


def test_racnn_without_attention_is_unchanged():
    torch.manual_seed(0)
    plain = RACNN(num_classes=5, backbone="vgg_small", width=4, input_sizes=[32, 24, 24])
    torch.manual_seed(0)
    none = RACNN(num_classes=5, backbone="vgg_small", width=4, input_sizes=[32, 24, 24],
                 attention={"type": "none", "stages": [1, 2]})
    assert set(plain.state_dict()) == set(none.state_dict())


def _local_attention_loop(q, key, v, rel_rows, rel_cols, heads, k):
    """Each output pixel computed alone: the in-map neighbours of a k x k window, the logits
    q.k + q.r(offset) per head (q scaled by d^-1/2), softmax over those neighbours, the weighted
    sum of values."""
    b, c, h, w = q.shape
    d = c // heads
    o = torch.zeros(b, c, h, w, dtype=q.dtype)
    for n in range(b):
        for i in range(h):
            for j in range(w):
                for hd in range(heads):
                    ch = slice(hd * d, (hd + 1) * d)
                    qp = q[n, ch, i, j] / math.sqrt(d)
                    logits, values = [], []
                    for a in range(-(k // 2), k // 2 + 1):
                        for e in range(-(k // 2), k // 2 + 1):
                            if 0 <= i + a < h and 0 <= j + e < w:
                                r = torch.cat((rel_rows[hd, :, a + k // 2], rel_cols[hd, :, e + k // 2]))
                                logits.append(qp @ (key[n, ch, i + a, j + e] + r))
                                values.append(v[n, ch, i + a, j + e])
                    weights = torch.stack(logits).softmax(0)
                    o[n, ch, i, j] = (weights[:, None] * torch.stack(values)).sum(0)
    return o


def test_sasa_against_a_per_pixel_loop():
    """The block: x + W_o o, o from the per-pixel loop."""
    torch.manual_seed(0)
    heads, k = 2, 3
    block = build_attention("sasa", 8, identity_init=False, heads=heads, kernel_size=k)
    x = torch.randn(2, 8, 4, 5)
    q, key, v = block.qkv(x).chunk(3, dim=1)
    o = _local_attention_loop(q, key, v, block.rel_rows, block.rel_cols, heads, k)
    expected = x + torch.nn.functional.conv2d(o, block.out.weight)
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("h, w, k", [(4, 5, 3), (6, 3, 5), (2, 7, 3), (5, 5, 1)])
def test_local_attention_both_computations_match_the_loop_and_each_other(h, w, k):
    """dense and unfold against the per-pixel loop (maps smaller and larger than the window,
    k = 1), and their gradients against each other; auto picks dense while H·W <= d·k²."""
    torch.manual_seed(0)
    heads, d = 2, 4
    q, key, v = (torch.randn(2, heads * d, h, w, dtype=torch.float64) for _ in range(3))
    rows, cols = (torch.randn(heads, d // 2, k, dtype=torch.float64) for _ in range(2))
    expected = _local_attention_loop(q * math.sqrt(d), key, v, rows, cols, heads, k).double()
    grads = {}
    for impl in ("dense", "unfold"):
        leaves = [t.clone().requires_grad_(True) for t in (q, key, v, rows, cols)]
        out = local_attention(*leaves, impl=impl)
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
        (out * torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)).sum().backward()
        grads[impl] = [t.grad for t in leaves]
    for a, b in zip(grads["dense"], grads["unfold"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    q_grad, _, v_grad, _, _ = grads["dense"]
    assert v_grad.abs().sum() > 0 and (q_grad.abs().sum() > 0) == (k > 1)  # one neighbour: softmax = 1
    with patch.object(sasa, "_dense_local_attention", return_value="dense"), \
            patch.object(sasa, "_unfold_local_attention", return_value="unfold"):
        assert local_attention(q, key, v, rows, cols) == ("dense" if h * w <= d * k * k else "unfold")
    with pytest.raises(ValueError, match="choose one of"):
        local_attention(q, key, v, rows, cols, impl="loop")


def test_sasa_layer_against_a_per_pixel_loop():
    """The layer that replaces a convolution: 6 -> 8 channels, o itself, no residual."""
    torch.manual_seed(0)
    heads, k = 2, 3
    layer = SASAConv(6, 8, heads=heads, kernel_size=k)
    x = torch.randn(2, 6, 4, 5)
    q, key, v = layer.qkv(x).chunk(3, dim=1)
    expected = _local_attention_loop(q, key, v, layer.rel_rows, layer.rel_cols, heads, k)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="even width"):
        SASAConv(8, 12, heads=4)


def test_replace_convs_swaps_only_the_stage_convolutions():
    plain = small_trunk()
    trunk = replace_convs(small_trunk(), [3, 4], heads=2, kernel_size=3)
    convs = [(i, m) for i, m in enumerate(plain.features) if isinstance(m, nn.Conv2d)]
    pools = [i for i, m in enumerate(plain.features) if isinstance(m, nn.MaxPool2d)]
    for i, conv in convs:
        stage = 1 + sum(p < i for p in pools)
        new = trunk.features[i]
        if stage in (3, 4):
            assert isinstance(new, SASAConv) and (new.in_channels, new.out_channels) == \
                (conv.in_channels, conv.out_channels)
        else:
            assert isinstance(new, nn.Conv2d) and torch.equal(new.weight, conv.weight)
    x = torch.randn(2, 3, 32, 32)
    out = trunk(x)
    assert out.shape == plain(x).shape
    out.square().mean().backward()
    sasa = [m for m in trunk.features if isinstance(m, SASAConv)]
    assert sasa and all(m.qkv.weight.grad.abs().sum() > 0 and m.rel_rows.grad.abs().sum() > 0 for m in sasa)
    with pytest.raises(ValueError, match=r"valid stages: \[1, 2, 3, 4\]"):
        replace_convs(small_trunk(), [5])


def test_config_replace_convs_builds_a_racnn_and_is_sasa_only():
    cfg = resolve_config({"model": {"backbone": "vgg_small", "width": 8, "input_sizes": [32, 32, 32],
                                    "attention": {"type": "sasa", "stages": [4], "replace_convs": True,
                                                  "kwargs": {"heads": 2, "kernel_size": 3}}}})
    model = build_racnn(cfg, 5)
    assert all(sum(isinstance(m, SASAConv) for m in net.modules()) > 0 for net in model.scales)
    assert model(torch.randn(2, 3, 64, 64)).logits[0].shape == (2, 5)
    with pytest.raises(ConfigError, match="model.attention.replace_convs: only type sasa"):
        resolve_config({"model": {"attention": {"type": "se", "stages": [4], "replace_convs": True}}})


def test_sasa_refuses_heads_that_do_not_split_the_channels():
    with pytest.raises(ValueError, match="even width"):
        build_attention("sasa", 12, heads=4)  # 3 channels per head cannot split into rows and columns
    with pytest.raises(ValueError, match="odd"):
        build_attention("sasa", 16, kernel_size=4)


# ------------------------------------------------------------- whole blocks against per-position loops


def test_nonlocal_block_against_a_loop_over_positions():
    """z = x + W_z y, yᵢ = Σⱼ softmax_j(θ(xᵢ)·φ(xⱼ)) g(xⱼ), with a random W_z (no BN, no
    sub-sampling) so that a scrambled channel/position layout of y cannot hide behind zeros."""
    torch.manual_seed(0)
    block = build_attention("nonlocal", 4, sub_sample=False, norm=False, identity_init=False)
    with torch.no_grad():
        block.w_z.weight.normal_()
        block.w_z.bias.normal_()
    x = torch.randn(1, 4, 2, 3)
    theta, phi, g = (f(x).flatten(2)[0] for f in (block.theta, block.phi, block.g))  # [C', N], N = 6
    y = torch.stack([sum(torch.softmax(theta[:, i] @ phi, 0)[j] * g[:, j] for j in range(6)) for i in range(6)], 1)
    expected = x + F.conv2d(y.view(1, 2, 2, 3), block.w_z.weight, block.w_z.bias)
    torch.testing.assert_close(block(x), expected)


def test_danet_block_against_loops_over_positions_and_channels():
    """y = x + α Pⱼ + β Cⱼ with Pⱼ = Σᵢ softmax_i(q(xⱼ)·k(xᵢ)) v(xᵢ) over positions and
    Cⱼ = Σᵢ softmax_i(Aⱼ·Aᵢ) Aᵢ over channels (A: the channel rows of x); α = 1, β = 0.5. The
    affinities are square, so a transposed one is only caught by the aggregation."""
    torch.manual_seed(0)
    block = build_attention("danet", 8, identity_init=False)
    with torch.no_grad():
        block.alpha.fill_(1.0)
        block.beta.fill_(0.5)
    x = torch.randn(1, 8, 2, 3)
    p = block.position
    q, k, v, a = p.query(x).flatten(2)[0], p.key(x).flatten(2)[0], p.value(x).flatten(2)[0], x.flatten(2)[0]
    pos = torch.stack([sum(torch.softmax(q[:, j] @ k, 0)[i] * v[:, i] for i in range(6)) for j in range(6)], 1)
    chan = torch.stack([sum(torch.softmax(a[j] @ a.T, 0)[i] * a[i] for i in range(8)) for j in range(8)], 0)
    torch.testing.assert_close(block(x), x + (pos + 0.5 * chan).view(1, 8, 2, 3))


def test_bam_gate_and_its_channel_branch_reads_the_pooled_input():
    """With both branches' last layers zeroed the attention map is 0: y = (1 + σ(0)) x = 1.5 x as in
    the paper, x with identity_init. The channel branch sees the global average pool, so
    logits − spatial is constant over the map."""
    for identity_init, factor in ((False, 1.5), (True, 1.0)):
        block = build_attention("bam", 32, identity_init=identity_init).eval()
        with torch.no_grad():
            for layer in (block.channel[-1], block.spatial[-1]):
                layer.weight.zero_()
                layer.bias.zero_()
        x = torch.randn(2, 32, 5, 6)
        torch.testing.assert_close(block(x), factor * x)
    block = build_attention("bam", 32, identity_init=False).eval()
    x = torch.randn(2, 32, 5, 6)
    channel = block.logits(x) - block.spatial(x)
    assert (channel - channel.mean((2, 3), keepdim=True)).abs().max() < 1e-5


def test_parsenet_context_by_hand():
    """y = x + 10 x̂ + 10 ĝ with the projection the identity on both halves: two positions
    x = (3, 4) and (0, 1), normalised per position over the channels to (0.6, 0.8) and (0, 1); their
    average (1.5, 2.5) normalised to (1.5, 2.5) / √8.5 at every position."""
    block = build_attention("parsenet", 2, identity_init=True)
    with torch.no_grad():
        block.proj.weight.zero_()
        for c in range(2):
            block.proj.weight[c, c] = 1  # local half
            block.proj.weight[c, 2 + c] = 1  # global half
    x = torch.tensor([[3.0, 0.0], [4.0, 1.0]]).view(1, 2, 1, 2)
    local = torch.tensor([[0.6, 0.0], [0.8, 1.0]]).view(1, 2, 1, 2)
    glob = (torch.tensor([1.5, 2.5]) / math.sqrt(8.5)).view(1, 2, 1, 1)
    torch.testing.assert_close(block(x), x + 10 * local + 10 * glob)


def test_gather_excite_excites_each_pixel_with_its_own_windows_mean():
    """GE-θ⁻ with extent 2 on a 4×4 map: every pixel is gated by σ of the mean of the 2×2 window it
    lies in (nearest-neighbour excite, not an interpolation between windows)."""
    block = build_attention("ge", 1, extent=2, identity_init=False)
    x = torch.arange(16.0).view(1, 1, 4, 4) / 8
    means = torch.tensor([[0.3125, 0.5625], [1.3125, 1.5625]])  # (0 + 1 + 4 + 5) / 32, ...
    gate = torch.sigmoid(means.repeat_interleave(2, 0).repeat_interleave(2, 1))
    torch.testing.assert_close(block(x), x * gate)
