"""Statistics of the nightly A/B experiment analysis: estimates, comparisons and the decisions taken on them.

Users are hashed to variants, so the user is the unit: every metric is computed from per-user arrays and its
variance is clustered by user (a user's impressions are not independent draws). A per-impression rate such as
CTR is a ratio of per-user sums whose variance comes from the delta method (Deng, Knoblich, Lu 2018, "Applying
the Delta Method in Metric Analytics"); treating impressions as independent would understate it and let noise
pass as a win.

The protocol (`decide`) looks every night. Before the planned sample only harm can end an experiment, and only
beyond a strict boundary (|z| > 3 by default, as in an O'Brien-Fleming-style design), so nightly peeks barely
add false positives; at the planned sample comes the one fixed-horizon two-sided test.

`champion_check` guards the champion against a fall of its daily rate: each night against the same weekday in
the weeks before (a weekly cycle cancels), with the day-to-day variation beyond sampling noise in its error, and
a CUSUM over the last nights, so that one borderline night does not roll back and a sustained fall does.
"""

from __future__ import annotations

import datetime as dt
import math
import operator
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from scipy import stats

NAN = float("nan")


@dataclass(frozen=True)
class Estimate:
    """A metric with its standard error and its (1 - alpha) confidence interval, from `users` units."""

    value: float
    se: float
    low: float
    high: float
    users: int

    def as_dict(self, prefix: str) -> dict[str, float]:
        """Flat keys for MLflow metrics and report rows: prefix, prefix_se, prefix_low, prefix_high."""
        return {prefix: self.value, f"{prefix}_se": self.se, f"{prefix}_low": self.low, f"{prefix}_high": self.high}


@dataclass(frozen=True)
class Comparison:
    """Treatment against control: difference = treatment - control, lift = difference / control, with the
    z statistic, the two-sided p-value and the (1 - alpha) confidence interval of the difference."""

    control: float
    treatment: float
    difference: float
    lift: float
    se: float
    z: float
    p_value: float
    low: float
    high: float

    def as_dict(self, prefix: str) -> dict[str, float]:
        """Flat keys: prefix_control, prefix_treatment, prefix_difference, prefix_lift, prefix_se, ..."""
        return {f"{prefix}_{name}": float(value) for name, value in asdict(self).items()}


@dataclass(frozen=True)
class Decision:
    """What the protocol does next (continue, stop, promote, no_difference; the champion check: rollback,
    keep) and one plain sentence with the figures that led to it."""

    action: str
    reason: str


@lru_cache(maxsize=32)
def _z_crit(alpha: float) -> float:
    """The two-sided critical value z_(1 - alpha/2); cached because nightly loops ask for the same few alphas."""
    _check_alpha(alpha)
    return float(stats.norm.ppf(1.0 - alpha / 2.0))


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")


def _estimate(value: float, se: float, users: int, alpha: float) -> Estimate:
    """A normal-approximation interval; a nan se (too little data) gives a nan interval, never a zero-width one."""
    if math.isnan(se) or math.isnan(value):
        return Estimate(float(value), NAN, NAN, NAN, users)
    half = _z_crit(alpha) * se
    return Estimate(float(value), float(se), float(value - half), float(value + half), users)


