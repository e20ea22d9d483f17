"""model.crop.grad=caffe: the forward of every mode, the box gradient of the authors' Caffe layer."""
import math

import pytest
import torch
from conftest import make_trainer

from raccnn.models.caffe_grad import SCALE, SHRINK, STEEPNESS, caffe_box_grad
from raccnn.models.crop import attention_crop


def caffe_loop(grad_out, boxes, size):
    """The released layer's Backward_cpu, loop for loop, in its own pixel units, then to normalised
    boxes of a square ``size`` x ``size`` image (a = tx * size, ...)."""
    def h(z):
        return 1 / (1 + math.exp(-STEEPNESS * z))

    def dh(z):
        return STEEPNESS * math.exp(-STEEPNESS * z) / (1 + math.exp(-STEEPNESS * z)) ** 2

    out = []
    n, channels, out_h, out_w = grad_out.shape
    for i in range(n):
        a, b, c = (float(v) * size for v in boxes[i])
        diff = [0.0, 0.0, 0.0]
        for j in range(channels):
            top = grad_out[i, j].abs()
            max_diff = float(top.max())
            for k in range(out_h):
                for l in range(out_w):
                    t = float(top[k, l])
                    if max_diff > 0:
                        t = t / max_diff * SCALE
                    x = a - c + 2 * l * c / out_w
                    y = b - c + 2 * k * c / out_h
                    fx, fy = h(x - (a - c)) - h(x - (a + c)), h(y - (b - c)) - h(y - (b + c))
                    diff[0] += t * (dh(x - (a - c)) - dh(x - (a + c))) * fy
                    diff[1] += t * (dh(y - (b - c)) - dh(y - (b + c))) * fx
                    diff[2] += t * (-((dh(y - (b - c)) + dh(y - (b + c))) * fx
                                      + (dh(x - (a - c)) + dh(x - (a + c))) * fy) + SHRINK)
        out.append([d * size for d in diff])
    return torch.tensor(out, dtype=torch.float64)


def test_a_hand_computed_case():
    # one channel, one output pixel at the square's top-left sample: x = a - c, y = b - c
    size, (tx, ty, tl) = 100, (0.5, 0.5, 0.2)  # a = b = 50, c = 20 pixels
    grad_out = torch.full((1, 1, 1, 1), -2.0, dtype=torch.float64)  # only |g| / max |g| = 1 counts
    sig = 1 / (1 + math.exp(2.0))  # H(-40) = sigmoid(-0.05 * 40)
    f = 0.5 - sig  # H(0) - H(-40), along x and along y
    d_inner, d_outer = 0.05 * 0.25, 0.05 * sig * (1 - sig)  # H'(0), H'(-40)
    want = [1e-7 * (d_inner - d_outer) * f * 100,  # dL/da * (da/dtx = 100)
            1e-7 * (d_inner - d_outer) * f * 100,
            (1e-7 * -2 * (d_inner + d_outer) * f + 1e-7 * 0.005) * 100]
    got = caffe_box_grad(grad_out, torch.tensor([[tx, ty, tl]], dtype=torch.float64), size, size)
    assert got[0].tolist() == pytest.approx(want, rel=1e-12)
    assert want[2] < 0 < want[0]  # numbers: +2.76e-8, +2.76e-8, -8.52e-8


def test_equals_the_layer_loop_on_random_gradients():
    torch.manual_seed(0)
    grad_out = torch.randn(3, 2, 5, 6, dtype=torch.float64)
    grad_out[1, 1] = 0  # an all-zero channel: the layer skips its normalisation
    boxes = torch.tensor([[0.5, 0.4, 0.2], [0.3, 0.7, 0.1], [0.6, 0.5, 0.45]], dtype=torch.float64)
    got = caffe_box_grad(grad_out, boxes, 40, 40)
    assert torch.allclose(got, caffe_loop(grad_out, boxes, 40), rtol=1e-10, atol=0)


def test_only_the_magnitude_and_each_channels_shape_count():
    torch.manual_seed(1)
    grad_out = torch.randn(2, 3, 4, 4)
    boxes = torch.tensor([[0.5, 0.5, 0.25], [0.4, 0.6, 0.2]])
    base = caffe_box_grad(grad_out, boxes, 32, 32)
    rescaled = grad_out * torch.tensor([-1.0, 5.0, 0.01])[None, :, None, None]
    assert torch.allclose(caffe_box_grad(rescaled, boxes, 32, 32), base, rtol=1e-5, atol=0)


def test_forward_and_image_gradient_are_those_of_the_mask_mode():
    torch.manual_seed(2)
    images = torch.rand(2, 3, 24, 24, requires_grad=True)
    weight = torch.randn(2, 3, 8, 8)
    crops, image_grads = [], []
    for grad in ("mask", "caffe"):
        boxes = torch.tensor([[0.5, 0.5, 0.3], [0.4, 0.6, 0.2]], requires_grad=True)
        out = attention_crop(images, boxes, 8, grad=grad)
        (out * weight).sum().backward()
        crops.append(out.detach())
        image_grads.append(images.grad.clone())
        images.grad = None
        if grad == "caffe":  # and the boxes get the layer's gradient, not the true one
            expected = caffe_box_grad(weight, boxes, 24, 24)
            assert torch.allclose(boxes.grad, expected, rtol=1e-5, atol=0)
    assert torch.equal(crops[0], crops[1])
    assert torch.equal(image_grads[0], image_grads[1])


def test_a_run_trains_its_apns_with_it(data_root, tmp_path):
    trainer = make_trainer(data_root, tmp_path, extra=["model.crop.grad=caffe", "train.alternate.rounds=1"])
    trainer.plan = [p for p in trainer.plan if p.label.startswith("alternate_apn")]  # the APNs' phase alone
    before = {k: v.clone() for k, v in trainer.model.state_dict().items() if k.startswith("proposers.")}
    trainer.run()
    after = trainer.model.state_dict()
    moved = [k for k, v in before.items() if v.is_floating_point() and not torch.equal(v, after[k])]
    assert moved  # the rank loss reached the APNs through the surrogate
    assert all(torch.isfinite(after[k]).all() for k in before)


def test_the_image_itself_never_enters_the_boxes_gradient():
    """Where a bright blob lies changes the true gradient (tests/test_crop.py) but not the layer's:
    with the same gradient on the crop, every image gives the same box gradient."""
    grads = []
    for cols in (slice(28, 36), slice(46, 54), slice(10, 18)):
        image = torch.zeros(1, 1, 64, 64)
        image[0, 0, 28:36, cols] = 1.0
        boxes = torch.tensor([[0.5, 0.5, 0.25]], requires_grad=True)
        attention_crop(image, boxes, 32, grad="caffe").sum().backward()
        grads.append(boxes.grad)
    assert torch.equal(grads[0], grads[1]) and torch.equal(grads[0], grads[2])
    assert grads[0][0, 2] < 0  # a uniform crop gradient pulls the half side outwards, net of the 0.005
