"""Seed statistics of the ablation tables against hand-computed values."""
import importlib.util
import math
from pathlib import Path

import pytest

from conftest import DEFAULT_CONFIG, TINY, load_script
from raccnn.config import load_config
from raccnn.stats import mcnemar_exact, paired_difference, resampled_leads, split_leads, t_interval

T_975_DF2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # Student t, 97.5 % quantile, 2 d.f.: (2p-1)/sqrt(2p(1-p))
T_975_DF4 = 2.776445105  # 4 d.f., from printed tables


def test_t_interval_of_three_values():
    ci = t_interval([1.0, 2.0, 3.0])
    half = T_975_DF2 * 1.0 / math.sqrt(3)  # std of 1, 2, 3 is exactly 1
    assert (ci.mean, ci.std, ci.n) == (2.0, 1.0, 3)
    assert ci.lo == pytest.approx(2 - half, abs=1e-12) and ci.hi == pytest.approx(2 + half, abs=1e-12)
    assert not ci.excludes_zero


def test_t_interval_of_five_values_and_the_degenerate_cases():
    ci = t_interval([0.8, 0.9, 0.85, 0.75, 0.95])
    std = math.sqrt(sum((v - 0.85) ** 2 for v in [0.8, 0.9, 0.85, 0.75, 0.95]) / 4)
    assert ci.mean == pytest.approx(0.85) and ci.std == pytest.approx(std)
    assert ci.hi - ci.mean == pytest.approx(T_975_DF4 * std / math.sqrt(5), rel=1e-9)
    one = t_interval([0.7, None])
    assert one.mean == 0.7 and one.std == 0 and math.isnan(one.lo) and not one.excludes_zero
    assert t_interval([]).n == 0


def test_pairing_by_seed_finds_a_difference_that_the_spread_over_seeds_hides():
    row = {0: 0.80, 1: 0.70, 2: 0.90}
    base = {0: 0.70, 1: 0.65, 2: 0.80, 3: 0.99}  # seed 3 has no partner and is left out
    d = paired_difference(row, base)
    diffs = [0.10, 0.05, 0.10]
    std = math.sqrt(sum((x - sum(diffs) / 3) ** 2 for x in diffs) / 2)
    assert d.n == 3 and d.mean == pytest.approx(0.25 / 3)
    assert d.lo == pytest.approx(0.25 / 3 - T_975_DF2 * std / math.sqrt(3))
    assert d.excludes_zero
    # the rows' own intervals overlap: compared unpaired the difference would not show
    assert t_interval(list(row.values())).lo < t_interval(list(base.values())[:3]).hi


def test_the_table_shows_intervals_paired_differences_and_marks(tmp_path):
    spec = importlib.util.spec_from_file_location("ablation", Path("experiments/ablation.py"))
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    cfg = load_config(DEFAULT_CONFIG, TINY)

    def runs(s2):
        return {seed: {"num_classes": 3, "images_per_s": 10.0, "acc_scale1": 0.5, "acc_scale2": v,
                       "acc_scale3": 0.6, "acc_fused123": v + 0.01, "part_hit_scale2": 0.9}
                for seed, v in enumerate(s2)}

    base, better, noisy = runs([0.70, 0.65, 0.80]), runs([0.80, 0.70, 0.90]), runs([0.60, 0.90, 0.70])
    rows = [ablation.summarise(n, r, base, cfg, [0, 1, 2]) for n, r in (("base", base), ("better", better),
                                                                       ("noisy", noisy))]
    for r in rows:
        r["baseline"] = "base"
    assert rows[1]["acc_scale2_diff"] == pytest.approx(0.25 / 3) and rows[1]["acc_scale2_diff_excludes_zero"]
    assert not rows[2]["acc_scale2_diff_excludes_zero"]
    ablation.write_results(tmp_path, rows)
    md = (tmp_path / "results.md").read_text().splitlines()
    better_line = next(line for line in md if line.startswith("| better |"))
    noisy_line = next(line for line in md if line.startswith("| noisy |"))
    assert "80.0 ± 10.0 [" in better_line and "+8.3 [+1.2, +15.5] *" in better_line
    assert "+1.7 [" in noisy_line and "] *" not in noisy_line
    legend = next(line for line in md if "Student-t" in line)
    assert "(base)" in legend and md[-1] == "![paired differences from the baseline, 95 % t-intervals](forest.png)"
    header = (tmp_path / "results.csv").read_text().splitlines()[0]
    assert "acc_scale2_ci_lo" in header and "acc_fused_all_diff_ci_hi" in header


