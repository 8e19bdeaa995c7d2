import datetime as dt
import math
from collections import Counter

import numpy as np
import pytest

from nightrec.modeling.experiment_stats import (
    Comparison,
    Estimate,
    champion_check,
    compare,
    compare_proportions,
    day_spread,
    decide,
    mean,
    proportion,
    ratio,
    required_users,
    weekday_baseline,
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


# --- the champion check ------------------------------------------------------------------------------------------

MONDAY = dt.date(2026, 11, 30)


def _night(rate: float, relative_se: float) -> Estimate:
    return Estimate(rate, rate * relative_se, math.nan, math.nan, 20_000)


def _steady(weeks: int, relative_se: float, cycle=(1.0,) * 7, before: dt.date = MONDAY) -> dict[dt.date, Estimate]:
    """`weeks` weeks of nights before `before` at 0.2 x the weekday's factor, without noise."""
    return {before - dt.timedelta(days=back): _night(0.2 * cycle[(before - dt.timedelta(days=back)).weekday()],
                                                     relative_se)
            for back in range(1, 7 * weeks + 1)}


def test_weekday_baseline_hand_computed():
    # two weeks; each weekday's two nights at its level x exp(+-0.03), relative se 0.02 (v = 0.0004):
    # SS = 14 * 0.03^2 = 0.0126, df = 14 - 7 = 7, expected sampling part = 7 * (1 - 1/2) * 2v = 0.0028
    # -> tau^2 = (0.0126 - 0.0028) / 7 = 0.0014
    nightly = {}
    for back in range(1, 15):
        day = MONDAY - dt.timedelta(days=back)
        level = 0.2 if day.weekday() == 0 else 0.15 + 0.01 * day.weekday()
        nightly[day] = _night(level * math.exp(0.03 if back <= 7 else -0.03), 0.02)
    nightly[MONDAY] = _night(0.16, 0.02)
    assert day_spread(nightly, MONDAY, weeks=2) == pytest.approx(math.sqrt(0.0014))
    got = weekday_baseline(nightly, MONDAY, weeks=2)
    # baseline: the geometric mean of the two Mondays, 0.2; var = v + tau^2 + 2 (v + tau^2) / 2^2 = 0.0027
    assert (got.rate, got.baseline, got.change, got.weeks) == pytest.approx((0.16, 0.2, -0.2, 2))
    assert got.se == pytest.approx(math.sqrt(0.0027)) and got.z == pytest.approx(math.log(0.8) / math.sqrt(0.0027))
    assert got.spread == pytest.approx(math.sqrt(0.0014)) and got.night == MONDAY


def test_the_weekly_cycle_cancels():
    cycle = (1.0, 1.04, 1.08, 1.04, 1.0, 0.92, 0.92)  # Monday .. Sunday: +-8%
    nightly = _steady(5, 0.02, cycle, before=MONDAY + dt.timedelta(days=6))
    sunday = MONDAY + dt.timedelta(days=6)
    nightly[sunday] = _night(0.2 * 0.92, 0.02)  # the low weekday, 8% under the week's mean: no fall
    got = champion_check(nightly, sunday)
    assert got.action == "keep" and got.tonight.change == pytest.approx(0.0) and got.cusum == 0.0
    assert "vs its weekday baseline 0.184 (the geometric mean of 5 Sundays before: +0.0%" in got.reason


def _with_falls(zs: list[float], relative_se: float = 0.03) -> dict[dt.date, Estimate]:
    """Five steady weeks, then the last nights (tonight last) at the given z against their weekday baseline;
    no spread, so z = log(change) / (relative_se * sqrt(1 + 1/5)) while no fallen night is in a baseline."""
    nightly = _steady(5, relative_se, before=MONDAY - dt.timedelta(days=len(zs) - 1))
    for back, z in enumerate(reversed(zs)):
        nightly[MONDAY - dt.timedelta(days=back)] = _night(0.2 * math.exp(z * relative_se * math.sqrt(1.2)),
                                                           relative_se)
    return nightly


def test_one_borderline_night_is_kept_two_in_a_row_are_rolled_back():
    one = champion_check(_with_falls([0.0, -2.0]), MONDAY)
    assert one.action == "keep" and one.tonight.z == pytest.approx(-2.0)
    assert one.cusum == pytest.approx(1.0) and one.run == 1 and "S=1.00 <= 1.4: kept" in one.reason
    two = champion_check(_with_falls([-2.0, -2.0]), MONDAY)  # the first fallen night raises tonight's spread
    assert two.action == "rollback" and two.run == 2 and two.cusum > 1.4
    assert two.cusum == pytest.approx(sum(-n.z - 1.0 for n in two.nights[-2:]))
    assert two.fall == pytest.approx(math.expm1((math.log1p(two.nights[-2].change) + math.log1p(
        two.nights[-1].change)) / 2))
    assert "over the last 2 nights" in two.reason and "> 1.4 and the fall is more than 5%: rolled back" in two.reason


def test_a_collapse_is_rolled_back_at_once_and_a_recovered_night_ends_it():
    assert champion_check(_with_falls([-3.0]), MONDAY).action == "rollback"  # -3 - 1 = 2 > 1.4
    later = champion_check(_with_falls([-2.0, 0.5]), MONDAY)  # S: 1, then max(0, 1 - 0.5 - 1) = 0
    assert later.action == "keep" and later.cusum == 0.0 and later.run == 0 and "S=0 <= 1.4: kept" in later.reason


def test_a_significant_but_small_fall_is_kept():
    nightly = _with_falls([-12.0, -12.0], relative_se=0.001)  # millions of impressions: a 1.3% fall is z = -12
    got = champion_check(nightly, MONDAY)
    assert got.action == "keep" and got.cusum > 1.4 and -0.05 < got.fall < 0
    assert "but the fall is not more than 5%: kept" in got.reason
    assert champion_check(nightly, MONDAY, drop=0.01).action == "rollback"


def test_keep_without_tonight_or_enough_history():
    nightly = _steady(1, 0.02)
    nightly[MONDAY] = _night(0.1, 0.02)
    got = champion_check(nightly, MONDAY)
    assert got.action == "keep" and "fewer than 2 Mondays with a rate in the 5 weeks before" in got.reason
    assert got.nights == () and got.as_dict() == {"cusum": 0.0, "cusum_nights": 0.0, "cusum_fall": got.fall}
    assert "has no rate" in champion_check(_steady(5, 0.02), MONDAY).reason
    nightly = _steady(5, 0.02)
    nightly[MONDAY] = Estimate(0.0, 0.0, 0.0, 0.0, 10)  # nothing clicked: no log rate
    assert champion_check(nightly, MONDAY).action == "keep"
    with pytest.raises(ValueError):
        weekday_baseline(nightly, MONDAY, weeks=2, min_weeks=3)


def test_a_night_without_traffic_ends_the_run():
    nightly = _with_falls([-2.0, -2.0, -2.0])
    del nightly[MONDAY - dt.timedelta(days=1)]
    got = champion_check(nightly, MONDAY)
    assert got.run == 1 and len(got.nights) == 1  # the night before the gap is not summed


def test_false_rollbacks_and_detection_with_unmodelled_day_to_day_noise():
    """Nightly rates with a weekly cycle and day-to-day noise (sd 3%) the reported se (2%) does not know of: the
    spread from the weeks before keeps false rollbacks under 1 in 90 nights (at most one per 7-night window, as
    analyze rolls back), and a sustained -12% fall is caught within 2 nights."""
    rng = np.random.default_rng(17)
    cycle = 1 + 0.08 * np.sin(2 * np.pi * np.arange(7) / 7)
    false, caught, series, steady = 0, 0, 60, 30
    for _ in range(series):
        days = [MONDAY + dt.timedelta(days=n) for n in range(41 + steady + 2)]
        level = 0.2 * cycle[[d.weekday() for d in days]] * np.exp(rng.normal(0, 0.03, len(days)))
        level[-2:] *= 0.88
        nightly = {d: _night(float(r), 0.02) for d, r in zip(days, level)}
        fired = [champion_check(nightly, d).action == "rollback" for d in days[41:]]
        last = -7
        for night in range(steady):
            if fired[night] and night - last >= 7:
                false, last = false + 1, night
        caught += any(fired[steady:])
    assert false / (series * steady) * 90 <= 1.0, false
    assert caught / series >= 0.9, caught


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