def _per_user(values: npt.ArrayLike, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one value per user (1-D), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        # a nan would silently turn every later decision into "no data yet": fail the night instead
        raise ValueError(f"{name} holds non-finite values")
    return array


@dataclass(frozen=True)
class Sums:
    """Per-user sums of x (e.g. clicked impressions) and y (impressions) and of their products, as one
    Spark aggregation returns them: nothing per user reaches the driver."""

    n: int
    x: float
    y: float
    xx: float
    yy: float
    xy: float

    @classmethod
    def of(cls, x: npt.ArrayLike, y: npt.ArrayLike) -> Sums:
        x, y = _per_user(x, "numerators"), _per_user(y, "denominators")
        if x.shape != y.shape:
            raise ValueError(f"numerators and denominators differ in length: {x.size} vs {y.size}")
        return cls(int(x.size), float(x.sum()), float(y.sum()), float(x @ x), float(y @ y), float(x @ y))


def ratio(numerators: npt.ArrayLike, denominators: npt.ArrayLike, alpha: float = 0.05) -> Estimate:
    """sum(num) / sum(den) over per-user arrays, e.g. CTR = clicked impressions / impressions (see
    ratio_of_sums; here var(x - r y) is computed on the centred values, exact when every ratio is r)."""
    sums = Sums.of(numerators, denominators)
    if sums.y == 0.0 or sums.n < 2:
        return ratio_of_sums(sums, alpha)
    x, y = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
    r = sums.x / sums.y
    return _ratio_estimate(r, float(np.var(x - r * y, ddof=1)), sums, alpha)


def ratio_of_sums(sums: Sums, alpha: float = 0.05) -> Estimate:
    """sum(x) / sum(y) over users, with the user, not the impression, as the independent unit.

    The variance is the delta method's for a ratio of means (Deng, Knoblich, Lu 2018): var(r) ~= (var(x) -
    2 r cov(x, y) + r^2 var(y)) / (n mean(y)^2), sample moments with ddof=1, i.e. var(x - r y) / (n mean(y)^2);
    since sum(x - r y) = 0, var(x - r y) = (xx - 2 r xy + r^2 yy) / (n - 1). Users with y = 0 are allowed and
    count in n (they were assigned, so leaving them out would bias n). Fewer than 2 users or sum(y) == 0 give a
    nan se and interval.
    """
    _check_alpha(alpha)
    if sums.y == 0.0:
        return Estimate(NAN, NAN, NAN, NAN, sums.n)
    r = sums.x / sums.y
    if sums.n < 2:
        return Estimate(r, NAN, NAN, NAN, sums.n)
    spread = max(sums.xx - 2.0 * r * sums.xy + r * r * sums.yy, 0.0) / (sums.n - 1)  # rounding may dip below 0
    return _ratio_estimate(r, spread, sums, alpha)


def _ratio_estimate(r: float, spread: float, sums: Sums, alpha: float) -> Estimate:
    mean_y = sums.y / sums.n
    return _estimate(r, math.sqrt(spread / (sums.n * mean_y * mean_y)), sums.n, alpha)


def proportion(successes: int, users: int, alpha: float = 0.05) -> Estimate:
    """The share of users with the event (e.g. converted). The interval is Wilson's score interval, which stays
    inside [0, 1] and keeps its coverage near 0 and 1 where the normal one fails; se = sqrt(p (1 - p) / n)."""
    _check_alpha(alpha)
    successes, users = operator.index(successes), operator.index(users)
    if users < 0 or not 0 <= successes <= max(users, 0):
        raise ValueError(f"need 0 <= successes <= users, got {successes} of {users}")
    if users == 0:
        return Estimate(NAN, NAN, NAN, NAN, 0)
    p = successes / users
    z = _z_crit(alpha)
    z2n = z * z / users
    centre = (p + z2n / 2.0) / (1.0 + z2n)
    half = z / (1.0 + z2n) * math.sqrt(p * (1.0 - p) / users + z2n / (4.0 * users))
    return Estimate(p, math.sqrt(p * (1.0 - p) / users), max(centre - half, 0.0), min(centre + half, 1.0), users)


def mean(values: npt.ArrayLike, alpha: float = 0.05) -> Estimate:
    """The mean of a per-user value (e.g. events per user) with a normal interval, se = std(ddof=1) / sqrt(n)."""
    _check_alpha(alpha)
    x = _per_user(values, "values")
    n = int(x.size)
    if n == 0:
        return Estimate(NAN, NAN, NAN, NAN, 0)
    if n < 2:
        return Estimate(float(x[0]), NAN, NAN, NAN, n)
    return _estimate(float(x.mean()), float(x.std(ddof=1)) / math.sqrt(n), n, alpha)


def mean_of_sums(n: int, total: float, squares: float, alpha: float = 0.05) -> Estimate:
    """mean() from a Spark aggregation's n, sum and sum of squares."""
    _check_alpha(alpha)
    if n == 0:
        return Estimate(NAN, NAN, NAN, NAN, 0)
    if n < 2:
        return Estimate(total, NAN, NAN, NAN, n)
    variance = max(squares - total * total / n, 0.0) / (n - 1)  # rounding may dip below 0
    return _estimate(total / n, math.sqrt(variance / n), n, alpha)


def _z_and_p(difference: float, se: float) -> tuple[float, float]:
    """z = difference / se with its two-sided p; a zero se (no spread at all) is a certain difference or none."""
    if math.isnan(difference) or math.isnan(se):
        return NAN, NAN
    if se == 0.0:
        z = 0.0 if difference == 0.0 else math.copysign(math.inf, difference)
    else:
        z = difference / se
    return z, float(2.0 * stats.norm.sf(abs(z)))


def _lift(difference: float, control: float) -> float:
    return difference / control if control != 0.0 and not math.isnan(control) else NAN


def compare(control: Estimate, treatment: Estimate, alpha: float = 0.05) -> Comparison:
    """Unpooled z test of treatment - control. The two estimates are independent because users are split
    between the variants, so the variance of the difference is the sum of the two variances."""
    _check_alpha(alpha)
    difference = treatment.value - control.value
    se = math.hypot(control.se, treatment.se)
    z, p = _z_and_p(difference, se)
    half = _z_crit(alpha) * se
    return Comparison(control.value, treatment.value, difference, _lift(difference, control.value), se, z, p,
                      difference - half, difference + half)


def compare_proportions(control_successes: int, control_users: int, treatment_successes: int, treatment_users: int,
                        alpha: float = 0.05) -> Comparison:
    """Two-proportion z-test on users. z and p use the pooled variance (exact under the null of equal rates);
    `se` and the interval of the difference use the unpooled one (the null no longer holds for an interval)."""
    control = proportion(control_successes, control_users, alpha)
    treatment = proportion(treatment_successes, treatment_users, alpha)
    difference = treatment.value - control.value
    if control.users == 0 or treatment.users == 0:
        return Comparison(control.value, treatment.value, NAN, NAN, NAN, NAN, NAN, NAN, NAN)
    pooled = (control_successes + treatment_successes) / (control.users + treatment.users)
    pooled_se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / control.users + 1.0 / treatment.users))
    z, p = _z_and_p(difference, pooled_se)
    se = math.hypot(control.se, treatment.se)
    half = _z_crit(alpha) * se
    return Comparison(control.value, treatment.value, difference, _lift(difference, control.value), se, z, p,
                      difference - half, difference + half)