def test_exact_mcnemar_against_hand_computed_binomial_tails():
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 2**5)  # 2 P(X = 0), X ~ Bin(5, 1/2)
    assert mcnemar_exact(8, 2) == pytest.approx(2 * (1 + 10 + 45) / 2**10)  # 2 P(X <= 2), X ~ Bin(10, 1/2)
    assert mcnemar_exact(2, 8) == mcnemar_exact(8, 2)
    assert mcnemar_exact(3, 3) == pytest.approx(1.0) and mcnemar_exact(0, 0) == 1.0


def test_an_interval_wholly_below_zero_excludes_zero():
    """A row significantly worse than its baseline gets its mark too: mean −1, sd 0.1, n 3 gives
    hi = −1 + 4.303 · 0.1 / √3 ≈ −0.75 < 0."""
    ci = t_interval([-1.0, -1.1, -0.9])
    assert ci.hi == pytest.approx(-1 + 4.302653 * 0.1 / 3 ** 0.5, abs=1e-5) and ci.excludes_zero


def test_a_heads_lead_on_redrawn_test_sets_against_counted_draws():
    """Three images: the head gets 0 and 1 right, scale A 0 and 2, scale B 1 and 2. A redrawn test
    set holds them c0, c1, c2 times (c0 + c1 + c2 = 3, multinomial with 1/3 each): the head is below
    A when c2 > c1 (10 of the 27 ordered draws) and below the better of A and B when
    c2 > min(c0, c1) (13 of 27: the best scale is taken on each draw). Two images, the head right
    on one, the scale on the other: the lead is +1, 0, -1 with probability 1/4, 1/2, 1/4 (sd 1/sqrt 2)."""
    head, a, b = [1, 1, 0], [1, 0, 1], [0, 1, 1]
    assert (resampled_leads(head, [a], draws=200_000) < 0).mean() == pytest.approx(10 / 27, abs=0.005)
    assert (resampled_leads(head, [a, b], draws=200_000) < 0).mean() == pytest.approx(13 / 27, abs=0.005)
    two = resampled_leads([1, 0], [[0, 1]], draws=200_000)
    assert sorted(set(two)) == [-1.0, 0.0, 1.0] and (two < 0).mean() == pytest.approx(1 / 4, abs=0.005)
    assert two.mean() == pytest.approx(0.0, abs=0.005) and two.std() == pytest.approx(0.5 ** 0.5, abs=0.005)
    # never below: a tie is not below, and a head right wherever some scale is
    assert (resampled_leads(a, [a]) == 0).all() and (resampled_leads([1, 1, 1], [a, b]) >= 0).all()


def test_fused_lead_reads_a_runs_predictions_and_reports_the_head_against_its_best_scale(tmp_path, capsys):
    rows = [("0", "0", "0", "1"), ("1", "1", "0", "0"), ("2", "0", "2", "2")]  # label, fused, scale 1, scale 2
    lines = ["image,label,fused123_pred,scale1_pred,scale2_pred"] + [f"img{i}.png," + ",".join(r)
                                                                    for i, r in enumerate(rows)]
    (tmp_path / "predictions.csv").write_text("\n".join(lines) + "\n")
    assert load_script("experiments/fused_lead.py").main([str(tmp_path), "--draws", "200000"]) == 0
    out = capsys.readouterr().out.splitlines()
    # the head gets images 0 and 1 right, scale 1 images 0 and 2, scale 2 image 2 only: as in
    # test_a_heads_lead_on_redrawn_test_sets_against_counted_draws, below on 10 of 27 draws
    assert out[1].split()[1:7] == ["3", "66.7", "scale1", "66.7", "%", "+0.0"]
    assert out[1].split()[7] == "1.00" and float(out[1].split()[9]) == pytest.approx(10 / 27, abs=0.01)
    assert out[-1].startswith("1 runs: 0 below their best scale; mean lead +0.0 points; a redrawn test set moves")
    (tmp_path / "predictions.csv").write_text("image,label,scale1_pred\nimg0.png,0,0\n")
    with pytest.raises(SystemExit, match="fused123_pred"):
        load_script("experiments/fused_lead.py").main([str(tmp_path)])
    with pytest.raises(SystemExit):
        load_script("experiments/fused_lead.py").main([str(tmp_path), "--draws", "0"])
    assert "--draws must be at least 1, got 0" in capsys.readouterr().err


