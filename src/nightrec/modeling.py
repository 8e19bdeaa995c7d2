"""Candidates end to end: hyperparameter search and blend weights on an inner validation split,
then fitting every candidate (and the hybrid) into a scoring Bundle."""

from __future__ import annotations

import datetime as dt
import itertools
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from nightrec.candidates import als, content, itemknn, popularity
from nightrec.scoring import Bundle, Rules, UserBlock, standardize, user_block, user_rows

FAMILIES = ("als", "itemknn", "content", "popularity")
HYBRID = "hybrid"
CANDIDATES = FAMILIES + (HYBRID,)
WEIGHT_STEPS = (0.0, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0)
# A blend weight moves only when validation NDCG rises by this share: smaller gains are within the
# noise of a few thousand validation users and do not carry over to unseen data.
MIN_BLEND_GAIN = 0.005
UNAVAILABLE = ("0", "false", "no", "n", "unavailable")


@dataclass
class TrainingSet:
    """What candidates are fit on: feedback (user_id, item_id, strength, last_ts), the catalog, rules."""

    feedback: DataFrame
    as_of: dt.datetime
    catalog: np.ndarray
    rules: Rules
    items: DataFrame | None          # (item_id, attributes map) or None
    recency_half_life_days: float

    def user_rows(self) -> DataFrame:
        return user_rows(self.feedback, self.as_of, self.recency_half_life_days)


@dataclass
class Selection:
    params: dict[str, dict]                  # chosen hyperparameters per family
    weights: dict[str, float]                # hybrid blend weights
    validation_ndcg: dict[str, float]        # per candidate, mean over the inner validation folds
    trials: list[dict] = field(default_factory=list)


@dataclass
class ModelSettingsView:
    """The few settings the modeling code needs (keeps it independent of the settings file)."""

    seed: int = 42
    eval_k: int = 10
    blocks: int = 2
    item_knn_max_items: int = 10_000
    validation_users: int = 5_000
    recency_half_life_days: float = 90.0
    max_per_category: int | None = None


def load_search_space(path: str | Path) -> dict[str, dict[str, list]]:
    space = tomllib.loads(Path(path).read_text())
    unknown = set(space) - set(FAMILIES)
    if unknown:
        raise ValueError(f"{path}: unknown candidate families {sorted(unknown)}; known: {FAMILIES}")
    return space


def grid(space: dict[str, list]) -> list[dict]:
    names = sorted(space)
    return [dict(zip(names, values)) for values in itertools.product(*(space[n] for n in names))]


def is_unavailable():
    """Column over an item file snapshot: true when its `available` attribute says no."""
    return F.lower(F.trim(F.col("attributes")["available"])).isin(list(UNAVAILABLE))


def training_set(feedback: DataFrame, items: DataFrame | None, as_of: dt.datetime,
                 opts: ModelSettingsView) -> TrainingSet:
    """The catalog is every item with feedback or a row in the item file; rules come from the file."""
    ids = {int(r.item_id) for r in feedback.select("item_id").distinct().collect()}
    unavailable, categories = set(), {}
    if items is not None:
        rows = items.select("item_id", is_unavailable().alias("unavailable"),
                            F.coalesce(F.col("attributes")["category"],
                                       F.split(F.col("attributes")["genres"], r"\|")[0]).alias("category")).collect()
        for row in rows:
            ids.add(int(row.item_id))
            if row.unavailable:
                unavailable.add(int(row.item_id))
            if row.category:
                categories[int(row.item_id)] = row.category.strip().lower()
    catalog = np.array(sorted(ids), dtype=np.int64)
    codes = {name: code for code, name in enumerate(sorted(set(categories.values())))}
    rules = Rules(
        unavailable=np.isin(catalog, list(unavailable)) if unavailable else None,
        categories=np.array([codes.get(categories.get(i), -1) for i in catalog], dtype=np.int32) if codes else None,
        max_per_category=opts.max_per_category)
    return TrainingSet(feedback, as_of, catalog, rules, items, opts.recency_half_life_days)


