"""MaxPool2x2 (raccnn/models/maxpool.py): bitwise F.max_pool2d, forward and backward, on either road."""
from __future__ import annotations

import copy
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from raccnn.models.backbones import build_backbone
from raccnn.models.maxpool import MaxPool2x2, _fast_path, max_pool_2x2, use_fast_pools

from raccnn.bench import main as bench_main

from conftest import call_main
from test_recovery import run


def tie_heavy(shape, dtype=torch.float32, seed=0):
    """Rounded to a coarse grid after a ReLU, and with +0 in place of -0: whole windows of zeros and
    many windows whose maximum appears twice or more, where the kernels' tie rule decides which input
    gets the gradient."""
    g = torch.Generator().manual_seed(seed)
    return ((torch.randn(shape, generator=g) * 2).round().relu() + 0.0).to(dtype)


def bits(t):
    """The tensor's bit patterns, for an exact comparison (``torch.equal`` takes -0 == +0)."""
    return t.view({torch.float64: torch.int64, torch.float32: torch.int32}.get(t.dtype, torch.int16))


def standard_strides(t):
    n, c, h, w = t.shape
    return t.stride() == (c * h * w, h * w, w, 1)


@pytest.mark.parametrize("shape", [(4, 3, 8, 8), (2, 5, 7, 9), (3, 2, 2, 3), (1, 1, 64, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_values_and_gradients_equal_max_pool2d_bitwise(shape, dtype):
    x = tie_heavy(shape, dtype)
    assert not x.signbit().any()
    n_ties = (x.unfold(2, 2, 2).unfold(3, 2, 2).flatten(-2) == F.max_pool2d(x, 2, 2)[..., None]).sum(-1)
    assert (n_ties > 1).any()  # the test input does exercise the tie rule
    with torch.no_grad():  # the gradient-free road: the maximum of four sub-grids
        out = max_pool_2x2(x)
    ref = F.max_pool2d(x, 2, 2)
    assert out.dtype == dtype and standard_strides(out) and torch.equal(bits(out), bits(ref))

    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    results = []
    for fn in (max_pool_2x2, lambda t: F.max_pool2d(t, 2, 2)):  # the road with indices
        leaf = x.clone().requires_grad_(True)
        y = fn(leaf)
        y.backward(grad)
        results.append((y, leaf.grad))
    (y, g), (y_ref, g_ref) = results
    assert standard_strides(y) and torch.equal(bits(y), bits(y_ref))
    assert torch.equal(bits(g), bits(g_ref))
    # the gradient goes to one input per window (the first maximum), not split among the ties
    assert torch.equal((g != 0).float().unfold(2, 2, 2).unfold(3, 2, 2).sum((-1, -2)), (grad != 0).float())


def test_signed_zeros_and_nans():
    """Both roads give the same numbers as F.max_pool2d; the gradient road also the same gradient and
    the same bits. Where a window's maximum is a zero, the gradient-free road may give the other sign."""
    x = torch.tensor([[0.0, -0.0, 1.0, float("nan"), float("nan"), 2.0, -float("inf"), -float("inf")],
                      [-0.0, 0.0, float("nan"), 3.0, 4.0, float("nan"), -float("inf"), 5.0]]).view(1, 1, 2, 8)
    x = x.repeat(2, 3, 1, 1)
    ref = F.max_pool2d(x, 2, 2)
    with torch.no_grad():
        out = max_pool_2x2(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=0, equal_nan=True)
    leaf, leaf_ref = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y, y_ref = max_pool_2x2(leaf), F.max_pool2d(leaf_ref, 2, 2)
    assert torch.equal(bits(y), bits(y_ref))
    grad = torch.arange(1.0, y.numel() + 1).view_as(y)
    y.backward(grad)
    y_ref.backward(grad)
    assert torch.equal(leaf.grad, leaf_ref.grad)
    # the NaN windows send their gradient to their last NaN, as F.max_pool2d does
    assert leaf.grad[0, 0, 1, 2] == grad[0, 0, 0, 1] and leaf.grad[0, 0, 1, 5] == grad[0, 0, 0, 2]


def test_a_1x1_output_keeps_standard_strides_and_the_next_convolution_its_path():
    x = torch.randn(8, 64, 2, 2, generator=torch.Generator().manual_seed(0), requires_grad=True)
    conv = torch.nn.Conv2d(64, 128, 3, padding=1)
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            a, b = max_pool_2x2(x), F.max_pool2d(x, 2, 2)
            assert a.stride() == b.stride() == (64, 1, 1, 1)
            assert torch.equal(conv(a), conv(b))


def test_second_order_gradient_equals_max_pool2d():
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0)).round()  # ties
    g0 = torch.randn(2, 3, 3, 3, generator=torch.Generator().manual_seed(1))
    results = []
    for fn in (max_pool_2x2, lambda t: F.max_pool2d(t, 2, 2)):
        leaf, g = x.clone().requires_grad_(True), g0.clone().requires_grad_(True)
        (gx,) = torch.autograd.grad(fn(leaf), leaf, g, create_graph=True)
        (gg,) = torch.autograd.grad((gx * torch.arange(float(gx.numel())).view_as(gx)).sum(), g)
        results.append(gg)
    assert torch.equal(*results) and results[0].abs().sum() > 0


def test_roads_taken():
    x = torch.randn(2, 3, 8, 8)
    assert _fast_path(x)
    assert not _fast_path(x.contiguous(memory_format=torch.channels_last))  # PyTorch's kernel is fast there
    assert not _fast_path(x[..., ::2])  # not contiguous
    assert not _fast_path(torch.randn(3, 8, 8))
    assert not _fast_path(torch.randn(2, 3, 1, 8))
    cl = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(max_pool_2x2(cl), F.max_pool2d(cl, 2, 2))
    # a map too small for a 2x2 window, or no channels: F.max_pool2d's own errors
    with pytest.raises(RuntimeError, match="too small"):
        max_pool_2x2(torch.randn(1, 1, 1, 4))
    with pytest.raises(RuntimeError, match="Expected 3D or 4D"):
        max_pool_2x2(torch.randn(2, 0, 4, 4))
    assert max_pool_2x2(torch.randn(0, 3, 4, 4)).shape == (0, 3, 2, 2)


def test_use_fast_pools_swaps_only_plain_2x2_pools():
    features = nn.Sequential(nn.MaxPool2d(2, 2), nn.MaxPool2d(3, 2), nn.MaxPool2d(2, 2, ceil_mode=True),
                             nn.MaxPool2d((2, 2), (2, 2)), nn.MaxPool2d(2, 1), nn.Conv2d(1, 1, 1))
    use_fast_pools(features)
    assert [type(m).__name__ for m in features] == ["MaxPool2x2", "MaxPool2d", "MaxPool2d", "MaxPool2x2",
                                                     "MaxPool2d", "Conv2d"]
    assert isinstance(features[0], nn.MaxPool2d)  # attention placement finds stages by their pools


@pytest.mark.parametrize("name", ["vgg_small", "vgg11_bn"])
def test_vgg_trunks_use_it_and_train_bitwise_as_with_nn_maxpool(name):
    torch.manual_seed(0)
    trunk = build_backbone(name, width=4)
    pools = [m for m in trunk.features if isinstance(m, nn.MaxPool2d)]
    assert pools and all(type(m) is MaxPool2x2 for m in pools)
    plain = copy.deepcopy(trunk)
    for i, m in enumerate(plain.features):
        if isinstance(m, MaxPool2x2):
            plain.features[i] = nn.MaxPool2d(2, 2)
    assert trunk.state_dict().keys() == plain.state_dict().keys()  # checkpoints unchanged
    x = torch.randn(2, 3, 32, 32)
    outs = []
    for net in (trunk, plain):
        net.train()
        y = net(x)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        with torch.no_grad():
            net.eval()
            outs.append((y, net(x), [p.grad for p in net.parameters()]))
    (y, y_eval, grads), (y_ref, y_eval_ref, grads_ref) = outs
    assert torch.equal(y, y_ref) and torch.equal(y_eval, y_eval_ref)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_ref))