def test_a_heads_lead_on_smaller_splits_against_the_hypergeometric_count():
    """One class of 10 images: the head alone right on 2, the scale alone on 1, both on 7. A split
    of 3 drawn without replacement holds h head-only and s scale-only images; the head is below when
    s > h, i.e. s = 1 and h = 0: C(1,1) C(7,2) / C(10,3) = 21/120. A split of all 10 is the set
    itself (lead +1/10 every time). Two classes split evenly: each class's draw is its own."""
    head = [1, 1, 0] + [1] * 7
    scale = [0, 0, 1] + [1] * 7
    leads = split_leads(head, [scale], [0] * 10, per_class=3, draws=200_000)
    assert (leads < 0).mean() == pytest.approx(math.comb(7, 2) / math.comb(10, 3), abs=0.004)
    assert (split_leads(head, [scale], [0] * 10, per_class=10, draws=50) == 0.1).all()
    # class 1 always puts the head one image ahead (2 images, both head-only, both drawn); class 0 as above
    two = split_leads(head + [1, 1], [scale + [0, 0]], [0] * 10 + [1, 1], per_class=2, draws=200_000)
    # class 0 with 2 of 10 drawn: s - h = +1 when s = 1, h = 0: C(7,1)/C(10,2) = 7/45; plus 2 from class 1
    assert (two < 0).mean() == 0 and (two == 1 / 4).mean() == pytest.approx(7 / 45, abs=0.004)
    with pytest.raises(ValueError, match="class 1 has 2 images, fewer than the 3"):
        split_leads(head + [1, 1], [scale + [0, 0]], [0] * 10 + [1, 1], per_class=3)


def test_fused_lead_splits_a_large_test_set_into_smaller_ones(tmp_path, capsys):
    """The one-class case of test_a_heads_lead_on_smaller_splits_against_the_hypergeometric_count,
    written as predictions: below on 21/120 of the splits of 3 images; with two such runs every
    run is at or above with probability (99/120)^2."""
    head = ["1", "1", "0"] + ["1"] * 7  # predictions; every label is 1
    scale = ["0", "0", "1"] + ["1"] * 7
    lines = ["image,label,fused123_pred,scale1_pred"] + [f"img{i}.png,1,{h},{s}" for i, (h, s) in enumerate(zip(head, scale))]
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "predictions.csv").write_text("\n".join(lines) + "\n")
    fused_lead = load_script("experiments/fused_lead.py").main
    assert fused_lead([str(tmp_path / "a"), str(tmp_path / "b"), "--per-class", "3", "--draws", "200000"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[-1] == "3/class" and len(out) == 5
    for line in out[1:3]:
        assert line.split()[6] == "+10.0" and float(line.split()[-1]) == pytest.approx(21 / 120, abs=0.004)
    p_all = float(out[-1].split("probability ")[1].split(";")[0])
    assert out[-1].startswith("on test splits of 3 images per class, one per run") and \
        p_all == pytest.approx((99 / 120) ** 2, abs=0.006)
    with pytest.raises(SystemExit, match="--per-class 11: class 1 has 10 images, fewer than the 11 of a split"):
        fused_lead([str(tmp_path / "a"), "--per-class", "11"])
