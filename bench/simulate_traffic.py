"""Traffic simulator for online experiments: does the nightly analysis find what is there, and only that?

    PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python bench/simulate_traffic.py analysis --sims 400 \
        --seed 1 --seed 2 --seed 3
    .venv/bin/python bench/simulate_traffic.py service --scenario aa
    .venv/bin/python bench/simulate_traffic.py service --scenario lift
    .venv/bin/python bench/simulate_traffic.py service --scenario drift

The click model: user u clicks something in the top 10 of an answer with probability q_u ~ Beta(2, 8)
(mean 0.2), times (1 + effect) in the treatment and (1 + drift) on a drifting night; the rank clicked
falls off as 1/rank; 1 in 10 clicks is followed by a purchase. `service` keeps the simple traffic: a user
who visits on a night asks for 1 + Poisson(2) answers.

`analysis` draws realistic traffic in numpy (see VISITS, PARETO, AMPLITUDE below: users with their own
visit rates, heavy-tailed answers per visit so a few users have hundreds a night, a weekly cycle of
+-8% in CTR) and applies the analysis' own statistics (nightrec.modeling.experiment_stats: per-user
sums, delta-method CTR, the nightly experiment decision, the champion check) to many simulated
experiments and champions: the A/A false-positive rate and the power for +10% CTR at the stated sample
size; false rollbacks of a steady champion per 90 nights, and the nights until a sustained -10% fall
is rolled back, for the rule analyze used before (tonight against the 7 nights before) and the
champion check, side by side. With several --seed, the median over the seeds (lowest-highest) closes.

`service` runs one scenario for real: synthetic landing data, ingest, validate, two trained model
versions (the second replaced the first, so there is a rollback target), an experiment started,
score and publish, then `nightrec serve`, users asking it over HTTP and posting clicks with the
request ids it answered, the drain, ingest, validate and the analyze stage, whose decision is printed.
The drift scenario writes the two previous weeks' traffic as landing files (history) and sends
tonight's through the service.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from statistics import NormalDist

import numpy as np

from nightrec.modeling.experiment_stats import (
    Estimate,
    Sums,
    champion_check,
    compare,
    decide_variants,
    ratio_of_sums,
    required_users,
)

HOME = Path(__file__).resolve().parents[1]
BASE_RATE, BETA = 0.2, (2.0, 8.0)     # per-answer click probability: q_u ~ Beta(2, 8), mean 0.2
ANSWERS, VISIT = 2.0, 0.5             # answers per visit: 1 + Poisson(2); a user visits on a night with p 0.5
NIGHTS, K, PURCHASE = 7, 10, 0.1
SERVICE_HISTORY = 14                  # nights of history the drift scenario writes before tonight


@dataclass
class Traffic:
    """Per user: propensity, and answers and clicks per night (users x nights)."""

    q: np.ndarray
    answers: np.ndarray
    clicks: np.ndarray


def draw(rng: np.random.Generator, users: int, nights: int, multiplier: np.ndarray | float = 1.0) -> Traffic:
    """multiplier: of the click probability, per night (a drift) or one number (an effect)."""
    q = rng.beta(*BETA, users)
    visits = rng.random((users, nights)) < VISIT
    answers = np.where(visits, 1 + rng.poisson(ANSWERS, (users, nights)), 0)
    p = np.clip(q[:, None] * np.broadcast_to(multiplier, (nights,))[None, :], 0, 1)
    return Traffic(q, answers, rng.binomial(answers, p))


def sums(traffic: Traffic, nights: slice) -> Sums:
    """Per-user sums over some nights, of the users shown anything then."""
    y = traffic.answers[:, nights].sum(axis=1).astype(float)
    x = traffic.clicks[:, nights].sum(axis=1).astype(float)
    shown = y > 0
    return Sums.of(x[shown], y[shown])


# --- `analysis`: many simulated experiments and champion nights through the analysis' statistics ---

# Realistic traffic (what `analysis` draws). A user's own click probability q_u ~ Beta(2, 8) as above; a user
# visits on a night with their own probability v_u ~ Beta(0.5, 1.5) (mean 0.25: a pool of 80,000 users for
# 20,000 a night; most rarely come, a few every night); each visit asks for floor(Pareto(1.3) from 1) answers,
# at most 5,000 (59% ask once, 17% twice; of 20,000 a night about 50 ask 100 times or more, 6 over 500); and
# the click probability follows a weekly cycle, x (1 + 0.08 sin(2 pi (day + phase) / 7)) by default.
VISITS = (0.5, 1.5)
PARETO, MAX_ANSWERS = 1.3, 5000
AMPLITUDE = 0.08
HISTORY, STEADY, FALL_NIGHTS, FALL = 41, 90, 14, -0.10  # 5 weeks + 6 nights before the first steady night


def visit_share() -> float:
    return VISITS[0] / (VISITS[0] + VISITS[1])


def answers_per_visit(rng: np.random.Generator, shape) -> np.ndarray:
    return np.minimum(np.floor(rng.pareto(PARETO, shape) + 1.0), MAX_ANSWERS)


def weekly(rng: np.random.Generator, nights: int, amplitude: float) -> np.ndarray:
    return 1.0 + amplitude * np.sin(2 * np.pi * (np.arange(nights) + rng.integers(7)) / 7)


def draw_heavy(rng: np.random.Generator, users: int, nights: int, multiplier: np.ndarray | float = 1.0) -> Traffic:
    """Experiment traffic under the realistic model: per user, answers and clicks per night."""
    q = rng.beta(*BETA, users)
    visits = rng.random((users, nights)) < rng.beta(*VISITS, users)[:, None]
    answers = np.where(visits, answers_per_visit(rng, (users, nights)), 0).astype(np.int64)
    p = np.clip(q[:, None] * np.broadcast_to(multiplier, (nights,))[None, :], 0, 1)
    return Traffic(q, answers, rng.binomial(answers, p))


def design_effect(rng: np.random.Generator, nights: int) -> tuple[float, float, float]:
    """(deff, impressions per user, share of users who visit at all) of the click model over `nights`, from a
    large pilot."""
    pilot = draw_heavy(rng, 200_000, nights)
    s = sums(pilot, slice(0, nights))
    estimate = ratio_of_sums(s)
    m = s.y / s.n
    return s.n * estimate.se ** 2 * m / (estimate.value * (1 - estimate.value)), m, s.n / 200_000


def experiment(rng: np.random.Generator, per_arm: int, min_users: int, effect: float, amplitude: float) -> str:
    """One simulated A/B test looked at every night until its decision."""
    cycle = weekly(rng, NIGHTS, amplitude)
    arms = {"control": draw_heavy(rng, per_arm, NIGHTS, cycle),
            "treatment": draw_heavy(rng, per_arm, NIGHTS, cycle * (1 + effect))}
    action = "continue"
    for night in range(1, NIGHTS + 1):
        estimates = {name: sums(t, slice(0, night)) for name, t in arms.items()}
        comparison = compare(ratio_of_sums(estimates["control"]), ratio_of_sums(estimates["treatment"]))
        decision, _ = decide_variants({"treatment": comparison}, {n: s.n for n, s in estimates.items()}, min_users)
        action = decision.action
        if action != "continue":
            break
    return action


Z_ALPHA = NormalDist().inv_cdf(0.05)


def trailing_rule(today: Estimate, baseline: Estimate, drop: float = 0.05) -> bool:
    """The rule the champion check applied before, for comparison: tonight's rate against the 7 nights before
    pooled per user, rolled back when it fell more than `drop` and a one-sided z test gives p < 0.05."""
    z = (today.value - baseline.value) / math.hypot(today.se, baseline.se)
    return today.value < (1 - drop) * baseline.value and z < Z_ALPHA


@dataclass
class ChampionRun:
    """One simulated champion: which nights each rule rolled back (steady nights, then a sustained fall)."""

    old: np.ndarray   # bool per judged night
    new: np.ndarray


def champion_run(rng: np.random.Generator, users: int, amplitude: float, fall: float = FALL) -> ChampionRun:
    """HISTORY nights, STEADY nights of the same quality, then FALL_NIGHTS with the click probability x (1 +
    fall), from one population of users; every night from HISTORY on is judged by both rules as analyze
    would: the old one on per-user sums pooled over the 7 nights before, the new one (champion_check with
    the default settings) on one Sums per night."""
    pool = int(round(users / visit_share()))
    q, v = rng.beta(*BETA, pool), rng.beta(*VISITS, pool)
    nights = HISTORY + STEADY + FALL_NIGHTS
    multiplier = weekly(rng, nights, amplitude)
    multiplier[HISTORY + STEADY:] *= 1 + fall
    first = dt.date(2024, 1, 1)
    nightly: dict[dt.date, Estimate] = {}
    drawn: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    trailing_x, trailing_y = np.zeros(pool), np.zeros(pool)
    old, new = np.zeros(nights - HISTORY, bool), np.zeros(nights - HISTORY, bool)
    x_ = settings_experiments()
    for night in range(nights):
        shown = np.flatnonzero(rng.random(pool) < v)
        y = answers_per_visit(rng, shown.size)
        x = rng.binomial(y.astype(np.int64), np.clip(q[shown] * multiplier[night], 0, 1)).astype(float)
        today = ratio_of_sums(Sums(int(shown.size), float(x.sum()), float(y.sum()), float(x @ x), float(y @ y),
                                   float(x @ y)))
        day = first + dt.timedelta(days=night)
        nightly[day] = today
        if night >= HISTORY:
            seen = trailing_y > 0
            baseline = ratio_of_sums(Sums.of(trailing_x[seen], trailing_y[seen]))
            old[night - HISTORY] = trailing_rule(today, baseline, x_.rollback_drop)
            new[night - HISTORY] = champion_check(
                nightly, day, weeks=x_.baseline_weeks, window=x_.rollback_window, k=x_.rollback_k,
                h=x_.rollback_h, drop=x_.rollback_drop).action == "rollback"
        drawn.append((shown, x, y))
        trailing_x[shown] += x
        trailing_y[shown] += y
        if len(drawn) > 7:
            gone, gx, gy = drawn.pop(0)
            trailing_x[gone] -= gx
            trailing_y[gone] -= gy
    return ChampionRun(old, new)


@lru_cache(maxsize=1)
def settings_experiments():
    """The [experiments] settings the pipeline runs with (conf, NIGHTREC_EXPERIMENTS__* overrides)."""
    from nightrec.settings import load_settings

    return load_settings().experiments


def rollbacks(fired: np.ndarray, guard: int) -> int:
    """Rollbacks on the nights a rule fired, at most one per `guard` nights (analyze's "already rolled back
    within the window")."""
    count, last = 0, -guard - 1
    for night in np.flatnonzero(fired):
        if night - last > guard:
            count, last = count + 1, night
    return count


def champion_figures(runs: list[ChampionRun], guards: dict[str, int]) -> dict[str, dict[str, float]]:
    figures = {}
    for rule, guard in guards.items():
        steady = [getattr(run, rule)[:STEADY] for run in runs]
        falls = [getattr(run, rule)[STEADY:] for run in runs]
        caught = np.array([np.flatnonzero(f)[0] + 1 if f.any() else np.inf for f in falls])
        figures[rule] = {
            "false_per_90": float(np.mean([rollbacks(s, guard) for s in steady])) * 90 / STEADY,
            "fired_per_90": float(np.mean([s.sum() for s in steady])) * 90 / STEADY,
            "any_false": float(np.mean([s.any() for s in steady])),
            "caught_1": float(np.mean(caught <= 1)), "caught_2": float(np.mean(caught <= 2)),
            "caught_3": float(np.mean(caught <= 3)), "median_nights": float(np.median(caught)),
            "p90_nights": float(np.quantile(caught, 0.9, method="higher")),
            "missed": float(np.mean(~np.isfinite(caught))),
        }
    return figures


def one_seed(args, seed: int) -> dict:
    """Every figure of one seed: the experiments' outcomes and the champion rules' figures."""
    rng = np.random.default_rng(seed)
    started = time.monotonic()
    deff, per_user, visited = design_effect(rng, 5)
    min_users = required_users(BASE_RATE, 0.10, per_user, icc_inflation=deff)
    per_arm = int(np.ceil(min_users / visited))  # the planned sample is reached on night 5 of 7
    outcomes = {name: [experiment(rng, per_arm, min_users, effect, args.amplitude) for _ in range(args.sims)]
                for name, effect in (("A/A (no difference)", 0.0), ("+10% CTR treatment", 0.10))}
    x = settings_experiments()
    runs = [champion_run(rng, args.users, args.amplitude) for _ in range(args.sims)]
    return {"seed": seed, "deff": deff, "per_user": per_user, "min_users": min_users, "per_arm": per_arm,
            "experiments": {name: {a: actions.count(a) for a in ("stop", "promote", "no_difference", "continue")}
                            for name, actions in outcomes.items()},
            "champion": champion_figures(runs, {"old": 7, "new": x.rollback_window - 1}),
            "seconds": time.monotonic() - started}


def analysis(args) -> None:
    seeds = args.seed or [1]
    results = []
    for seed in seeds:
        results.append(one_seed(args, seed))
        print_seed(args, results[-1])
    if len(results) > 1:
        print_median(args, results)


def command(args, seeds: list[int]) -> str:
    return (f"$ PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python bench/simulate_traffic.py analysis "
            f"--sims {args.sims} --users {args.users} --amplitude {args.amplitude:g} "
            + " ".join(f"--seed {s}" for s in seeds))


def rule_name(rule: str) -> str:
    if rule == "old":
        return "old: tonight vs the 7 nights before pooled, drop > 5% and p < 0.05"
    x = settings_experiments()
    return (f"new: weekday baseline ({x.baseline_weeks} weeks) + day-to-day spread, CUSUM k={x.rollback_k:g} "
            f"h={x.rollback_h:g} over {x.rollback_window} nights, fall > {x.rollback_drop:.0%}")


def print_seed(args, r: dict) -> None:
    print(f"\n{command(args, [r['seed']])}")
    print(f"traffic: click probability Beta{BETA} per user x a weekly cycle of +-{args.amplitude:.0%}; visits on a "
          f"night with a user's own Beta{VISITS} probability; floor(Pareto({PARETO:g})) answers per visit (at most "
          f"{MAX_ANSWERS:,}); {args.users:,} users a night. Experiments: design effect {r['deff']:.1f} at "
          f"{r['per_user']:.1f} answers per user over 5 nights, planned sample {r['min_users']:,} users per "
          f"variant (required_users for +10%, power 0.8), {r['per_arm']:,} users per arm; {r['seconds']:.0f} s\n")
    print("| experiment | simulated | stop | promote | no difference | significant (any stop or promote) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, counts in r["experiments"].items():
        n = sum(counts.values())
        hits = counts["stop"] + counts["promote"]
        low, high = wilson(hits, n)
        print(f"| {name} | {n} | {counts['stop']} | {counts['promote']} | {counts['no_difference']} | "
              f"{hits / n:.1%} (95% CI {low:.1%}-{high:.1%}) |")
    print(f"\n| champion check, {args.sims} simulated champions | false rollbacks per 90 steady nights | nights "
          f"the rule fired per 90 | champions with any | -10% caught night 1 | within 2 nights | within 3 | "
          f"nights to catch: median | 90th pct | not caught in {FALL_NIGHTS} |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for rule, f in r["champion"].items():
        print(f"| {rule_name(rule)} | {f['false_per_90']:.2f} | {f['fired_per_90']:.2f} | {f['any_false']:.1%} | "
              f"{f['caught_1']:.1%} | {f['caught_2']:.1%} | {f['caught_3']:.1%} | {f['median_nights']:g} | "
              f"{f['p90_nights']:g} | {f['missed']:.1%} |")


def print_median(args, results: list[dict]) -> None:
    def spread(values: list[float], fmt: str) -> str:
        return f"{format(float(np.median(values)), fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"

    print(f"\nMedian of {len(results)} seeds (lowest-highest), {args.sims} simulations each: "
          f"{command(args, [r['seed'] for r in results])}\n")
    print("| experiment | significant (any stop or promote) |")
    print("|---|---:|")
    for name in results[0]["experiments"]:
        rates = [(c["stop"] + c["promote"]) / sum(c.values()) for c in (r["experiments"][name] for r in results)]
        print(f"| {name} | {spread(rates, '.1%')} |")
    print("\n| champion check | false rollbacks per 90 steady nights | -10% caught within 2 nights | nights to "
          "catch: median | 90th pct |")
    print("|---|---:|---:|---:|---:|")
    for rule in results[0]["champion"]:
        got = [r["champion"][rule] for r in results]
        print(f"| {rule_name(rule)} | {spread([f['false_per_90'] for f in got], '.2f')} | "
              f"{spread([f['caught_2'] for f in got], '.1%')} | {spread([f['median_nights'] for f in got], 'g')} | "
              f"{spread([f['p90_nights'] for f in got], 'g')} |")


def wilson(successes: int, n: int) -> tuple[float, float]:
    from nightrec.modeling.experiment_stats import proportion

    estimate = proportion(successes, n)
    return estimate.low, estimate.high


# --- the real service ---


def service(args) -> None:
    import httpx

    from nightrec.data import synth
    from nightrec.data.spark import get_spark
    from nightrec.modeling import experiment_store, registry, tracking
    from nightrec.pipeline import analyze, drain_events, ingest, publish, score, train, validate
    from nightrec.serving.experiments import parse_variant
    from nightrec.serving.redis_server import free_port, private_redis
    from nightrec.settings import load_settings

    home = HOME / "var" / "bench" / f"simulate-{args.scenario}"
    shutil.rmtree(home, ignore_errors=True)
    ds = dt.datetime.now(dt.timezone.utc).date()
    rng = np.random.default_rng(args.seed)
    started = time.monotonic()
    with private_redis() as redis_port:
        env = {"NIGHTREC_PATHS__LANDING": str(home / "landing"), "NIGHTREC_PATHS__LAKE": str(home / "lake"),
               "NIGHTREC_PATHS__DATA_DOCS": str(home / "data_docs"),
               "NIGHTREC_MLFLOW__TRACKING_URI": f"sqlite:///{home}/mlflow.db",
               "NIGHTREC_MLFLOW__ARTIFACT_ROOT": str(home / "artifacts"),
               "NIGHTREC_REDIS__URL": f"redis://127.0.0.1:{redis_port}/0", "NIGHTREC_REDIS__PREFIX": "sim",
               "NIGHTREC_EXPERIMENTS__MIN_USERS": str(args.min_users)}
        os.environ.update(env)
        settings = load_settings("local")
        spark = get_spark(settings, "nightrec-simulate")
        synth.generate(synth.Config(users=args.users, items=2000, events=args.users * 20, days=14,
                                    end=ds - dt.timedelta(days=1), seed=args.seed), home / "landing")
        ingest.run(spark, settings, ds - dt.timedelta(days=1), 14)
        validate.run(spark, settings, ds - dt.timedelta(days=1), 14)
        first = train.run(spark, settings, ds - dt.timedelta(days=1))
        os.environ["NIGHTREC_MODEL__PROMOTION_TOLERANCE"] = "1.0"  # the second fit replaces the first
        second = train.run(spark, load_settings("local"), ds - dt.timedelta(days=1))
        del os.environ["NIGHTREC_MODEL__PROMOTION_TOLERANCE"]
        tracking.configure(settings)
        assert registry.current_champion(settings.mlflow.registered_model).version == second.version
        effect, drift = {"aa": (0.0, 0.0), "lift": (0.10, 0.0), "drift": (0.0, -0.10)}[args.scenario]
        if args.scenario == "lift":  # treatment: the earlier version, pinned, scored for its users
            experiment_store.start(settings, "lift", [parse_variant("control=champion:50"),
                                                      parse_variant(f"treatment={first.version}:50")])
        elif args.scenario == "aa":  # both arms serve the champion's lists
            experiment_store.start(settings, "aa", [parse_variant("control=champion:50"),
                                                    parse_variant("treatment=champion:50")])
        else:
            write_history(rng, settings, ds, args.users)
        score.run(spark, settings, ds - dt.timedelta(days=1))
        publish.run(spark, settings, ds - dt.timedelta(days=1))
        prepared = time.monotonic()

        port = free_port()
        nightrec = str(Path(sys.executable).with_name("nightrec"))
        server = subprocess.Popen([nightrec, "serve", "--port", str(port), "--workers", "2", "--log-level",
                                   "warning"], env={**os.environ})
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("the service did not come up")
                time.sleep(0.2)
            sent = asyncio.run(drive(port, rng, args.users, effect, drift))
        finally:
            server.terminate()
            server.wait(30)
        served = time.monotonic()
        drained = drain_events.run(settings, ds)
        ingest.run(spark, settings, ds, SERVICE_HISTORY + 1 if args.scenario == "drift" else 1)
        validate.run(spark, settings, ds, SERVICE_HISTORY + 1 if args.scenario == "drift" else 1)
        result = analyze.run(spark, settings, ds, SERVICE_HISTORY + 1 if args.scenario == "drift" else 1)
        champion = registry.current_champion(settings.mlflow.registered_model).version

    print(f"\n$ .venv/bin/python bench/simulate_traffic.py service --scenario {args.scenario} --users {args.users} "
          f"--min-users {args.min_users} --seed {args.seed}")
    print(f"{args.users:,} users, effect {effect:+.0%}, drift {drift:+.0%}; {sent['answers']:,} answers over HTTP "
          f"(`nightrec serve --workers 2`), {sent['events']:,} events posted with their request ids, "
          f"{drained.impressions:,} impressions and {drained.events:,} events drained; setup "
          f"{prepared - started:.0f} s, traffic {served - prepared:.0f} s, drain + nightly stages "
          f"{time.monotonic() - served:.0f} s\n")
    if result.experiment is not None:
        print("| variant | users | impressions | CTR@10 | 95% CI |")
        print("|---|---:|---:|---:|---|")
        for name, m in result.variants.items():
            print(f"| {name} | {m['users']:,} | {m['impressions']:,} | {m['ctr_at_10']:.4f} | "
                  f"{m['ctr_at_10_low']:.4f}-{m['ctr_at_10_high']:.4f} |")
        print(f"\nexperiment decision: {result.decision}: {result.reason}")
    print(f"champion check: {result.champion_check}: {result.champion_reason}")
    print(f"champion now: version {champion} (version {second.version} before the night)")


async def drive(port: int, rng: np.random.Generator, users: int, effect: float, drift: float) -> dict:
    """Every user visits, asks for 1 + Poisson(2) answers and clicks by the click model."""
    import httpx

    q = rng.beta(*BETA, users + 1)
    ranks = 1 / np.arange(1, K + 1)
    ranks /= ranks.sum()
    sent = {"answers": 0, "events": 0}
    queue: asyncio.Queue = asyncio.Queue()
    for user in range(1, users + 1):
        for _ in range(1 + rng.poisson(ANSWERS)):
            queue.put_nowait(user)

    async def visitor(client: httpx.AsyncClient):
        while not queue.empty():
            user = queue.get_nowait()
            answer = (await client.get(f"/v1/users/{user}/recommendations", params={"k": K})).json()
            sent["answers"] += 1
            lift = 1 + (effect if answer["variant"] == "treatment" else 0.0) + drift
            if not answer["items"] or rng.random() >= min(q[user] * lift, 1.0):
                continue
            item = answer["items"][min(int(rng.choice(K, p=ranks)), len(answer["items"]) - 1)]
            for kind in ("click", "purchase") if rng.random() < PURCHASE else ("click",):
                posted = await client.post("/v1/events", json={
                    "user_id": user, "item_id": item["item_id"], "event_type": kind,
                    "request_id": answer["request_id"], "position": item["rank"]})
                posted.raise_for_status()
                sent["events"] += 1

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        await asyncio.gather(*[visitor(client) for _ in range(32)])
    return sent


def write_history(rng: np.random.Generator, settings, ds: dt.date, users: int) -> None:
    """The two weeks before ds (the least the champion check judges a night with: two of its weekday) as the
    drain would have landed them: impressions and attributed clicks."""
    traffic = draw(rng, users, SERVICE_HISTORY)
    landing = Path(settings.path("landing"))
    for night in range(SERVICE_HISTORY):
        day = ds - dt.timedelta(days=SERVICE_HISTORY - night)
        impressions, events = [], []
        for user in np.flatnonzero(traffic.answers[:, night]):
            clicked = traffic.clicks[user, night]
            for n in range(int(traffic.answers[user, night])):
                request_id = f"{night:02x}{user:08x}{n:04x}"
                ts = f"{day}T12:00:{n:02d}.000+00:00"  # one second apart: the same click twice is a repeat
                impressions.append({"request_id": request_id, "user_id": int(user) + 1, "experiment": None,
                                    "variant": None, "version": "history", "model_version": "history",
                                    "source": "personalized", "items": list(range(1, K + 1)), "explored": [],
                                    "ts": ts})
                if n < clicked:
                    events.append({"user_id": int(user) + 1, "item_id": 1, "event_type": "click", "ts": ts,
                                   "request_id": request_id, "position": 1})
        for kind, rows in (("impressions", impressions), ("interactions", events)):
            folder = landing / kind / f"dt={day}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "history.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    modes = parser.add_subparsers(dest="mode", required=True)
    mc = modes.add_parser("analysis", help="many simulated experiments through the analysis' statistics")
    mc.add_argument("--sims", type=int, default=400, help="simulated experiments, and champions, per seed")
    mc.add_argument("--users", type=int, default=20_000, help="production users a night (the champion check)")
    mc.add_argument("--amplitude", type=float, default=AMPLITUDE, help="weekly cycle of the click probability, +-")
    mc.add_argument("--seed", type=int, action="append",
                    help="random seed; repeat it for several, the median over them is printed (default: 1)")
    real = modes.add_parser("service", help="one scenario through the real service and stages")
    real.add_argument("--scenario", choices=("aa", "lift", "drift"), required=True)
    real.add_argument("--users", type=int, default=12_000)
    real.add_argument("--min-users", type=int, default=5_000, help="experiments.min_users")
    real.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.mode == "analysis":
        analysis(args)
    else:
        service(args)


if __name__ == "__main__":
    main(sys.argv[1:])
