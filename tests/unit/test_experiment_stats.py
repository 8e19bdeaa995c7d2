import math
from collections import Counter

import numpy as np
import pytest

from nightrec.modeling.experiment_stats import (
    Comparison,
    Estimate,
    compare,
    compare_proportions,
    decide,
    mean,
    proportion,
    ratio,
    required_users,
    rollback_check,
)

Z95 = 1.959963984540054  # norm.ppf(0.975)


# --- estimates ---------------------------------------------------------------------------------------------------

def test_ratio_hand_computed_delta_method():
    clicks = [1, 0, 2, 1]
    impressions = [4, 2, 5, 1]
    # r = 4 / 12 = 1/3; mean(x) = 1, mean(y) = 3
    # var(x) = (0 + 1 + 1 + 0) / 3 = 2/3; var(y) = (1 + 1 + 4 + 4) / 3 = 10/3
    # cov(x, y) = (0*1 + (-1)(-1) + 1*2 + 0*(-2)) / 3 = 1
    # var(r) = (2/3 - 2 (1/3) 1 + (1/9)(10/3)) / (4 * 3^2) = (10/27) / 36 = 10/972
    got = ratio(clicks, impressions)
    se = math.sqrt(10 / 972)
    assert got.value == pytest.approx(1 / 3)
    assert got.se == pytest.approx(se)
    assert (got.low, got.high) == pytest.approx((1 / 3 - Z95 * se, 1 / 3 + Z95 * se))
    assert got.users == 4


