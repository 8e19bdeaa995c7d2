"""Traffic simulator for online experiments: does the nightly analysis find what is there, and only that?

    .venv/bin/python bench/simulate_traffic.py analysis --sims 400
    .venv/bin/python bench/simulate_traffic.py service --scenario aa
    .venv/bin/python bench/simulate_traffic.py service --scenario lift
    .venv/bin/python bench/simulate_traffic.py service --scenario drift

The click model: user u clicks something in the top 10 of an answer with probability q_u ~ Beta(2, 8)
(mean 0.2), times (1 + effect) in the treatment and (1 + drift) on a drifting night; the rank clicked
falls off as 1/rank; a user who visits on a night asks for 1 + Poisson(2) answers; 1 in 10 clicks is
followed by a purchase.

`analysis` draws that traffic in numpy and applies the analysis' own statistics
(nightrec.modeling.experiment_stats: per-user sums, delta-method CTR, the nightly decision rule, the
rollback check) to many simulated experiments: the A/A false-positive rate, the power for +10% CTR at
the stated sample size, and how often a -10% drift of the champion triggers the rollback (and a
steady champion does not).

`service` runs one scenario for real: synthetic landing data, ingest, validate, two trained model
versions (the second replaced the first, so there is a rollback target), an experiment started,
score and publish, then `nightrec serve`, users asking it over HTTP and posting clicks with the
request ids it answered, the drain, ingest, validate and the analyze stage, whose decision is printed.
The drift scenario writes the seven previous nights' traffic as landing files (history) and sends
tonight's through the service.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nightrec.modeling.experiment_stats import (
    Sums,
    compare,
    decide_variants,
    ratio_of_sums,
    required_users,
    rollback_check,
)

HOME = Path(__file__).resolve().parents[1]
BASE_RATE, BETA = 0.2, (2.0, 8.0)     # per-answer click probability: q_u ~ Beta(2, 8), mean 0.2
ANSWERS, VISIT = 2.0, 0.5             # answers per visit: 1 + Poisson(2); a user visits on a night with p 0.5
NIGHTS, K, PURCHASE = 7, 10, 0.1


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


def design_effect(rng: np.random.Generator, nights: int) -> tuple[float, float]:
    """(deff, impressions per user) of the click model over `nights`, from a large pilot."""
    pilot = draw(rng, 200_000, nights)
    s = sums(pilot, slice(0, nights))
    estimate = ratio_of_sums(s)
    m = s.y / s.n
    return s.n * estimate.se ** 2 * m / (estimate.value * (1 - estimate.value)), m


def experiment(rng: np.random.Generator, per_arm: int, min_users: int, effect: float) -> str:
    """One simulated A/B test looked at every night until its decision."""
    arms = {"control": draw(rng, per_arm, NIGHTS), "treatment": draw(rng, per_arm, NIGHTS, 1 + effect)}
    action = "continue"
    for night in range(1, NIGHTS + 1):
        estimates = {name: sums(t, slice(0, night)) for name, t in arms.items()}
        comparison = compare(ratio_of_sums(estimates["control"]), ratio_of_sums(estimates["treatment"]))
        decision, _ = decide_variants({"treatment": comparison}, {n: s.n for n, s in estimates.items()}, min_users)
        action = decision.action
        if action != "continue":
            break
    return action


def champion_check(rng: np.random.Generator, users: int, drift: float) -> str:
    """Seven steady nights, then tonight with the drift: the rollback check's verdict."""
    multiplier = np.ones(NIGHTS + 1)
    multiplier[-1] = 1 + drift
    traffic = draw(rng, users, NIGHTS + 1, multiplier)
    return rollback_check(ratio_of_sums(sums(traffic, slice(NIGHTS, NIGHTS + 1))),
                          ratio_of_sums(sums(traffic, slice(0, NIGHTS)))).action


def analysis(args) -> None:
    rng = np.random.default_rng(args.seed)
    deff, per_user = design_effect(rng, 5)
    min_users = required_users(BASE_RATE, 0.10, per_user, icc_inflation=deff)
    per_arm = int(np.ceil(min_users / (1 - (1 - VISIT) ** 5)))  # the planned sample is reached on night 5
    started = time.monotonic()
    outcomes = {name: [experiment(rng, per_arm, min_users, effect) for _ in range(args.sims)]
                for name, effect in (("A/A (no difference)", 0.0), ("+10% CTR treatment", 0.10))}
    checks = {name: [champion_check(rng, args.users, drift) for _ in range(args.sims)]
              for name, drift in (("champion steady", 0.0), ("champion drifts -10%", -0.10))}
    print(f"\n$ .venv/bin/python bench/simulate_traffic.py analysis --sims {args.sims} --users {args.users} "
          f"--seed {args.seed}")
    print(f"click model: per-answer click probability Beta{BETA} (mean {BASE_RATE}), 1 + Poisson({ANSWERS:g}) "
          f"answers per visit, visits with p {VISIT} per night; design effect {deff:.2f} at {per_user:.1f} "
          f"answers per user over 5 nights")
    print(f"stated sample: {min_users:,} users per variant (required_users for +10% at alpha 0.05, power 0.8), "
          f"reached on night 5 of {NIGHTS} ({per_arm:,} users per arm); {time.monotonic() - started:.0f} s\n")
    print("| scenario | simulated | stop | promote | no difference | significant (any stop or promote) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, actions in outcomes.items():
        counts = {a: actions.count(a) for a in ("stop", "promote", "no_difference")}
        rate = (counts["stop"] + counts["promote"]) / len(actions)
        low, high = wilson(counts["stop"] + counts["promote"], len(actions))
        print(f"| {name} | {len(actions)} | {counts['stop']} | {counts['promote']} | {counts['no_difference']} | "
              f"{rate:.1%} (95% CI {low:.1%}-{high:.1%}) |")
    print(f"\n| champion check ({args.users:,} users, 7 baseline nights) | simulated | rolled back | rate |")
    print("|---|---:|---:|---:|")
    for name, actions in checks.items():
        rolled = actions.count("rollback")
        low, high = wilson(rolled, len(actions))
        print(f"| {name} | {len(actions)} | {rolled} | {rolled / len(actions):.1%} (95% CI {low:.1%}-{high:.1%}) |")


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
        ingest.run(spark, settings, ds, 8 if args.scenario == "drift" else 1)
        validate.run(spark, settings, ds, 8 if args.scenario == "drift" else 1)
        result = analyze.run(spark, settings, ds, 8 if args.scenario == "drift" else 1)
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
    """The seven nights before ds as the drain would have landed them: impressions and attributed clicks."""
    traffic = draw(rng, users, NIGHTS)
    landing = Path(settings.path("landing"))
    for night in range(NIGHTS):
        day = ds - dt.timedelta(days=NIGHTS - night)
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
    mc.add_argument("--sims", type=int, default=400)
    mc.add_argument("--users", type=int, default=20_000, help="production users of the champion check")
    mc.add_argument("--seed", type=int, default=1)
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