def _figures(comparison: Comparison, metric: str) -> str:
    lift = "lift n/a" if math.isnan(comparison.lift) else f"{comparison.lift:+.1%}"
    return (f"treatment {metric} {comparison.treatment:.4g} vs control {comparison.control:.4g} "
            f"({lift}, z={comparison.z:.2f}")


def decide(comparison: Comparison, users_per_variant: int, min_users: int, *, alpha: float = 0.05,
           harm_z: float = 3.0, metric: str = "CTR@10") -> Decision:
    """The experiment protocol, applied at every nightly look.

    Before the planned sample (users_per_variant < min_users) only harm ends the experiment: "stop" when
    z < -harm_z, a strict interim boundary (O'Brien-Fleming style) so that nightly peeks add little to the false
    positive rate; otherwise "continue". At the planned sample comes the one fixed-horizon look: p < alpha
    (two-sided) and difference > 0 -> "promote"; p < alpha and difference < 0 -> "stop"; else "no_difference"
    (the experiment ends and the champion stays). A nan z or p (no data) -> "continue".
    """
    _check_alpha(alpha)
    if min_users < 1 or users_per_variant < 0:
        raise ValueError(f"need min_users >= 1 and users_per_variant >= 0, got {min_users} and {users_per_variant}")
    if harm_z <= 0.0:
        raise ValueError(f"harm_z must be positive, got {harm_z}")
    users = f"{users_per_variant:,} users per variant"
    if math.isnan(comparison.z) or math.isnan(comparison.p_value):
        return Decision("continue", f"no data yet for {metric} after {users}: continuing")
    figures = _figures(comparison, metric)
    if users_per_variant < min_users:
        if comparison.z < -harm_z:
            return Decision("stop", f"{figures}) is worse beyond the early-stop boundary |z|>{harm_z:g} after "
                                    f"{users}: stopped")
        return Decision("continue", f"{figures}) is within the early-stop boundary |z|>{harm_z:g} after {users} of "
                                    f"{min_users:,} planned: continuing")
    result = f"{figures}, p={comparison.p_value:.3g}) after {users} (planned {min_users:,})"
    if comparison.p_value < alpha and comparison.difference > 0:
        return Decision("promote", f"{result} is significantly better at alpha={alpha:g}: promoted")
    if comparison.p_value < alpha and comparison.difference < 0:
        return Decision("stop", f"{result} is significantly worse at alpha={alpha:g}: stopped")
    return Decision("no_difference", f"{result} shows no significant difference at alpha={alpha:g}: "
                                     f"ended, champion kept")


