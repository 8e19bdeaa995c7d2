"""Tuning: each family's hyperparameters by grid search, then the hybrid's blend weights, chosen on
inner validation splits (NDCG on a sample of users, computed on the driver in blocks)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from nightrec.modeling.dataset import ModelSettingsView, TrainingSet
from nightrec.modeling.moments import standardize
from nightrec.modeling.recipe import FAMILIES, HYBRID, Recipe, grid
from nightrec.modeling.scoring import Bundle, UserBlock, user_block
from nightrec.modeling.training import bundle_of, fit_family

WEIGHT_STEPS = (0.0, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0)
# A blend weight moves only when validation NDCG rises by this share: smaller gains are within the
# noise of a few thousand validation users and do not carry over to unseen data.
MIN_BLEND_GAIN = 0.005
CANDIDATES_PER_FAMILY = 200    # per user: each family's best items that the blend search re-ranks
SAMPLE_BLOCK_SCORES = 1 << 22  # dense scores held at once while scoring the validation sample (16 MB)


def recipe_of(name: str, selection: Selection) -> Recipe:
    """The recipe of one searched candidate: a family alone, or the hybrid of the families it weighs."""
    if name == HYBRID:
        used = {n: w for n, w in selection.weights.items() if w > 0}
        return Recipe(HYBRID, {n: selection.params[n] for n in used}, used)
    return Recipe(name, {name: selection.params[name]}, {name: 1.0})


@dataclass
class Selection:
    params: dict[str, dict]                  # chosen hyperparameters per family
    weights: dict[str, float]                # hybrid blend weights
    validation_ndcg: dict[str, float]        # per candidate, mean over the inner validation folds
    trials: list[dict] = field(default_factory=list)


class ValidationSample:
    """Up to `max_users` users of the truth, their histories, and their relevant items: what
    hyperparameters and blend weights are chosen on (NDCG@k computed on the driver).

    Scores are computed in blocks of users (SAMPLE_BLOCK_SCORES at a time), so the sample's size is
    set by users alone, whatever the catalog: nothing users x catalog is ever held whole."""

    def __init__(self, data: TrainingSet, truth: DataFrame, max_users: int, seed: int, k: int):
        truth_users = truth.select("user_id").distinct()
        n = truth_users.count()
        if n == 0:
            raise ValueError("the validation split has no users: load more days or raise the held-out share")
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
        self.unavailable = data.rules.unavailable
        self.rows_per_block = max(1, SAMPLE_BLOCK_SCORES // max(len(data.catalog), 1))

    def _blocks(self, components: list):
        """(rows, raw scores of each component) for each block of sampled users."""
        n = len(self.block.user_ids)
        for start in range(0, n, self.rows_per_block):
            rows = slice(start, min(start + self.rows_per_block, n))
            part = UserBlock(self.block.user_ids[rows], self.block.history[rows], self.block.recency[rows])
            yield rows, [c.score(part) for c in components]

    def _mask(self, scores: np.ndarray, rows: slice) -> np.ndarray:
        scores = scores.astype(np.float32, copy=True)
        scores[self.block.history[rows].nonzero()] = -np.inf
        if self.unavailable is not None:
            scores[:, self.unavailable] = -np.inf
        return scores

    def ndcg(self, component) -> float:
        """Mean NDCG@k of one component's lists over the sampled users that have a relevant item."""
        k = min(self.k, self.truth.shape[1])
        total = users = 0.0
        for rows, (scores,) in self._blocks([component]):
            masked = self._mask(scores, rows)
            top = np.argpartition(-masked, k - 1, axis=1)[:, :k]
            values = np.take_along_axis(masked, top, axis=1)
            relevant = np.asarray(self.truth[rows][np.arange(len(top))[:, None], top].todense()) > 0
            block_total, block_users = _ndcg_sums(values, relevant, self.truth[rows].getnnz(axis=1), k)
            total, users = total + block_total, users + block_users
        return total / users if users else 0.0

    def shortlist(self, components: dict[str, object]) -> Shortlist:
        """Each user's CANDIDATES_PER_FAMILY best items of every component (after the rules), with
        every component's standardised score on each: what blends are ranked on. A blend's top k
        lies inside the union unless it ranks an item below that depth for every component."""
        names = list(components)
        depth = min(CANDIDATES_PER_FAMILY, self.truth.shape[1])
        width = depth * len(names)
        n = len(self.block.user_ids)
        z = {name: np.full((n, width), -np.inf, dtype=np.float32) for name in names}
        relevant = np.zeros((n, width), dtype=bool)
        for rows, raw in self._blocks([components[name] for name in names]):
            standard = [self._mask(standardize(scores), rows) for scores in raw]
            best = [np.argpartition(-s, depth - 1, axis=1)[:, :depth] for s in standard]
            columns = np.concatenate(best, axis=1)
            columns.sort(axis=1)
            repeated = np.zeros_like(columns, dtype=bool)
            repeated[:, 1:] = columns[:, 1:] == columns[:, :-1]
            for name, scores in zip(names, standard):
                values = np.take_along_axis(scores, columns, axis=1)
                values[repeated] = -np.inf  # an item counts once
                z[name][rows] = values
            hits = np.asarray(self.truth[rows][np.arange(columns.shape[0])[:, None], columns].todense()) > 0
            relevant[rows] = hits & ~repeated
        return Shortlist(z, relevant, self.truth.getnnz(axis=1), self.k)


