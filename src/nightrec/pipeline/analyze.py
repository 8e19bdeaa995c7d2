"""Analyze: what users did with what they were shown.

1. The night's drained impressions -> silver/impressions (rules mirrored by a great_expectations
   suite; bad rows -> quarantine/impressions with reasons; Data Docs beside the interactions'), and
   what users did with them per user and impression day -> silver/user_outcomes (tonight's days and
   yesterday, whose answers may have been clicked after midnight; older days are kept, not redone).
2. The running experiment, cumulatively since it started: CTR@k, conversion and events per user per
   variant with 95% intervals, each treatment against the control (the first variant), and the
   decision by rule (nightrec.modeling.experiment_stats): continue, stop early (significantly
   worse), promote the treatment's model (significantly better at the planned sample) or end with
   no difference; after its --until day it ends. Logged to MLflow: a run per experiment-night.
3. The champion's CTR, night by night, against the same weekday in the weeks before: rolled back when
   the CUSUM of the nightly falls crosses its limit and those nights fell more than
   `experiments.rollback_drop` (nightrec.modeling.experiment_stats.champion_check); an alert says so.
4. With exploration on: the least-shown available items with their impression and click counts ->
   Redis `{<p>}:explore`, which the lookup samples from (nightrec.serving.exploration).

It runs before train, so a rollback or a promotion is what tonight's model is gated against.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from nightrec.data import impressions, lake, validation
from nightrec.data.tables import attributes, window
from nightrec.errors import PermanentError
from nightrec.modeling import experiment_store, registry
from nightrec.modeling.dataset import ItemFacts
from nightrec.modeling.experiment_stats import champion_check, compare, decide_variants
from nightrec.modeling.online import group_metrics, item_outcomes, per_user, user_outcomes
from nightrec.pipeline import alerts, nights
from nightrec.pipeline.progress import Progress
from nightrec.pipeline.runtime import stage_main
from nightrec.serving import audit
from nightrec.serving.client import connect
from nightrec.serving.experiments import CHAMPION
from nightrec.serving.layout import Keys, encode_item_stats
from nightrec.settings import Settings

PRODUCTION = "production"  # the group of answers served as everyone's (no variant of their own)


@dataclass
class AnalyzeResult:
    impressions: int
    quarantined_impressions: int
    duplicate_impressions: int
    experiment: str | None = None
    decision: str | None = None
    reason: str | None = None
    variants: dict[str, dict] = field(default_factory=dict)
    champion_check: str | None = None
    champion_reason: str | None = None
    explore_pool: int | None = None  # items exploration may show (None: exploration off)
    data_docs: str | None = None


def run(spark: SparkSession, settings: Settings, ds: dt.date, lookback_days: int = 1) -> AnalyzeResult:
    progress = Progress("analyze", spark)
    with progress.step("impressions into silver"):
        loaded, bad, duplicates, docs = load_impressions(spark, settings, window(ds, lookback_days), ds)
    result = AnalyzeResult(loaded, bad, duplicates, data_docs=docs)
    if not lake.table_exists(settings.table("silver/impressions")):  # the service never recorded an answer
        stored = experiment_store.running(settings)
        if stored is not None and stored.experiment.until and ds >= dt.date.fromisoformat(stored.experiment.until):
            reason = f"reached its last day {stored.experiment.until} without impressions: ended without a decision"
            experiment_store.end(settings, f"{ds}: no_difference: {reason}", status=experiment_store.ENDED,
                           actor=audit.night_actor(ds.isoformat()))
            result.experiment, result.decision, result.reason = stored.experiment.name, "no_difference", reason
        return result
    with progress.step("outcomes per user and day"):
        refresh_outcomes(spark, settings, sorted(set(window(ds, lookback_days)) | {ds - dt.timedelta(days=1)}), ds)
    outcomes = lake.read_table(spark, settings.table("silver/user_outcomes"))
    stored = experiment_store.running(settings)
    experiment_store.write_redis(settings, stored.experiment if stored else None)  # MLflow is the record
    if stored is not None and experiment_store.night(stored, ds) >= 0:
        with progress.step(f"experiment {stored.experiment.name}"):
            analyze_experiment(settings, stored, ds, outcomes, result)
    with progress.step("champion check"):
        check_champion(spark, settings, ds, outcomes, result)
    if settings.exploration.enabled:
        with progress.step("exploration pool"):
            result.explore_pool = write_explore_pool(spark, settings, ds)
    return result


def refresh_outcomes(spark: SparkSession, settings: Settings, days: list[dt.date], ds: dt.date) -> None:
    """silver/user_outcomes (and, with exploration on, silver/item_outcomes) of these impression days,
    from their impressions and the events attributed to them up to ds."""
    x = settings.experiments
    shown = lake.read_table(spark, settings.table("silver/impressions"), days)
    events = (lake.read_table(spark, settings.table("silver/interactions"), window(ds, (ds - days[0]).days + 1))
              .where(F.col("request_id").isNotNull()))
    lake.replace_partitions(user_outcomes(shown, events, k=x.k, click_events=x.click_events,
                                          conversion_event=x.conversion_event),
                            settings.table("silver/user_outcomes"), days)
    if settings.exploration.enabled:
        lake.replace_partitions(item_outcomes(shown, events, x.click_events), settings.table("silver/item_outcomes"),
                                days)


def load_impressions(spark: SparkSession, settings: Settings, days: list[dt.date],
                     ds: dt.date) -> tuple[int, int, int, str | None]:
    """Drained impression files of the days -> silver/impressions (days without files keep theirs)."""
    paths = impressions.landing_files(settings.path("landing"), days)
    if not paths:
        return 0, 0, 0, None
    rule_list = impressions.rules()
    rows = impressions.checked(impressions.read(spark, paths), rule_list).cache()
    try:
        bad = F.size("reasons") > 0
        docs = validation.run_checks(
            [validation.Check("impressions", [(rule.name, rule.expectation()) for rule in rule_list],
                              rows.where(~F.col("duplicate")).select(*impressions.SUITE_COLUMNS))],
            f"{settings.path('data_docs')}/dt={ds.isoformat()}/impressions", f"impressions_{ds:%Y%m%d}")
        present = sorted(r.dt for r in rows.select("dt").distinct().collect() if r.dt is not None)
        lake.replace_partitions(rows.where(bad).select("raw", "reasons", "dt"),
                                settings.table("quarantine/impressions"), present)
        loaded = lake.replace_partitions(rows.where(~bad & ~F.col("duplicate")).select(*impressions.SILVER_COLUMNS),
                                         settings.table("silver/impressions"), present)
        counts = rows.agg(F.sum(bad.cast("int")).alias("bad"),
                          F.sum((F.col("duplicate") & ~bad).cast("int")).alias("duplicates")).first()
        return loaded, int(counts.bad or 0), int(counts.duplicates or 0), docs.data_docs
    finally:
        rows.unpersist()


def analyze_experiment(settings: Settings, stored: experiment_store.StoredExperiment, ds: dt.date,
                       outcomes: DataFrame, result: AnalyzeResult) -> None:
    e, x = stored.experiment, settings.experiments
    metric = f"ctr_at_{x.k}"
    mine = outcomes.where((F.col("experiment") == e.id) & (F.col("dt") <= F.lit(ds)))
    metrics = group_metrics(per_user(mine, F.col("variant")), x.alpha)
    control, treatments = e.variants[0].name, [v.name for v in e.variants[1:]]
    logged = {key: value for name, m in metrics.items() for key, value in m.as_dict(name, x.k).items()}
    if all(name in metrics for name in (control, *treatments)):
        comparisons = {name: compare(metrics[control].ctr, metrics[name].ctr, x.alpha) for name in treatments}
        for name, comparison in comparisons.items():
            logged.update(comparison.as_dict(f"{name}_vs_{control}_{metric}"))
        decision, winner = decide_variants(comparisons, {name: m.users for name, m in metrics.items()}, x.min_users,
                                           alpha=x.alpha, harm_z=x.harm_z, metric=f"CTR@{x.k}")
        action, reason = decision.action, decision.reason
    else:
        winner, action = None, "continue"
        reason = f"no impressions yet for {sorted({control, *treatments} - set(metrics))}: continuing"
    if action == "continue" and e.until and ds >= dt.date.fromisoformat(e.until):
        action, reason = "no_difference", f"{reason}; reached its last day {e.until}: ended without a decision"
    if action == "promote":
        reason += "; " + promote(settings, e.variant(winner))
    if action != "continue":
        experiment_store.end(settings, f"{ds}: {action}: {reason}", status=experiment_store.ENDED,
                           actor=audit.night_actor(ds.isoformat()))
    experiment_store.log_night(settings, stored, ds, logged, action, reason, metric)
    if action in ("promote", "stop"):
        alerts.raise_alert(settings, alerts.Alert(
            cause=f"experiment_decision:{e.id}:{action}", severity="warning", night=ds.isoformat(), stage="analyze",
            summary=f"experiment {e.name} ended, {'promoted' if action == 'promote' else 'stopped'}: {reason}",
            command="`nightrec experiment status`, then `nightrec status` (the champion tonight's training is "
                    "gated against)", report=nights.report_uri(settings, ds)))
    result.experiment, result.decision, result.reason = e.name, action, reason
    result.variants = {name: {"users": m.users, "impressions": m.impressions, metric: round(m.ctr.value, 6),
                              f"{metric}_low": round(m.ctr.low, 6), f"{metric}_high": round(m.ctr.high, 6)}
                       for name, m in metrics.items()}


def promote(settings: Settings, variant) -> str:
    """The winning variant becomes what everyone gets: its model as champion; rule settings are conf's."""
    if variant.rules:
        settings_line = ", ".join(f"model.{key} = {value}" for key, value in variant.rules.items())
        return f"set {settings_line} in conf to give everyone variant {variant.name}'s rules"
    if variant.model == CHAMPION:
        return f"variant {variant.name} already serves the champion"
    registry.set_aliases(settings.mlflow.registered_model, variant.model, None)
    return f"{settings.mlflow.registered_model}/{variant.model} is now the champion"