@dataclass(frozen=True)
class NightVsBaseline:
    """One night's rate against its weekday baseline, on the log scale (a fall is a ratio).

    baseline: the geometric mean of the rates of the same weekday in the weeks before (`weeks` of them), so
    a weekly cycle cancels; change = rate / baseline - 1. se is that of log(rate / baseline): the night's
    own sampling error (delta method, per user), the baseline nights' and, on each of them, the day-to-day
    variation beyond sampling noise (`spread`, the standard deviation of a log rate, from the weeks before).
    z = log(rate / baseline) / se.
    """

    night: dt.date
    rate: float
    baseline: float
    change: float
    z: float
    se: float
    spread: float
    weeks: int

    def as_dict(self, prefix: str) -> dict[str, float]:
        """Flat keys: prefix_rate, prefix_baseline, prefix_change, prefix_z, prefix_se, ..."""
        return {f"{prefix}_{name}": float(value) for name, value in asdict(self).items() if name != "night"}


@dataclass(frozen=True)
class ChampionCheck:
    """The champion check's verdict: action ("rollback" or "keep") and a sentence with the figures; the
    nights judged in the window (oldest first); the CUSUM tonight and the run of nights it sums (`run`
    nights, whose rates fell by `fall` against their baselines, as a geometric mean)."""

    action: str
    reason: str
    nights: tuple[NightVsBaseline, ...]
    cusum: float
    run: int
    fall: float

    @property
    def tonight(self) -> NightVsBaseline | None:
        return self.nights[-1] if self.nights else None

    def as_dict(self) -> dict[str, float]:
        """Flat keys for MLflow: tonight_* (see NightVsBaseline) and cusum, cusum_nights, cusum_fall."""
        tonight = self.tonight.as_dict("tonight") if self.tonight else {}
        return {**tonight, "cusum": self.cusum, "cusum_nights": float(self.run), "cusum_fall": self.fall}


def _log_rate(estimate: Estimate | None) -> tuple[float, float] | None:
    """(log rate, its variance by the delta method, (se / rate)^2); None when the night has no usable rate."""
    if estimate is None or not estimate.value > 0.0 or not math.isfinite(estimate.value) or not math.isfinite(
            estimate.se):
        return None
    return math.log(estimate.value), (estimate.se / estimate.value) ** 2


def day_spread(nightly: Mapping[dt.date, Estimate], before: dt.date, weeks: int = 5) -> float:
    """The day-to-day standard deviation of the log rate beyond sampling noise, tau, from the `weeks` weeks
    of nights before `before`, the weekly cycle removed.

    Method of moments (random effects): each night's log rate is its weekday's level plus noise of variance
    v_j + tau^2, v_j its delta-method variance. The sum of squares about the weekday means, SS, has
    expectation sum_weekdays (1 - 1/n_w) sum_j v_j + df tau^2 with df = nights - weekdays seen, so
    tau^2 = max(0, (SS - sum (1 - 1/n_w) v_j) / df); 0 without a degree of freedom. Nights of another
    quality (a fall the rollback missed, an outage) raise it, which only makes the check more careful.
    """
    groups: dict[int, list[tuple[float, float]]] = {}
    for back in range(1, 7 * weeks + 1):
        day = before - dt.timedelta(days=back)
        logged = _log_rate(nightly.get(day))
        if logged is not None:
            groups.setdefault(back % 7, []).append(logged)
    squares = expected = 0.0
    df = 0
    for rows in groups.values():
        level = sum(log for log, _ in rows) / len(rows)
        squares += sum((log - level) ** 2 for log, _ in rows)
        expected += (1.0 - 1.0 / len(rows)) * sum(variance for _, variance in rows)
        df += len(rows) - 1
    return math.sqrt(max(squares - expected, 0.0) / df) if df else 0.0


