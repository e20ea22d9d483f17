import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from raccnn.models import GRAD_MODES, attention_crop, box_mask
from raccnn.models.crop import EXACT_GRAD_MODES
import raccnn.models.crop as crop_module
from raccnn.models.crop import compiled_attention_crop, masked_zoom, resolve_impl


def naive_crop(image, box, out_h, out_w, k):
    """Independent per-pixel implementation of the crop's formulas for one image [C, H, W]."""
    C, H, W = image.shape
    tx, ty, tl = (float(v) for v in box)
    sig = lambda z: 1.0 / (1.0 + math.exp(-z))

    def masked(r, c):
        if r < 0 or r >= H or c < 0 or c >= W:
            return [0.0] * C
        x, y = (c + 0.5) / W, (r + 0.5) / H
        m = (sig(k * W * (x - tx + tl)) - sig(k * W * (x - tx - tl))) * (
            sig(k * H * (y - ty + tl)) - sig(k * H * (y - ty - tl))
        )
        return [float(image[ch, r, c]) * m for ch in range(C)]

    out = torch.zeros(C, out_h, out_w, dtype=torch.float64)
    for i in range(out_h):
        for j in range(out_w):
            x = tx - tl + (j + 0.5) * 2 * tl / out_w
            y = ty - tl + (i + 0.5) * 2 * tl / out_h
            # continuous pixel coordinates whose integer values are pixel centres
            px, py = x * W - 0.5, y * H - 0.5
            c0, r0 = math.floor(px), math.floor(py)
            fx, fy = px - c0, py - r0
            for dr, dc, w in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
                v = masked(r0 + dr, c0 + dc)
                for ch in range(C):
                    out[ch, i, j] += w * v[ch]
    return out