def check_champion(spark: SparkSession, settings: Settings, ds: dt.date, outcomes: DataFrame,
                   result: AnalyzeResult) -> None:
    """Production traffic (answers from the main lists), night by night, against the same weekday in the
    weeks before (experiment_stats.champion_check): per-user sums per night, one row per night to the driver."""
    x = settings.experiments
    first = ds - dt.timedelta(days=7 * x.baseline_weeks + x.rollback_window - 1)  # every night of the window judged
    main_lists = served_main_lists(settings)
    production = outcomes.where(F.col("dt").between(F.lit(first), F.lit(ds)) & F.col("personalized") & main_lists)
    metrics = group_metrics(per_user(production, F.col("dt")), x.alpha)
    nightly = {day: m.ctr for day, m in metrics.items()}
    check = champion_check(nightly, ds, weeks=x.baseline_weeks, window=x.rollback_window, k=x.rollback_k,
                           h=x.rollback_h, drop=x.rollback_drop, metric=f"CTR@{x.k}")
    action, reason = check.action, check.reason
    rolled_back = None
    if action == "rollback":
        kept = reason_to_keep(spark, settings, ds, ds - dt.timedelta(days=x.rollback_window - 1), main_lists, result)
        if kept:
            action, reason = "keep", f"{reason.removesuffix(': rolled back')}; {kept}: kept"
        else:
            try:
                rolled_back = registry.rollback(settings.mlflow.registered_model)
                reason += f": champion version {rolled_back[0]} -> {rolled_back[1]}"
                audit.record(settings, "rollback", audit.night_actor(ds.isoformat()), settings.mlflow.registered_model,
                             **{"from": rolled_back[0], "to": rolled_back[1], "reason": reason})
            except PermanentError as error:
                reason += f", but there is nothing to roll back to ({error})"
            alert_rollback(settings, ds, check.reason.removesuffix(": rolled back"), rolled_back)
    logged = {**check.as_dict(), **(metrics[ds].as_dict("today", x.k) if ds in metrics else {})}
    experiment_store.log_champion_check(settings, ds, logged, action, reason)
    result.champion_check, result.champion_reason = action, reason