def weekday_baseline(nightly: Mapping[dt.date, Estimate], night: dt.date, weeks: int = 5,
                     min_weeks: int = 2) -> NightVsBaseline | None:
    """The night against the same weekday in the `weeks` weeks before (see NightVsBaseline); None when the
    night has no rate or fewer than `min_weeks` of those nights have one (a week missing is skipped)."""
    if weeks < 1 or not 1 <= min_weeks <= weeks:
        raise ValueError(f"need 1 <= min_weeks <= weeks, got {min_weeks} and {weeks}")
    tonight = _log_rate(nightly.get(night))
    same_weekday = [_log_rate(nightly.get(night - dt.timedelta(days=7 * w))) for w in range(1, weeks + 1)]
    same_weekday = [logged for logged in same_weekday if logged is not None]
    if tonight is None or len(same_weekday) < min_weeks:
        return None
    spread = day_spread(nightly, night, weeks)
    tau2, count = spread * spread, len(same_weekday)
    level = sum(log for log, _ in same_weekday) / count
    variance = tonight[1] + tau2 + sum(v + tau2 for _, v in same_weekday) / (count * count)
    difference = tonight[0] - level
    se = math.sqrt(variance)
    z = difference / se if se > 0.0 else (0.0 if difference == 0.0 else math.copysign(math.inf, difference))
    return NightVsBaseline(night, math.exp(tonight[0]), math.exp(level), math.expm1(difference), z, se, spread,
                           count)


def champion_check(nightly: Mapping[dt.date, Estimate], tonight: dt.date, *, weeks: int = 5, window: int = 7,
                   k: float = 1.0, h: float = 1.4, drop: float = 0.05, min_weeks: int = 2,
                   metric: str = "CTR@10") -> ChampionCheck:
    """Automatic rollback of the champion: has its rate fallen, against the same weekday in the weeks
    before, for long enough and by enough?

    Each night of the last `window` (tonight included) is judged against its weekday baseline
    (weekday_baseline: z). The statistic is a one-sided CUSUM (Page 1954) of the nightly falls, S =
    max(0, the largest sum of (-z_i - k) over the runs of consecutive judged nights ending tonight): one
    night must be worse than k + h standard errors, two consecutive nights together worse than 2k + h, and so
    on, so a borderline night alone never rolls back, a sustained fall is caught within a night or two, and a
    collapse at once. It is recomputed every night from the stored nights (no state carried between
    nights); a night without a judgement (no traffic, too little history) ends a run.

    "rollback" when S > h AND the run's nights fell more than `drop` (relative, their geometric mean against
    their baselines): a significant 1% fall on millions of impressions is not worth a rollback. Else "keep".
    nightly: each night's rate (ratio_of_sums of its per-user sums), by day; it needs `weeks` weeks and
    `window` - 1 nights of history before tonight to judge every night of the window.
    """
    if window < 1 or k < 0.0 or h <= 0.0:
        raise ValueError(f"need window >= 1, k >= 0 and h > 0, got {window}, {k} and {h}")
    if not 0.0 <= drop < 1.0:
        raise ValueError(f"drop must lie in [0, 1), got {drop}")
    judged = [weekday_baseline(nightly, tonight - dt.timedelta(days=back), weeks, min_weeks)
              for back in range(window - 1, -1, -1)]
    last = judged[-1]
    if last is None:
        said = "has no rate" if _log_rate(nightly.get(tonight)) is None else (
            f"has fewer than {min_weeks} {tonight:%A}s with a rate in the {weeks} weeks before")
        return ChampionCheck("keep", f"tonight's {metric} {said}: nothing to compare it with, champion kept",
                             (), 0.0, 0, NAN)
    run: list[NightVsBaseline] = []
    for night in reversed(judged):
        if night is None:
            break
        run.insert(0, night)
    nights = tuple(run)
    best, total, length = 0.0, 0.0, 0
    for back, night in enumerate(reversed(run), start=1):
        total += -night.z - k
        if total > best:
            best, length = total, back
    fell = math.expm1(sum(math.log1p(n.change) for n in run[-length:]) / length) if length else 0.0
    said = (f"tonight's {metric} {last.rate:.4g} vs its weekday baseline {last.baseline:.4g} (the geometric mean of "
            f"{last.weeks} {last.night:%A}s before: {last.change:+.1%}, z={last.z:.2f} with a day-to-day spread of "
            f"{last.spread:.1%}); CUSUM of the nightly falls (sum of -z-{k:g}")
    said += (f" over the last {length} night{'s' if length > 1 else ''}, which fell {fell:+.1%}) S={best:.2f}"
             if length else ") S=0")
    if best > h and fell < -drop:
        return ChampionCheck("rollback", f"{said} > {h:g} and the fall is more than {drop:.0%}: rolled back",
                             nights, best, length, fell)
    if best > h:
        return ChampionCheck("keep", f"{said} > {h:g} but the fall is not more than {drop:.0%}: kept", nights,
                             best, length, fell)
    return ChampionCheck("keep", f"{said} <= {h:g}: kept", nights, best, length, fell)