def test_ratio_is_wider_than_the_naive_binomial_when_users_differ():
    # all clicks from one heavy user: impressions are not independent, the clustered se must say so
    clicks = [10, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    impressions = [10] * 10
    got = ratio(clicks, impressions)
    naive = math.sqrt(0.1 * 0.9 / 100)
    assert got.value == pytest.approx(0.1)
    assert got.se == pytest.approx(math.sqrt(0.1) / math.sqrt(10))  # var(x)/mean(y)^2/n = 10/100/10
    assert got.se > 3 * naive


def test_ratio_counts_users_without_impressions():
    got = ratio([1, 0, 2, 1, 0], [4, 2, 5, 1, 0])
    assert got.value == pytest.approx(1 / 3)
    assert got.users == 5
    assert got.se > 0


def test_ratio_without_enough_data_has_no_interval():
    one = ratio([1], [4])
    assert one.value == pytest.approx(0.25) and math.isnan(one.se) and math.isnan(one.low) and math.isnan(one.high)
    empty = ratio([0, 0], [0, 0])
    assert math.isnan(empty.value) and math.isnan(empty.se) and empty.users == 2
    constant = ratio([1, 2], [10, 20])  # every user at r exactly: no spread
    assert constant.se == pytest.approx(0.0, abs=1e-12)


def test_ratio_rejects_bad_input():
    with pytest.raises(ValueError, match="length"):
        ratio([1, 2], [3])
    with pytest.raises(ValueError, match="non-finite"):
        ratio([1, float("nan")], [3, 4])
    with pytest.raises(ValueError, match="alpha"):
        ratio([1, 2], [3, 4], alpha=0)


def test_proportion_wilson_interval_known_value():
    got = proportion(10, 100)
    # Wilson: centre = (0.1 + z^2/200) / (1 + z^2/100), half = z / (1 + z^2/100) * sqrt(0.0009 + z^2/40000)
    assert got.value == pytest.approx(0.1)
    assert got.se == pytest.approx(0.03)
    assert got.low == pytest.approx(0.0552, abs=1e-4)
    assert got.high == pytest.approx(0.1744, abs=1e-4)
    assert got.users == 100


def test_proportion_edges():
    zero = proportion(0, 20)
    assert zero.low == 0.0 and 0.15 < zero.high < 0.17  # Wilson: z^2/(n + z^2) = 3.8415/23.8415 = 0.161
    assert zero.high == pytest.approx(Z95**2 / (20 + Z95**2))
    none = proportion(0, 0)
    assert math.isnan(none.value) and none.users == 0
    with pytest.raises(ValueError):
        proportion(5, 4)


def test_mean_hand_computed():
    got = mean([1, 2, 3, 6])
    # mean 3, var = (4 + 1 + 0 + 9) / 3 = 14/3, se = sqrt(14/3) / 2
    se = math.sqrt(14 / 3) / 2
    assert got.value == pytest.approx(3.0)
    assert got.se == pytest.approx(se)
    assert (got.low, got.high) == pytest.approx((3 - Z95 * se, 3 + Z95 * se))
    assert math.isnan(mean([5]).se)


def test_estimate_as_dict():
    assert Estimate(0.1, 0.01, 0.08, 0.12, 50).as_dict("ctr_at_10") == {
        "ctr_at_10": 0.1, "ctr_at_10_se": 0.01, "ctr_at_10_low": 0.08, "ctr_at_10_high": 0.12}


# --- comparisons -------------------------------------------------------------------------------------------------

def test_compare_unpooled():
    got = compare(Estimate(0.10, 0.03, 0, 0, 100), Estimate(0.15, 0.04, 0, 0, 100))
    # se = sqrt(0.03^2 + 0.04^2) = 0.05; z = 0.05 / 0.05 = 1; p = 2 (1 - Phi(1)) = 0.3173
    assert got.difference == pytest.approx(0.05)
    assert got.lift == pytest.approx(0.5)
    assert got.se == pytest.approx(0.05)
    assert got.z == pytest.approx(1.0)
    assert got.p_value == pytest.approx(0.31731, abs=1e-5)
    assert (got.low, got.high) == pytest.approx((0.05 - Z95 * 0.05, 0.05 + Z95 * 0.05))
    assert math.isnan(compare(Estimate(0.0, 0.01, 0, 0, 9), Estimate(0.1, 0.01, 0, 0, 9)).lift)
    assert math.isnan(compare(Estimate(0.1, math.nan, 0, 0, 1), Estimate(0.1, 0.01, 0, 0, 9)).p_value)


def test_compare_proportions_known_example():
    got = compare_proportions(200, 1000, 250, 1000)
    # pooled p = 450 / 2000 = 0.225; pooled se = sqrt(0.225 * 0.775 * (1/1000 + 1/1000)) = 0.018675
    # z = (0.25 - 0.20) / 0.018675 = 2.6774, two-sided p = 0.0074
    pooled_se = math.sqrt(0.225 * 0.775 * 2 / 1000)
    # unpooled se = sqrt(0.2 * 0.8 / 1000 + 0.25 * 0.75 / 1000) = sqrt(0.0003475) = 0.018641
    se = math.sqrt(0.0003475)
    assert got.z == pytest.approx(0.05 / pooled_se)
    assert got.z == pytest.approx(2.6774, abs=1e-4)
    assert got.p_value == pytest.approx(0.00742, abs=1e-5)
    assert got.se == pytest.approx(se)
    assert (got.low, got.high) == pytest.approx((0.05 - Z95 * se, 0.05 + Z95 * se))
    assert got.lift == pytest.approx(0.25)


def test_comparison_as_dict():
    got = compare_proportions(200, 1000, 250, 1000).as_dict("converted")
    assert set(got) == {f"converted_{k}" for k in ("control", "treatment", "difference", "lift", "se", "z",
                                                   "p_value", "low", "high")}
    assert got["converted_treatment"] == pytest.approx(0.25)


# --- the protocol ------------------------------------------------------------------------------------------------

def _comparison(control: float, treatment: float, z: float, p: float) -> Comparison:
    difference = treatment - control
    return Comparison(control, treatment, difference, difference / control, abs(difference / z), z, p, 0.0, 0.0)


def test_decide_interim_stops_only_beyond_the_harm_boundary():
    worse = _comparison(0.0602, 0.0531, -3.41, 0.00065)
    got = decide(worse, 4120, 10_000)
    assert got.action == "stop"
    assert "0.0531" in got.reason and "0.0602" in got.reason and "-11.8%" in got.reason
    assert "z=-3.41" in got.reason and "4,120" in got.reason and "|z|>3" in got.reason
    # significant at 0.05 but within the interim boundary: keep looking
    assert decide(_comparison(0.0602, 0.0570, -2.5, 0.012), 4120, 10_000).action == "continue"
    # a big win before the planned sample is not promoted early
    assert decide(_comparison(0.0602, 0.0680, 4.0, 6e-5), 4120, 10_000).action == "continue"


def test_decide_at_the_planned_sample():
    assert decide(_comparison(0.060, 0.063, 2.2, 0.028), 10_000, 10_000).action == "promote"
    assert decide(_comparison(0.060, 0.057, -2.2, 0.028), 10_500, 10_000).action == "stop"
    ended = decide(_comparison(0.060, 0.061, 1.2, 0.23), 10_000, 10_000, metric="conversion")
    assert ended.action == "no_difference"
    assert "conversion" in ended.reason and "champion kept" in ended.reason


def test_decide_without_data_continues():
    empty = compare(ratio([], []), ratio([], []))
    got = decide(empty, 0, 10_000)
    assert got.action == "continue" and "no data" in got.reason
    assert decide(empty, 20_000, 10_000).action == "continue"


def test_decide_rejects_a_bad_plan():
    with pytest.raises(ValueError):
        decide(_comparison(0.06, 0.06, 0.1, 0.9), 10, 0)


def test_rollback_on_a_large_significant_fall():
    baseline = proportion(60_000, 1_000_000)  # 0.060
    today = proportion(5_400, 100_000)  # 0.054: -10%, z = -0.006 / sqrt(7.15e-4^2 + 2.37e-4^2) = -7.96
    got = rollback_check(today, baseline)
    assert got.action == "rollback"
    assert "0.054" in got.reason and "0.06" in got.reason and "-10.0%" in got.reason and "p=" in got.reason


def test_keep_when_the_fall_is_not_significant():
    baseline = proportion(600, 10_000)
    today = proportion(54, 1_000)  # -10% but z = -0.006 / sqrt(7.15e-3^2 + 2.37e-3^2) = -0.80, p = 0.21
    got = rollback_check(today, baseline)
    assert got.action == "keep" and "not significantly" in got.reason


def test_keep_when_the_fall_is_small_even_if_significant():
    baseline = proportion(60_000, 1_000_000)
    today = proportion(58_200, 1_000_000)  # -3%: z = -0.0018 / 3.33e-4 = -5.4, significant but below the 5% drop
    got = rollback_check(today, baseline)
    assert got.action == "keep" and "-3.0%" in got.reason
    assert rollback_check(today, baseline, drop=0.02).action == "rollback"


def test_keep_without_figures():
    missing = Estimate(math.nan, math.nan, math.nan, math.nan, 0)
    assert rollback_check(missing, proportion(600, 10_000)).action == "keep"
    assert rollback_check(proportion(1, 10), proportion(0, 10)).action == "keep"


def test_required_users_hand_computed():
    # p_c = 0.10, p_t = 0.11, m = 1: n = (1.95996 + 0.84162)^2 (0.09 + 0.0979) / 0.01^2 = 7.84888 * 1879 = 14748.0
    assert required_users(0.10, 0.10, 1.0) == 14749
    # more impressions per user shrink it, a design effect inflates it
    assert required_users(0.10, 0.10, 5.0) == math.ceil(14748.04 / 5)
    assert required_users(0.10, 0.10, 5.0, icc_inflation=2.0) == math.ceil(2 * 14748.04 / 5)
    with pytest.raises(ValueError):
        required_users(0.10, 0.0, 5.0)


# --- the protocol under simulation -------------------------------------------------------------------------------

LOOKS = 6  # five interim nights, then the planned sample

# Users' own click probability ~ Beta(2, 30), impressions ~ 1 + Poisson(5). The design effect of CTR against
# independent impressions: var(x - p y) per user / (E[y] p (1 - p)), with
#   E[p] = 2/32 = 0.0625, var(p) = 2*30 / (32^2 * 33) = 0.0017756, E[p(1-p)] = 0.0625 - 0.0017756 - 0.0625^2 = 0.056818
#   E[y] = 6, E[y^2] = 5 + 36 = 41
#   var(x - p y) = E[y] E[p(1-p)] + E[y^2] var(p) = 0.340909 + 0.072800 = 0.413709
#   deff = 0.413709 / (6 * 0.0625 * 0.9375) = 1.1768
BASE_RATE = 0.0625
DEFF = (6 * (0.0625 - 60 / (1024 * 33) - 0.0625**2) + 41 * 60 / (1024 * 33)) / (6 * 0.0625 * 0.9375)


def _users(rng: np.random.Generator, sims: int, users: int, lift: float) -> tuple[np.ndarray, np.ndarray]:
    p = rng.beta(2, 30, size=(sims, users)) * (1 + lift)
    impressions = rng.poisson(5, size=(sims, users)) + 1
    return rng.binomial(impressions, p), impressions


def _run(rng: np.random.Generator, sims: int, min_users: int, lift: float) -> Counter:
    """The terminal action of each simulated experiment: nightly looks at a growing sample until one ends it."""
    control = _users(rng, sims, min_users, 0.0)
    treatment = _users(rng, sims, min_users, lift)
    outcomes = Counter()
    for s in range(sims):
        for night in range(1, LOOKS + 1):
            n = math.ceil(night * min_users / LOOKS)
            comparison = compare(ratio(control[0][s, :n], control[1][s, :n]),
                                 ratio(treatment[0][s, :n], treatment[1][s, :n]))
            action = decide(comparison, n, min_users).action
            if action != "continue":
                break
        outcomes[action] += 1
    return outcomes


def test_design_effect_of_the_simulation():
    assert DEFF == pytest.approx(1.1768, abs=1e-4)
    clicks, impressions = _users(np.random.default_rng(3), 1, 200_000, 0.0)
    pilot = ratio(clicks[0], impressions[0])
    # a pilot's estimate as required_users documents it: n se^2 m / (r (1 - r))
    estimated = pilot.users * pilot.se**2 * impressions.mean() / (pilot.value * (1 - pilot.value))
    assert estimated == pytest.approx(DEFF, rel=0.05)


def test_aa_false_positive_rate_of_the_protocol():
    outcomes = _run(np.random.default_rng(20240611), sims=400, min_users=2000, lift=0.0)
    assert outcomes["continue"] == 0  # the last look is at the planned sample: every experiment ends
    false_positive = (outcomes["stop"] + outcomes["promote"]) / 400
    assert 0.03 <= false_positive <= 0.08, outcomes


def test_power_at_the_required_sample():
    min_users = required_users(BASE_RATE, 0.10, 6.0, icc_inflation=DEFF, power=0.8)
    assert 4500 < min_users < 5200  # 7.849 * 1.1768 * (0.058594 + 0.064023) / 6 / 0.00625^2 = 4833
    outcomes = _run(np.random.default_rng(20240612), sims=200, min_users=min_users, lift=0.10)
    assert outcomes["promote"] / 200 >= 0.70, outcomes


def test_the_spark_path_from_sums_agrees_with_per_user_arrays():
    from nightrec.modeling.experiment_stats import Sums, ratio_of_sums

    rng = np.random.default_rng(5)
    impressions = rng.poisson(4, 5000) + 1
    clicks = rng.binomial(impressions, rng.beta(2, 30, 5000))
    from_arrays, from_sums = ratio(clicks, impressions), ratio_of_sums(Sums.of(clicks, impressions))
    assert from_sums.value == pytest.approx(from_arrays.value, rel=1e-12)
    assert from_sums.se == pytest.approx(from_arrays.se, rel=1e-9) and from_sums.users == 5000


def test_a_mean_from_sums_agrees_with_the_array_mean():
    from nightrec.modeling.experiment_stats import mean_of_sums

    values = np.array([1.0, 2.0, 3.0, 6.0])
    expected = mean(values)
    got = mean_of_sums(4, values.sum(), float(values @ values))
    assert (got.value, got.users) == (expected.value, 4) and got.se == pytest.approx(expected.se, rel=1e-12)


def test_several_treatments_are_judged_against_the_control_with_a_shared_alpha():
    from nightrec.modeling.experiment_stats import Comparison, decide_variants

    def versus(z: float) -> Comparison:  # control 0.10, se 0.01
        return Comparison(0.10, 0.10 + 0.01 * z, 0.01 * z, 0.1 * z, 0.01, z, 2 * (1 - _normal_cdf(abs(z))), 0, 0)

    users = {"control": 5000, "b": 5000, "c": 5000}
    decision, winner = decide_variants({"b": versus(2.2), "c": versus(0.5)}, users, 1000)
    assert (decision.action, winner) == ("no_difference", None)  # p = 0.028 > 0.05 / 2
    decision, winner = decide_variants({"b": versus(2.6), "c": versus(3.5)}, users, 1000)
    assert (decision.action, winner) == ("promote", "c") and decision.reason.startswith("b: ")
    decision, _ = decide_variants({"b": versus(-3.2), "c": versus(1.0)}, {**users, "b": 400}, 1000)
    assert decision.action == "stop"  # before the planned sample, b is worse beyond the boundary
    decision, _ = decide_variants({"b": versus(1.0), "c": versus(1.0)}, {**users, "c": 400}, 1000)
    assert decision.action == "continue"  # c's arm is short of the plan


def _normal_cdf(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))