def alert_rollback(settings: Settings, ds: dt.date, said: str, rolled_back: tuple[str, str] | None) -> None:
    """The champion check fell (`said`: what was compared, the statistic and its limit): the team hears of it,
    rolled back or (nothing to roll back to) not; cause rollback:<model>:<night> (docs/runbook.md)."""
    name = settings.mlflow.registered_model
    if rolled_back:
        summary = f"champion {name} rolled back from version {rolled_back[0]} to {rolled_back[1]}: {said}"
        command = (f"`nightrec status`, then the MLflow run `champion check {ds}`; to undo: "
                   f"`nightrec rollback --ds {ds} --to {rolled_back[0]}`")
    else:
        summary = f"champion {name} fell but there is no earlier version to roll back to: {said}"
        command = f"`nightrec status`, then roll back by hand: `nightrec rollback --ds {ds} --to VERSION`"
    alerts.raise_alert(settings, alerts.Alert(cause=f"rollback:{name}:{ds}", summary=summary, command=command,
                                              severity="critical", night=ds.isoformat(), stage="analyze",
                                              report=nights.report_uri(settings, ds)))


def served_main_lists(settings: Settings) -> Column:
    """Answers from the main lists: outside any experiment, or in a variant that served the champion's."""
    served = F.col("variant").isNull()
    for stored in experiment_store.all_experiments(settings):
        for variant in stored.experiment.variants:
            if variant.follows_champion:
                served = served | ((F.col("experiment") == stored.experiment.id) & (F.col("variant") == variant.name))
    return served