@dataclass
class Shortlist:
    """Standardised scores of each family on each user's candidate items; -inf: no candidate."""

    z: dict[str, np.ndarray]       # family -> (users, candidates)
    relevant: np.ndarray           # (users, candidates) bool: a held-out item of the user
    n_relevant: np.ndarray         # per user, in the whole catalog
    k: int

    def ndcg(self, scores: np.ndarray) -> float:
        k = min(self.k, scores.shape[1])
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        values = np.take_along_axis(scores, top, axis=1)
        relevant = np.take_along_axis(self.relevant, top, axis=1)
        total, users = _ndcg_sums(values, relevant, self.n_relevant, k)
        return total / users if users else 0.0


def _ndcg_sums(values: np.ndarray, relevant: np.ndarray, n_relevant: np.ndarray, k: int) -> tuple[float, int]:
    """(sum of NDCG@k, users counted) over users with a relevant item; values/relevant: each user's
    k best candidates in any order (ties: the earlier column first, as a stable sort leaves them)."""
    order = np.argsort(-values, axis=1, kind="stable")
    hits = np.take_along_axis(relevant & np.isfinite(values), order, axis=1)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    users = n_relevant > 0
    ideal = np.cumsum(discounts)[np.minimum(n_relevant, k).astype(int) - 1]
    return float(((hits * discounts).sum(axis=1)[users] / ideal[users]).sum()), int(users.sum())


def select(folds: list[tuple[TrainingSet, DataFrame]], space: dict[str, dict[str, list]],
           opts: ModelSettingsView, log=print, deadline: float | None = None) -> Selection:
    """Search the grid of each family in the space, then learn the hybrid's blend weights, on one or
    more inner (training set, truth) folds: every choice maximises NDCG averaged over the folds.
    Families absent from the space are not candidates. Past the deadline (time.monotonic()), each
    family still gets its first grid point; the other trials are skipped and listed as such."""
    samples = [ValidationSample(inner, truth, opts.validation_users, opts.seed, opts.eval_k) for inner, truth in folds]
    params, best_components, trials, validation = {}, {}, [], {}
    for family in (f for f in FAMILIES if f in space):
        best = None
        points = grid(space[family]) or [{}]
        for n, candidate in enumerate(points, 1):
            if best is not None and deadline is not None and time.monotonic() > deadline:
                trials.append({"family": family, "params": candidate, "skipped": "time budget spent"})
                log(f"{family} {candidate} ({n} of {len(points)}): skipped, time budget spent")
                continue
            started = time.monotonic()
            components = [fit_family(family, inner, candidate, opts, share=True) for inner, _ in folds]
            if any(c is None for c in components):
                break
            ndcg = float(np.mean([sample.ndcg(c) for sample, c in zip(samples, components)]))
            trials.append({"family": family, "params": candidate, "ndcg": ndcg,
                           "seconds": round(time.monotonic() - started, 1)})
            log(f"{family} {candidate} ({n} of {len(points)}): validation NDCG@{opts.eval_k} {ndcg:.4f} "
                f"in {time.monotonic() - started:.1f} s")
            if best is None or ndcg > best[0]:
                best = (ndcg, candidate, components)
        if best is not None:
            validation[family], params[family], best_components[family] = best
        for inner, _ in folds:
            inner.memo.clear()  # what this family's grid shared
    shortlists = [sample.shortlist({f: comps[fold] for f, comps in best_components.items()})
                  for fold, sample in enumerate(samples)]
    weights, validation[HYBRID] = learn_weights(shortlists)
    log(f"hybrid weights {weights}: validation NDCG@{opts.eval_k} {validation[HYBRID]:.4f}")
    return Selection(params, weights, validation, trials)


def learn_weights(shortlists: list[Shortlist], rounds: int = 3) -> tuple[dict, float]:
    """Coordinate ascent over non-negative weights of the standardised family scores, maximising
    validation NDCG (mean over folds): each family's best step is taken when it gains at least
    MIN_BLEND_GAIN. Starts from the best single family, so the blend never does worse than it on
    validation."""
    names = list(shortlists[0].z)

    def value(w: dict[str, float]) -> float:
        used = [n for n in names if w[n] > 0]
        return float(np.mean([s.ndcg(sum(np.float32(w[n]) * s.z[n] for n in used)) for s in shortlists]))

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


def fit_bundles(data: TrainingSet, selection: Selection,
                opts: ModelSettingsView) -> tuple[dict[str, Bundle], dict[str, float]]:
    """Every family with its chosen parameters, plus the hybrid sharing their components.
    Returns the bundles and each one's fit seconds (the hybrid's: the sum of its parts)."""
    components, seconds = {}, {}
    for family, params in selection.params.items():
        started = time.monotonic()
        component = fit_family(family, data, params, opts)
        if component is not None:
            components[family], seconds[family] = component, time.monotonic() - started
    bundles = {name: bundle_of(recipe_of(name, selection), components, data) for name in [*components, HYBRID]}
    seconds[HYBRID] = sum(seconds[n] for n in bundles[HYBRID].weights)
    return bundles, seconds