class ValidationSample:
    """Up to `max_users` users of the truth, their histories as blocks, and their relevant items:
    what hyperparameters and blend weights are chosen on (NDCG@k computed on the driver)."""

    def __init__(self, data: TrainingSet, truth: DataFrame, max_users: int, seed: int, k: int):
        truth_users = truth.select("user_id").distinct()
        n = truth_users.count()
        if n == 0:
            raise ValueError("the validation split has no users: load more days or raise the held-out share")
        # Keep the dense (users x catalog) score blocks of all families in memory bounded.
        max_users = max(1, min(max_users, 20_000_000 // max(len(data.catalog), 1)))
        if n > max_users:
            # A hash, not rand(): the sample is computed twice (histories, relevant items) and must
            # be the same users both times, whatever order the shuffle delivers them in.
            truth_users = truth_users.orderBy(F.xxhash64(F.lit(seed), "user_id"), "user_id").limit(max_users)
        rows = data.user_rows().join(truth_users, "user_id").orderBy("user_id").toArrow()
        self.block = user_block(rows.combine_chunks().to_batches()[0], data.catalog)
        relevant = truth.join(truth_users, "user_id").toPandas()
        row_of = {u: r for r, u in enumerate(self.block.user_ids)}
        positions = np.searchsorted(data.catalog, relevant["item_id"].to_numpy())
        in_catalog = (positions < len(data.catalog)) & (
            data.catalog[np.minimum(positions, len(data.catalog) - 1)] == relevant["item_id"].to_numpy())
        truth_rows = relevant["user_id"].map(row_of)
        keep = in_catalog & truth_rows.notna().to_numpy()
        self.truth = sp.csr_matrix((np.ones(keep.sum(), dtype=np.float32),
                                    (truth_rows[keep].astype(int).to_numpy(), positions[keep])),
                                   shape=(len(self.block.user_ids), len(data.catalog)))
        self.truth.data[:] = 1.0
        self.k = k
        self.exclude = self.block.history.nonzero()
        self.unavailable = data.rules.unavailable

    def masked(self, scores: np.ndarray) -> np.ndarray:
        scores = scores.astype(np.float32, copy=True)
        scores[self.exclude] = -np.inf
        if self.unavailable is not None:
            scores[:, self.unavailable] = -np.inf
        return scores

    def ndcg(self, scores: np.ndarray) -> float:
        """Mean NDCG@k over the sampled users that have a relevant item (scores already masked)."""
        k = min(self.k, scores.shape[1])
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        hits = np.asarray(self.truth[np.arange(len(top))[:, None], top].todense())
        discounts = 1.0 / np.log2(np.arange(2, k + 2))
        n_relevant = np.asarray(self.truth.sum(axis=1)).ravel()
        ideal = np.cumsum(discounts)[np.minimum(n_relevant, k).astype(int) - 1]
        users = n_relevant > 0
        return float(((hits * discounts).sum(axis=1)[users] / ideal[users]).mean())

    def fresh_block(self) -> UserBlock:
        """The block without cached ALS factors (each ALS fit attaches its own)."""
        return UserBlock(self.block.user_ids, self.block.history, self.block.recency)


def fit_family(family: str, data: TrainingSet, params: dict, opts: ModelSettingsView, gram=None):
    if family == "als":
        return als.fit(data.feedback, data.catalog, rank=int(params["rank"]), reg_param=float(params["reg_param"]),
                       alpha=float(params["alpha"]), max_iter=int(params["max_iter"]), seed=opts.seed,
                       blocks=opts.blocks)
    if family == "itemknn":
        return itemknn.fit(gram or itemknn.gram(data.feedback, data.catalog, opts.item_knn_max_items),
                           float(params["l2"]))
    if family == "content":
        if data.items is None:
            return None
        return content.fit(data.items, data.catalog, int(params.get("min_items_per_term", 2)))
    if family == "popularity":
        return popularity.fit(data.feedback, data.catalog, data.as_of, float(params["half_life_days"]))
    raise ValueError(f"unknown candidate family {family!r}")


def select(folds: list[tuple[TrainingSet, DataFrame]], space: dict[str, dict[str, list]],
           opts: ModelSettingsView, log=print) -> Selection:
    """Search the grid of each family in the space, then learn the hybrid's blend weights, on one or
    more inner (training set, truth) folds: every choice maximises NDCG averaged over the folds.
    Families absent from the space are not candidates."""
    samples = [ValidationSample(inner, truth, opts.validation_users, opts.seed, opts.eval_k) for inner, truth in folds]
    params, best_scores, trials, validation = {}, {}, [], {}
    for family in (f for f in FAMILIES if f in space):
        grams = [itemknn.gram(inner.feedback, inner.catalog, opts.item_knn_max_items) if family == "itemknn" else None
                 for inner, _ in folds]
        best = None
        for candidate in grid(space[family]) or [{}]:
            started = time.monotonic()
            components = [fit_family(family, inner, candidate, opts, gram) for (inner, _), gram in zip(folds, grams)]
            if any(c is None for c in components):
                break
            scores = [sample.masked(c.score(sample.fresh_block())) for sample, c in zip(samples, components)]
            ndcg = float(np.mean([sample.ndcg(s) for sample, s in zip(samples, scores)]))
            trials.append({"family": family, "params": candidate, "ndcg": ndcg,
                           "seconds": round(time.monotonic() - started, 1)})
            log(f"  {family} {candidate}: validation NDCG@{opts.eval_k} {ndcg:.4f}")
            if best is None or ndcg > best[0]:
                best = (ndcg, candidate, scores)
        if best is not None:
            validation[family], params[family], best_scores[family] = best
    weights, validation[HYBRID] = learn_weights(best_scores, samples)
    log(f"  hybrid weights {weights}: validation NDCG@{opts.eval_k} {validation[HYBRID]:.4f}")
    return Selection(params, weights, validation, trials)


def learn_weights(scores: dict[str, list[np.ndarray]], samples: list[ValidationSample],
                  rounds: int = 3) -> tuple[dict, float]:
    """Coordinate ascent over non-negative weights of the standardised family scores, maximising
    validation NDCG (mean over folds): each family's best step is taken when it gains at least
    MIN_BLEND_GAIN. Starts from the best single family, so the blend never does worse than it on
    validation."""
    names = list(scores)
    z = {name: [standardize(np.where(np.isfinite(s), s, 0.0)) for s in fold_scores]
         for name, fold_scores in scores.items()}
    masks = [~np.isfinite(s) for s in next(iter(scores.values()))]

    def value(w: dict[str, float]) -> float:
        used = [n for n in names if w[n] > 0]
        return float(np.mean([sample.ndcg(np.where(mask, -np.inf, sum(w[n] * z[n][f] for n in used)))
                              for f, (sample, mask) in enumerate(zip(samples, masks))]))

    start = max(names, key=lambda n: value({m: float(m == n) for m in names}))
    weights = {n: (1.0 if n == start else 0.0) for n in names}
    best = value(weights)
    for _ in range(rounds):
        improved = False
        for name in names:
            trials = [{**weights, name: step} for step in WEIGHT_STEPS if step != weights[name]]
            scored = [(value(trial), trial) for trial in trials if any(trial.values())]
            score, trial = max(scored, key=lambda pair: pair[0])
            if score > best * (1 + MIN_BLEND_GAIN):
                weights, best, improved = trial, score, True
        if not improved:
            break
    total = sum(weights.values())
    return {n: round(w / total, 4) for n, w in weights.items()}, best


def fit_bundles(data: TrainingSet, selection: Selection, opts: ModelSettingsView) -> tuple[dict[str, Bundle], dict[str, float]]:
    """Every family with its chosen parameters, plus the hybrid sharing their components.
    Returns the bundles and each one's fit seconds (the hybrid's: the sum of its parts)."""
    components, seconds = {}, {}
    for family, params in selection.params.items():
        started = time.monotonic()
        component = fit_family(family, data, params, opts)
        if component is not None:
            components[family], seconds[family] = component, time.monotonic() - started
    bundles = {family: Bundle(data.catalog, {family: c}, {family: 1.0}, data.rules,
                              {"family": family, **selection.params[family]})
               for family, c in components.items()}
    used = {n: w for n, w in selection.weights.items() if w > 0 and n in components}
    bundles[HYBRID] = Bundle(data.catalog, {n: components[n] for n in used}, used, data.rules,
                             {"family": HYBRID, "weights": used, "parts": {n: selection.params[n] for n in used}})
    seconds[HYBRID] = sum(seconds[n] for n in used)
    return bundles, seconds


@dataclass
class Evaluation:
    metrics: dict[str, float]
    lists: DataFrame          # (user_id, item_ids, scores) of the truth users, cached


def evaluate(bundle: Bundle, data: TrainingSet, truth: DataFrame, ks: tuple[int, ...],
             cold_max_items: int) -> Evaluation:
    """Score the truth users with the bundle (rules included) and compute every metric in Spark;
    cold users have at most cold_max_items training items, the others are warm."""
    from nightrec.evaluation import catalog_metrics, ranking_metrics
    from nightrec.scoring import ranked_rows, recommend

    users = data.user_rows().join(truth.select("user_id").distinct(), "user_id")
    lists = recommend(bundle, users, max(ks)).cache()
    rows = ranked_rows(lists)
    counts = data.feedback.groupBy("user_id").agg(F.count("*").alias("n"))
    segments = counts.select("user_id", F.when(F.col("n") <= cold_max_items, "cold").otherwise("warm").alias("segment"))
    item_users = data.feedback.groupBy("item_id").agg(F.countDistinct("user_id").alias("users"))
    metrics = ranking_metrics(rows, truth, ks, segments)
    metrics |= catalog_metrics(rows, item_users, counts.count(), len(data.catalog), ks)
    return Evaluation(metrics, lists)