def test_full_box_is_plain_resize_of_masked_image():
    torch.manual_seed(0)
    x = torch.rand(3, 2, 32, 32)
    boxes = torch.tensor([[0.5, 0.5, 0.5]]).repeat(3, 1)
    masked = x * box_mask(boxes, 32, 32, k=10.0)
    down = attention_crop(x, boxes, 16)
    ref = F.interpolate(masked, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(down, ref, atol=1e-6, rtol=1e-6)
    same = attention_crop(x, boxes, 32)
    torch.testing.assert_close(same, masked, atol=1e-6, rtol=1e-6)


def test_mask_is_one_inside_zero_outside():
    # half side 0.2625: the square's edges run through the centres of rows/columns 9 and 30
    m = box_mask(torch.tensor([[0.5, 0.5, 0.2625]], dtype=torch.float64), 40, 40, k=10.0)[0, 0]
    assert m[20, 20] > 0.9999 and m[11, 11] > 0.99  # inside, 2 px from the edges
    assert m[2, 2] < 1e-6 and m[20, 38] < 1e-6  # outside
    torch.testing.assert_close(m[9, 20].item(), 0.5, atol=1e-6, rtol=0)  # exactly on the top edge
    torch.testing.assert_close(m[20, 30].item(), 0.5, atol=1e-6, rtol=0)  # exactly on the right edge
    torch.testing.assert_close(m[9, 9].item(), 0.25, atol=1e-6, rtol=0)  # on a corner
    # one pixel inside the top edge: k * H * (1 / H) = 10, the bottom edge is 20 px away
    torch.testing.assert_close(m[10, 20].item(), torch.sigmoid(torch.tensor(10.0, dtype=torch.float64)).item(), atol=1e-7, rtol=0)


@pytest.mark.parametrize("impl", ["gather", "grid_sample"])
@pytest.mark.parametrize("out_hw", [(5, 5), (4, 7)])
def test_random_boxes_match_naive_formulas(out_hw, impl):
    torch.manual_seed(1)
    images = torch.rand(3, 2, 9, 11, dtype=torch.float64)
    boxes = torch.tensor([[0.4, 0.6, 0.3], [0.8, 0.2, 0.35], [0.5, 0.5, 0.12]], dtype=torch.float64)
    out = attention_crop(images, boxes, out_hw, k=10.0, impl=impl)
    for b in range(3):
        ref = naive_crop(images[b], boxes[b], *out_hw, k=10.0)
        torch.testing.assert_close(out[b], ref, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("grad", EXACT_GRAD_MODES)
def test_gradcheck(grad):
    """Each mode's box gradient equals finite differences of the path it selects."""
    torch.manual_seed(2)
    images = torch.rand(2, 1, 6, 7, dtype=torch.float64, requires_grad=True)
    # boxes away from pixel-grid kinks of bilinear sampling
    boxes = torch.tensor([[0.47, 0.52, 0.31], [0.61, 0.43, 0.23]], dtype=torch.float64, requires_grad=True)
    fixed = boxes.detach().clone()
    selected = {
        "mask": lambda im, bx: masked_zoom(im, bx, fixed, 4, k=2.0),
        "grid": lambda im, bx: masked_zoom(im, fixed, bx, 4, k=2.0),
        "both": lambda im, bx: masked_zoom(im, bx, bx, 4, k=2.0),
    }[grad]
    crop = lambda im, bx: attention_crop(im, bx, 4, k=2.0, grad=grad)
    assert torch.autograd.gradcheck(crop if grad == "both" else selected, (images, boxes))
    # attention_crop(grad=mode) gives exactly the gradient of that path (checked numerically above)
    weights = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    got = torch.autograd.grad((crop(images, boxes) * weights).sum(), (images, boxes))
    want = torch.autograd.grad((selected(images, boxes) * weights).sum(), (images, boxes))
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("grad", GRAD_MODES)
def test_grid_sample_impl_has_the_gather_gradients(grad):
    """Both implementations differentiate the same formulas: equal image and box gradients."""
    torch.manual_seed(5)
    images = torch.rand(2, 3, 12, 10, dtype=torch.float64, requires_grad=True)
    boxes = torch.tensor([[0.47, 0.52, 0.31], [0.61, 0.43, 0.23]], dtype=torch.float64, requires_grad=True)
    weights = torch.rand(2, 3, 6, 5, dtype=torch.float64)
    grads = [torch.autograd.grad((attention_crop(images, boxes, (6, 5), grad=grad, impl=impl) * weights).sum(),
                                 (images, boxes)) for impl in ("gather", "grid_sample")]
    torch.testing.assert_close(grads[0], grads[1], atol=1e-10, rtol=1e-10)
    assert grads[0][1].abs().sum() > 0


def test_auto_impl_is_grid_sample_on_cuda_and_the_gathers_elsewhere(monkeypatch):
    """``impl="auto"`` (the default) picks per device what measured faster there; an explicit
    choice is kept on every device."""
    assert resolve_impl("auto", torch.device("cuda", 0)) == "grid_sample"
    assert resolve_impl("auto", torch.device("cpu")) == "gather"
    assert resolve_impl("gather", torch.device("cuda")) == "gather"
    assert resolve_impl("grid_sample", torch.device("cpu")) == "grid_sample"
    called = []
    monkeypatch.setattr(crop_module, "masked_zoom_grid_sample", lambda *a: called.append("grid_sample"))
    monkeypatch.setattr(crop_module, "masked_zoom", lambda *a: called.append("gather"))
    images, boxes = torch.rand(1, 3, 8, 8), torch.tensor([[0.5, 0.5, 0.25]])
    attention_crop(images, boxes, 4)
    attention_crop(images, boxes, 4, impl="grid_sample")
    assert called == ["gather", "grid_sample"]
    with pytest.raises(ValueError, match="impl must be one of"):
        attention_crop(images, boxes, 4, impl="bilinear")


@pytest.mark.parametrize("grad", GRAD_MODES)
def test_gradient_only_flows_through_selected_path(grad):
    images = torch.rand(1, 1, 16, 16, dtype=torch.float64)
    boxes = torch.tensor([[0.5, 0.5, 0.3]], dtype=torch.float64, requires_grad=True)
    out = attention_crop(images, boxes, 8, grad=grad)
    (g,) = torch.autograd.grad(out.sum(), boxes)
    assert g.abs().sum() > 0
    # the other modes' gradients add up to "both"
    if grad == "both":
        parts = []
        for mode in ("mask", "grid"):
            b = boxes.detach().clone().requires_grad_(True)
            parts.append(torch.autograd.grad(attention_crop(images, b, 8, grad=mode).sum(), b)[0])
        torch.testing.assert_close(g, parts[0] + parts[1])


@pytest.mark.parametrize("grad", EXACT_GRAD_MODES)
@pytest.mark.parametrize("side", ["right", "left", "below", "above"])
def test_gradient_moves_box_towards_bright_blob(grad, side):
    H = W = 64
    image = torch.zeros(1, 1, H, W)
    # box (0.5, 0.5, 0.25) spans pixels 16..47; a bright blob straddles one edge
    rows, cols = slice(28, 36), slice(28, 36)
    if side == "right":
        cols = slice(46, 54)
    elif side == "left":
        cols = slice(10, 18)
    elif side == "below":
        rows = slice(46, 54)
    else:
        rows = slice(10, 18)
    image[0, 0, rows, cols] = 1.0
    boxes = torch.tensor([[0.5, 0.5, 0.25]], requires_grad=True)
    attention_crop(image, boxes, 32, grad=grad).sum().backward()
    gx, gy = boxes.grad[0, 0].item(), boxes.grad[0, 1].item()
    expected = {"right": (1, 0), "left": (-1, 0), "below": (0, 1), "above": (0, -1)}[side]
    if expected[0]:
        assert gx * expected[0] > 0 and abs(gx) > 10 * abs(gy)
    else:
        assert gy * expected[1] > 0 and abs(gy) > 10 * abs(gx)


@pytest.mark.parametrize("impl", ["gather", "grid_sample"])
def test_each_image_of_a_batch_is_cropped_and_differentiated_on_its_own(impl):
    """Batched, image b's crop and its box's gradient are those of image b cropped alone with
    box b (no box, mask or index shared across the batch), for every gradient path."""
    torch.manual_seed(3)
    images = torch.rand(3, 2, 20, 24, dtype=torch.float64)
    boxes = torch.tensor([[0.4, 0.4, 0.2], [0.6, 0.55, 0.3], [0.3, 0.7, 0.25]], dtype=torch.float64)
    weights = torch.rand(3, 2, 8, 8, dtype=torch.float64)
    for grad in GRAD_MODES:
        batch = boxes.clone().requires_grad_(True)
        out = attention_crop(images, batch, 8, grad=grad, impl=impl)
        (out * weights).sum().backward()
        for b in range(3):
            alone = boxes[b : b + 1].clone().requires_grad_(True)
            out_b = attention_crop(images[b : b + 1], alone, 8, grad=grad, impl=impl)
            (out_b * weights[b : b + 1]).sum().backward()
            torch.testing.assert_close(out[b : b + 1], out_b)
            torch.testing.assert_close(batch.grad[b : b + 1], alone.grad)


def test_bfloat16_and_dtype_preserved():
    torch.manual_seed(4)
    x = torch.rand(2, 3, 32, 32)
    boxes = torch.tensor([[0.4, 0.5, 0.2], [0.5, 0.5, 0.4]])
    ref = attention_crop(x, boxes, 16)
    out = attention_crop(x.bfloat16(), boxes.bfloat16(), 16)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("impl", ["gather", "grid_sample"])
def test_cuda_matches_cpu(impl):
    x = torch.rand(2, 3, 32, 32)
    boxes = torch.tensor([[0.4, 0.5, 0.2], [0.5, 0.5, 0.4]])
    torch.testing.assert_close(attention_crop(x.cuda(), boxes.cuda(), 16, impl=impl).cpu(), attention_crop(x, boxes, 16))


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="impl must be one of"):
        attention_crop(torch.rand(1, 3, 8, 8), torch.tensor([[0.5, 0.5, 0.5]]), 4, impl="gpu")
    with pytest.raises(ValueError, match="grad must be one of"):
        attention_crop(torch.rand(1, 3, 8, 8), torch.tensor([[0.5, 0.5, 0.5]]), 4, grad="masks")
    with pytest.raises(ValueError, match=r"boxes \[B, 3\]"):
        attention_crop(torch.rand(2, 3, 8, 8), torch.tensor([[0.5, 0.5, 0.5]]), 4)


@pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "clang++", "c++")),
                    reason="inductor needs a C++ compiler")