def test_pool_benchmark_reports_bitwise_equality_and_times_steps_with_both_pools():
    res = run([sys.executable, "tools/benchmark.py", "pool", "--batch", "2", "--width", "4", "--size", "16",
               "--repeats", "2", "--threads", "1", "--steps", "eval", "alternate_apn",
               "--opts", "model.width=4", "model.input_sizes=[32,32,32]", "model.apn.hidden=16",
               "data.resize=48", "data.crop=48"])
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [line for line in res.stdout.splitlines() if "bitwise equal" in line]
    assert [line.split()[:4] for line in lines] == [["[2,", "4,", "16,", "16]"], ["[2,", "8,", "8,", "8]"],
                                                   ["[2,", "16,", "4,", "4]"]]  # vgg_small's pools at width 4
    assert all(line.endswith("bitwise equal: True") for line in lines)
    steps = [line.split() for line in res.stdout.splitlines() if "pools swapped" in line]
    # three scale networks, three applied pools each, plus the unapplied last one
    assert [(s[0], s[-3]) for s in steps] == [("eval", "(12"), ("alternate_apn", "(12")]
    assert all(float(s[2]) > 0 and float(s[4]) > 0 for s in steps)


def test_pool_benchmark_refuses_a_bad_config_in_one_line_before_timing(capsys):
    for opt, words in (("model.widht=3", "did you mean 'model.width'"), ("model.proposer=oracle", "oracle zooms")):
        code, out, err = call_main(bench_main, ["pool", "--steps", "eval", "--opts", opt], capsys)
        assert code == 2 and words in err and len(err.splitlines()) == 1
        assert "forward" not in out  # nothing was timed


def test_pool_benchmark_refuses_bad_numbers_in_one_usage_line(capsys):
    for args, words in ((["--width", "0"], "--width: must be at least 1, got 0"),
                        (["--size", "7"], "--size: must be at least 8, got 7"),  # vgg_small's three applied pools
                        (["--repeats", "x"], "--repeats: expected an integer, got 'x'")):
        code, _, err = call_main(bench_main, ["pool", *args], capsys)
        assert code == 2 and words in err