def required_users(base_rate: float, relative_lift: float, impressions_per_user: float, icc_inflation: float = 1.0,
                   alpha: float = 0.05, power: float = 0.8) -> int:
    """Users per variant to detect `relative_lift` on a per-impression rate with a two-sided alpha and `power`.

    Normal approximation: n = (z_(1-alpha/2) + z_power)^2 * deff * (p_c (1 - p_c) + p_t (1 - p_t)) / (m delta^2),
    p_t = p_c (1 + relative_lift), delta = p_t - p_c, m = impressions per user. With independent impressions a
    user's rate would have variance p (1 - p) / m; users differ in their own click probability and in their number
    of impressions, which the design effect deff = icc_inflation >= 1 absorbs. Estimate it from a pilot (or
    yesterday's champion traffic) as deff = n se^2 m / (r (1 - r)), with r, se and n from `ratio` and m the mean
    impressions per user. The interim harm looks of `decide` cost a negligible share of the power.
    """
    _check_alpha(alpha)
    if not 0.0 < power < 1.0:
        raise ValueError(f"power must lie in (0, 1), got {power}")
    treated = base_rate * (1.0 + relative_lift)
    if not (0.0 < base_rate < 1.0 and 0.0 < treated < 1.0) or relative_lift == 0.0:
        raise ValueError(f"need 0 < base_rate, base_rate * (1 + lift) < 1 and a non-zero lift, got {base_rate} "
                         f"and {relative_lift}")
    if impressions_per_user <= 0.0 or icc_inflation <= 0.0:
        raise ValueError(f"impressions_per_user and icc_inflation must be positive, got {impressions_per_user} "
                         f"and {icc_inflation}")
    z = _z_crit(alpha) + float(stats.norm.ppf(power))
    variance = icc_inflation * (base_rate * (1.0 - base_rate) + treated * (1.0 - treated)) / impressions_per_user
    return math.ceil(z * z * variance / (treated - base_rate) ** 2)


def decide_variants(comparisons: dict[str, Comparison], users: dict[str, int], min_users: int, *,
                    alpha: float = 0.05, harm_z: float = 3.0, metric: str = "CTR@10") -> tuple[Decision, str | None]:
    """The protocol with one or more treatments, each compared with the control (users: per variant,
    the control's included). Each treatment is judged by decide() at alpha / treatments (Bonferroni),
    all at the sample of the smallest arm, so that every treatment has its one decisive look on the
    same night. A treatment worse beyond its boundary stops the experiment; then the treatment that
    won with the largest lift is promoted, or none. Returns the decision and the winner (when promoting)."""
    adjusted = alpha / max(len(comparisons), 1)
    smallest = min(users.values())
    decisions = {name: decide(comparison, smallest, min_users, alpha=adjusted, harm_z=harm_z, metric=metric)
                 for name, comparison in comparisons.items()}
    said = "; ".join(f"{name}: {decision.reason}" for name, decision in decisions.items())
    if any(d.action == "stop" for d in decisions.values()):
        return Decision("stop", said), None
    if any(d.action == "continue" for d in decisions.values()):
        return Decision("continue", said), None
    winners = [name for name, d in decisions.items() if d.action == "promote"]
    if winners:
        best = max(winners, key=lambda name: comparisons[name].lift)
        return Decision("promote", said), best
    return Decision("no_difference", said), None