def reason_to_keep(spark: SparkSession, settings: Settings, ds: dt.date, first: dt.date, main_lists: Column,
                   result: AnalyzeResult) -> str | None:
    """Why a fall must not roll the champion back tonight, if there is a reason: the rollback judges the
    version that served tonight's answers, once per window (a rollback on `first` or later keeps)."""
    if result.decision == "promote":
        return "an experiment promoted a new champion tonight"
    name = settings.mlflow.registered_model
    champion = registry.current_champion(name)
    served = (lake.read_table(spark, settings.table("silver/impressions"), [ds])
              .where(main_lists & (F.col("source") == "personalized"))
              .groupBy("model_version").count().orderBy(F.desc("count")).first())
    if champion is None or served is None or served.model_version != f"{name}/{champion.version}":
        return (f"tonight's answers came from {served.model_version if served else 'no model'}, and the champion "
                f"is now {name}/{champion.version if champion else '-'}")
    earlier = experiment_store.recent_rollback(settings, first)
    if earlier is not None:
        return f"the champion was already rolled back on {earlier}"
    return None


def write_explore_pool(spark: SparkSession, settings: Settings, ds: dt.date) -> int:
    """The available items shown fewer than exploration.max_impressions times over its window, least
    shown first, with impressions and clicks (silver/item_outcomes) -> Redis; returns how many."""
    x = settings.exploration
    since = ds - dt.timedelta(days=x.window_days - 1)
    counts = (lake.read_table(spark, settings.table("silver/item_outcomes"))
              .where(F.col("dt").between(F.lit(since), F.lit(ds)))
              .groupBy("item_id").agg(F.sum("impressions").alias("impressions"), F.sum("clicks").alias("clicks")))
    facts = ItemFacts.read(attributes(spark, settings, "items", ds))
    if len(facts.ids):
        catalog = spark.createDataFrame([(int(i),) for i in facts.ids[~facts.unavailable]], "item_id int")
    else:  # no item file: the items with events in the window
        catalog = (lake.read_table(spark, settings.table("silver/interactions"))
                   .where(F.col("dt") >= F.lit(since)).select("item_id").distinct())
    pool = (catalog.join(counts, "item_id", "left").fillna(0, ["impressions", "clicks"])
            .where(F.col("impressions") < x.max_impressions)
            .orderBy("impressions", "item_id").limit(x.pool_size).collect())
    value = encode_item_stats([r.item_id for r in pool], [r.impressions for r in pool], [r.clicks for r in pool])
    client = connect(settings.redis.url, settings.redis.cluster)
    try:
        client.set(Keys(settings.redis.prefix).explore, value)
    finally:
        client.close()
    return len(pool)


def main(argv=None) -> dict:
    return stage_main("analyze", run, argv, lookback=True)