def test_compiled_crop_has_the_eager_values_and_gradients():
    """``model.crop.compile``: inductor's fused loops compute the same formulas as the eager ops."""
    torch.manual_seed(11)
    images = torch.rand(3, 3, 40, 36)
    boxes = torch.tensor([[0.47, 0.52, 0.31], [0.61, 0.43, 0.23], [0.3, 0.7, 0.12]], requires_grad=True)
    weights = torch.rand(3, 3, 16, 16)
    compiled = compiled_attention_crop()
    outs, grads = [], []
    for crop in (attention_crop, compiled):
        out = crop(images, boxes, 16, grad="both")
        outs.append(out)
        grads.append(torch.autograd.grad((out * weights).sum(), boxes)[0])
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-5)
    assert grads[0].abs().min() > 0


@pytest.mark.parametrize("impl", ["gather", "grid_sample"])
def test_a_steepness_other_than_the_default_matches_the_per_pixel_formula(impl):
    """model.crop.k reaches the mask: k = 2.5 (a soft edge over several pixels) against the
    per-pixel reference, on a non-square image and output, boxes running off the image."""
    torch.manual_seed(1)
    images = torch.rand(2, 2, 9, 11, dtype=torch.float64)
    boxes = torch.tensor([[0.4, 0.6, 0.3], [0.8, 0.2, 0.35]], dtype=torch.float64)
    out = attention_crop(images, boxes, (4, 7), k=2.5, impl=impl)
    for b in range(2):
        torch.testing.assert_close(out[b], naive_crop(images[b], boxes[b], 4, 7, k=2.5), atol=1e-10, rtol=1e-10)
