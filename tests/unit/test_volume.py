"""The volume and mix checks' judgement: a robust z-score against the trailing days, on traffic with a
weekly cycle and Poisson noise."""

import numpy as np

from nightrec.data import volume
from nightrec.settings import load_settings

V = load_settings().volume


def history(days: int = 14, events: float = 20_000, seed: int = 0) -> list[dict[str, float]]:
    """Days with a +-8% weekly cycle and Poisson noise; clicks a fifth of the events."""
    rng = np.random.default_rng(seed)
    out = []
    for n in range(days):
        level = events * (1 + 0.08 * np.sin(2 * np.pi * n / 7))
        clicks = float(rng.poisson(level / 5))
        views = float(rng.poisson(level - level / 5))
        out.append({"events": clicks + views, "events:click": clicks, "events:view": views,
                    "users": float(rng.poisson(level / 4)), "new_user_share": 0.05 + rng.normal(0, 0.005),
                    "top_user_share": 0.001})
    return out


def bands(today: dict[str, float], past: list[dict[str, float]]) -> dict[str, str]:
    return {f.metric: f.band for f in volume.judge(today, past, V)}


def scaled(day: dict[str, float], factor: float) -> dict[str, float]:
    return {k: v * factor if not k.endswith("share") else v for k, v in day.items()}


def test_an_ordinary_day_of_the_weekly_cycle_is_ok_on_every_figure():
    past = history(15)
    for seed in range(5):
        assert set(bands(history(15, seed=seed)[-1], past[:-1]).values()) == {"ok"}
    low_weekday = min(past[:-1], key=lambda d: d["events"])
    assert set(bands(scaled(low_weekday, 0.97), past[:-1]).values()) == {"ok"}


def test_a_tenth_of_the_usual_traffic_fails_and_thirty_percent_more_warns():
    past = history()
    typical = {k: float(np.median([d[k] for d in past])) for k in past[0]}
    thin = bands(scaled(typical, 0.1), past)
    assert thin["events"] == thin["events:click"] == thin["users"] == "fail"
    busy = bands(scaled(typical, 1.3), past)
    assert busy["events"] == "warn" and volume.worst_band(volume.judge(scaled(typical, 1.3), past, V)) == "warn"


def test_an_event_type_flooding_in_and_one_client_sending_everything_fail():
    past = history()
    typical = {k: float(np.median([d[k] for d in past])) for k in past[0]}
    assert bands({**typical, "events:purchase": 5_000.0}, past)["events:purchase"] == "fail"  # never seen before
    assert bands({**typical, "top_user_share": 0.6}, past)["top_user_share"] == "fail"
    assert bands({**typical, "new_user_share": 0.11}, past)["new_user_share"] == "warn"


def test_a_short_history_is_profiled_not_judged_and_findings_say_what_was_compared():
    past = history(V.min_history_days - 1)
    assert volume.judge(past[-1], past, V) == []
    (finding,) = [f for f in volume.judge({"events": 2_000.0}, history(), V) if f.metric == "events"]
    assert finding.band == "fail" and finding.text().startswith("events 2,000 (usually 19,")
    assert "-90%" in finding.text() and finding.z < -V.fail_z
