"""Label-driven localisers: what trains the APNs in ``alternate_apn`` when it should say *where*.

The rank loss (``losses.py``) compares the confidence of neighbouring scales along each APN's one
square: it says whether the finer scale is more confident, not where a better square is, and from
the centre square it moves all squares alike (docs/rank-loss.md). A localiser scores *other*
squares: for each image and APN, ``candidates`` squares around the APN's current one are cropped
and classified by the next scale, both without gradient, and the log-probability of the true class
ranks them. The APN is then moved towards the better ones:

- ``best_of_k`` (a navigator taught by the classifier's confidence, as in NTS-Net): the squares are
  the current one plus draws of a Gaussian of spread ``sigma`` around it; the APN regresses (MSE)
  its square onto their mean weighted by softmax(score / ``temperature``) (at temperature 1 the
  weights are proportional to the true-class probability);
- ``reinforce`` (REINFORCE with a leave-one-out baseline, as in the recurrent attention model): the
  APN's square is the mean of a Gaussian of spread ``sigma`` over (tx, ty, tl); the reward of a draw
  is its score, its baseline the mean reward of the other draws of the same image, and the loss is
  -mean((reward - baseline) x log density of the draw).
- ``search`` (a search over the whole view, as NTS-Net's navigator scores anchors all over the
  image): the squares, all of half side ``tl``, are one at the current square's centre and
  ``candidates`` centred uniformly where they fit in the view; the APN regresses (MSE) its square
  onto the best of them. The two above look around the current square, so a square on a decoy has
  nothing better near it to learn from; this one finds the part wherever it is. Its size is fixed,
  like init_apn's targets: a square free to grow can score by seeing more instead of looking closer.

``train.alternate.localiser`` chooses one (``rank``: the rank loss, ``phases.AlternateAPN``). Draws
are clipped into the APN's bounds (``clamp_squares``) before they are cropped; REINFORCE's density
is that of the unclipped draw, the clipping being part of how the reward is computed. A square of
APN s > 1 lives in the view of scale s, so it is composed with that view's square
(``compose_boxes``) and cropped from the full-resolution input, as in the forward pass. Each APN
gets gradient from its own loss only: the features it reads come from a forward pass without
gradient.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Normal

from .models.boxes import clamp_squares, compose_boxes, full_image_boxes

LOCALISERS = ("rank", "best_of_k", "reinforce", "search")  # train.alternate.localiser


def true_class_log_prob(logits: Tensor, target: Tensor) -> Tensor:
    """log p_t of each row of ``logits`` [N, C] (in float32), [N]."""
    return F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)


def draw_squares(square: Tensor, count: int, sigma: float) -> Tensor:
    """``count`` draws of a Gaussian of spread ``sigma`` around each square [B, 3]: [B, count, 3]."""
    noise = torch.randn(len(square), count, 3, device=square.device, dtype=torch.float32)
    return square.detach().float()[:, None, :] + sigma * noise


def spread_squares(square: Tensor, count: int, tl: float, apn) -> Tensor:
    """1 + ``count`` squares [B, 1 + count, 3] of half side ``tl`` (within ``apn``'s bounds): the
    first at the centre of each square [B, 3], the others centred uniformly where they fit in the
    view (anywhere in it without ``keep_inside``)."""
    tl = min(max(float(tl), apn.tl_min), apn.tl_max)
    margin = tl if apn.keep_inside else 0.0
    centres = margin + torch.rand(len(square), count, 2, device=square.device) * (1 - 2 * margin)
    centres = torch.cat((square.detach().float()[:, None, :2], centres), dim=1)
    return torch.cat((centres, torch.full_like(centres[..., :1], tl)), dim=2)


def best_square_loss(square: Tensor, candidates: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
    """(MSE of ``square`` [B, 3] to the goal, the goal [B, 3]): the goal is the candidate [B, K, 3]
    with the highest score [B, K] (the first of equal ones)."""
    goal = candidates[torch.arange(len(candidates), device=candidates.device), scores.argmax(dim=1)]
    goal = goal.detach().float()
    return F.mse_loss(square.float(), goal), goal


def clip_squares(squares: Tensor, apn) -> Tensor:
    """Squares [B, K, 3] clipped into ``apn``'s bounds (half side, inside its view)."""
    flat = clamp_squares(squares.reshape(-1, 3), apn.tl_min, apn.tl_max, apn.keep_inside)
    return flat.reshape(squares.shape)


@torch.no_grad()
def square_scores(model, images: Tensor, parent: Tensor | None, squares: Tensor, target: Tensor,
                  scale: int) -> Tensor:
    """log p_t of scale ``scale`` (0 = scale 1) on each of ``squares`` [B, K, 3], squares relative
    to the view whose square in the input is ``parent`` [B, 3] (None: the whole input): [B, K].
    The B x K crops go through the scale at once, without gradient."""
    b, k = squares.shape[:2]
    if parent is None:
        parent = full_image_boxes(b, squares.device, torch.float32)
    boxes = compose_boxes(parent.float().repeat_interleave(k, 0), squares.reshape(b * k, 3))
    crops = model.crop(images.repeat_interleave(k, 0), boxes, model.input_sizes[scale])
    logits = model.scales[scale](crops)[0]
    return true_class_log_prob(logits, target.repeat_interleave(k)).reshape(b, k)


def best_of_k_loss(square: Tensor, candidates: Tensor, scores: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """(MSE of ``square`` [B, 3] to the goal, the goal [B, 3]): the goal is the mean of
    ``candidates`` [B, K, 3] weighted by softmax(``scores`` [B, K] / ``temperature``)."""
    weights = torch.softmax(scores.float() / temperature, dim=1)
    goal = (weights[..., None] * candidates.float()).sum(dim=1).detach()
    return F.mse_loss(square.float(), goal), goal


def leave_one_out_baseline(rewards: Tensor) -> Tensor:
    """For each of the K rewards [B, K] of an image, the mean of the other K - 1."""
    k = rewards.shape[1]
    return (rewards.sum(dim=1, keepdim=True) - rewards) / (k - 1)


def reinforce_loss(square: Tensor, draws: Tensor, rewards: Tensor, sigma: float) -> Tensor:
    """-mean((r - b) log pi(draw)) with pi = N(``square`` [B, 3], sigma^2 I) over the ``draws``
    [B, K, 3], r = ``rewards`` [B, K], b their leave-one-out baseline."""
    advantage = (rewards - leave_one_out_baseline(rewards)).detach().float()
    log_pi = Normal(square.float()[:, None, :], sigma).log_prob(draws.detach().float()).sum(dim=-1)
    return -(advantage * log_pi).mean()


class Localiser:
    """The loss of every APN of a model from its candidates' scores; subclasses say which
    candidates and which loss (``apn_loss``)."""

    name = ""

    def __init__(self, candidates: int, sigma: float, temperature: float, tl: float = 0.25):
        self.candidates, self.sigma, self.temperature = int(candidates), float(sigma), float(temperature)
        self.tl = float(tl)

    def loss(self, model, images: Tensor, target: Tensor, part_boxes: Tensor | None):
        """(sum of the APNs' losses, {TensorBoard tag: term}, the forward pass's logits per scale)."""
        with torch.no_grad():
            out = model(images, part_boxes=part_boxes)
        total, terms = torch.zeros((), device=images.device), {}
        for s, apn in enumerate(model.proposers):
            square = apn(out.maps[s])  # the APN's square again, now with its gradient
            parent = out.abs_boxes[s - 1] if s else None
            current = true_class_log_prob(out.logits[s + 1], target)  # the next scale on the current square
            loss, extra = self.apn_loss(model, images, target, apn, square, parent, current, s + 1)
            total = total + loss
            terms.update({f"train/{tag}_apn{s + 1}": value.detach() for tag, value in extra.items()})
        return total, terms, out.logits

    def apn_loss(self, model, images, target, apn, square, parent, current, scale) -> tuple[Tensor, dict]:
        """(loss of one APN, its terms) for its ``square`` [B, 3] (with gradient), whose crop scale
        ``scale`` (0-based) scores ``current`` [B]."""
        raise NotImplementedError

    @staticmethod
    def common_terms(current: Tensor, scores: Tensor) -> dict:
        """The current square's mean log p_t and the fraction of candidates that beat it."""
        return {"loc_current": current.mean(), "loc_better": (scores > current[:, None]).float().mean()}


class BestOfK(Localiser):
    name = "best_of_k"

    def apn_loss(self, model, images, target, apn, square, parent, current, scale):
        draws = clip_squares(draw_squares(square, self.candidates, self.sigma), apn)
        scores = square_scores(model, images, parent, draws, target, scale)
        candidates = torch.cat((square.detach().float()[:, None], draws), dim=1)
        loss, goal = best_of_k_loss(square, candidates, torch.cat((current[:, None], scores), dim=1),
                                    self.temperature)
        shift = (goal - square.detach()).abs().mean()
        return loss, {"loc_mse": loss, "loc_shift": shift, **self.common_terms(current, scores)}


class Reinforce(Localiser):
    name = "reinforce"

    def apn_loss(self, model, images, target, apn, square, parent, current, scale):
        draws = draw_squares(square, self.candidates, self.sigma)
        rewards = square_scores(model, images, parent, clip_squares(draws, apn), target, scale)
        loss = reinforce_loss(square, draws, rewards, self.sigma)
        return loss, {"loc_pg": loss, "loc_reward": rewards.mean(), **self.common_terms(current, rewards)}


class Search(Localiser):
    name = "search"

    def apn_loss(self, model, images, target, apn, square, parent, current, scale):
        candidates = clip_squares(spread_squares(square, self.candidates, self.tl, apn), apn)
        scores = square_scores(model, images, parent, candidates, target, scale)
        loss, goal = best_square_loss(square, candidates, scores)
        shift = (goal - square.detach()).abs().mean()
        return loss, {"loc_mse": loss, "loc_shift": shift, **self.common_terms(current, scores[:, 1:])}


LOCALISER_CLASSES: dict[str, type[Localiser]] = {c.name: c for c in (BestOfK, Reinforce, Search)}


def build_localiser(alternate: dict) -> Localiser:
    """The localiser ``train.alternate.localiser`` names (not ``rank``), with ``train.alternate.localise``."""
    opts = alternate["localise"]
    return LOCALISER_CLASSES[alternate["localiser"]](opts["candidates"], opts["sigma"], opts["temperature"], opts["tl"])
