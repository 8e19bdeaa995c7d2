"""Approximate top-A over ALS item factors (maximum inner product): the libraries on the package
index, side by side, against exact search on the same vectors.

    .venv/bin/python bench/ann.py --items 1000000 --rank 32 --depth 400

Vectors: a fitted model's (`--champion`, a bench/scale.py size's folder: its champion's item
factors and some of its users folded in) or synthetic ones shaped like ALS factors (items around
many tastes, norms spread as popularity is; users mixing a few tastes). Per library and setting:
build seconds (all cores, once per night), queries per second on one core (a Spark task's share),
and recall@depth of its lists against the exact ones. Prints a table and this command.

nightrec installs faiss-cpu only; the others, to compare: pip install usearch==2.26.6 voyager==2.2.3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scale import settings_of
from threadpoolctl import threadpool_limits


def synthetic(n_items: int, n_users: int, rank: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tastes = rng.normal(size=(max(n_items // 200, 8), rank)).astype(np.float32)
    items = tastes[rng.integers(len(tastes), size=n_items)] + 0.7 * rng.normal(size=(n_items, rank))
    items *= rng.lognormal(0.0, 0.6, size=(n_items, 1))  # popular items have longer factors
    mix = rng.dirichlet(np.full(3, 0.5), size=n_users).astype(np.float32)
    picks = rng.integers(len(tastes), size=(n_users, 3))
    users = np.einsum("um,umr->ur", mix, tastes[picks]) + 0.3 * rng.normal(size=(n_users, rank))
    return items.astype(np.float32), users.astype(np.float32)


def champion_factors(home: Path, n_users: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The ALS item factors of the champion a bench/scale.py size left (home), and n_users of its
    users' factors folded in from their silver history (one unit of strength per item taken)."""
    from nightrec.data import lake
    from nightrec.modeling import registry, tracking
    from nightrec.modeling.candidates.als import AlsComponent

    settings = settings_of(home)
    tracking.configure(settings)
    bundle, _ = registry.load_champion(settings.mlflow.registered_model)
    als = next(c for c in bundle.components.values() if isinstance(c, AlsComponent))
    taken = lake.small_table(settings.table("silver/interactions"), ["user_id", "item_id"])
    users, items = (taken.column(c).to_numpy() for c in ("user_id", "item_id"))
    chosen = np.random.default_rng(seed).choice(np.unique(users), n_users, replace=False)
    keep = np.isin(users, chosen)
    rows, positions = np.searchsorted(chosen, users[keep]), np.searchsorted(bundle.item_ids, items[keep])
    history = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, positions)),
                            shape=(n_users, len(bundle.item_ids)))
    history.data[:] = 1.0  # a pair taken on several days counts once
    return als.item_factors[als.known_items()], als.fold_in(history)


def exact(items: np.ndarray, users: np.ndarray, depth: int) -> tuple[float, np.ndarray]:
    """Seconds per query on one core and the exact top-depth, best first (blocks of 64 users)."""
    found = np.empty((len(users), depth), dtype=np.int64)
    started = time.perf_counter()
    with threadpool_limits(1):
        for start in range(0, len(users), 64):
            scores = users[start:start + 64] @ items.T
            best = np.argpartition(-scores, depth, axis=1)[:, :depth]
            found[start:start + 64] = np.take_along_axis(best, np.argsort(-np.take_along_axis(scores, best, 1), 1), 1)
    return (time.perf_counter() - started) / len(users), found


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f[f >= 0], t)) / len(t) for f, t in zip(found, truth)]))


def faiss_ivf(items, nlist):
    import faiss

    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(items.shape[1]), items.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(items)
    index.add(items)

    def search(queries, depth, probes):
        index.nprobe = probes
        return faiss_on_one_core(index, queries, depth)
    return search


def faiss_hnsw(items, m):
    import faiss

    index = faiss.IndexHNSWFlat(items.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 128
    index.add(items)

    def search(queries, depth, ef):
        index.hnsw.efSearch = ef
        return faiss_on_one_core(index, queries, depth)
    return search


def faiss_on_one_core(index, queries, depth):
    import faiss

    faiss.omp_set_num_threads(1)
    try:
        return index.search(queries, depth)[1]
    finally:
        faiss.omp_set_num_threads(2)


def usearch_hnsw(items, m):
    from usearch.index import Index

    index = Index(ndim=items.shape[1], metric="ip", dtype="f32", connectivity=m, expansion_add=128)
    index.add(np.arange(len(items)), items, threads=2)

    def search(queries, depth, ef):
        index.expansion_search = ef
        return index.search(queries, depth, threads=1).keys.astype(np.int64)
    return search


def voyager_hnsw(items, m):
    from voyager import Index, Space

    index = Index(Space.InnerProduct, num_dimensions=items.shape[1], M=m, ef_construction=128)
    index.add_items(items, num_threads=2)

    def search(queries, depth, ef):
        return index.query(queries, k=depth, num_threads=1, query_ef=ef)[0].astype(np.int64)
    return search


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--depth", type=int, default=400)
    parser.add_argument("--k", type=int, default=100, help="the lists' length: how much of the exact top-k is found")
    parser.add_argument("--champion", type=Path, help="a bench/scale.py size's folder: its champion's factors")
    parser.add_argument("--libraries", nargs="+", default=["faiss-ivf", "faiss-hnsw", "usearch", "voyager"])
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.champion:
        items, users = champion_factors(args.champion.resolve(), args.queries, args.seed)
    else:
        items, users = synthetic(args.items, args.queries, args.rank, args.seed)
    per_query, truth = exact(items, users, args.depth)
    rows = [("exact (numpy matmul + partition)", "-", 0.0, 1 / per_query, 1.0, 1.0)]
    nlist = int(4 * np.sqrt(len(items)))
    efs = [args.depth, 3 * args.depth // 2, 2 * args.depth]  # a graph search keeps at least depth candidates
    settings = {"faiss-ivf": (faiss_ivf, nlist, "nprobe", [16, 32, 64, 128]),
                "faiss-hnsw": (faiss_hnsw, 32, "efSearch", efs),
                "usearch": (usearch_hnsw, 32, "expansion", efs),
                "voyager": (voyager_hnsw, 32, "ef", efs)}
    for name in args.libraries:
        build, structure, knob, values = settings[name]
        started = time.perf_counter()
        search = build(items, structure)
        built = time.perf_counter() - started
        for value in values:
            started = time.perf_counter()
            found = search(users, args.depth, value)
            seconds = time.perf_counter() - started
            rows.append((f"{name} ({structure})", f"{knob}={value}", built, len(users) / seconds, recall(found, truth),
                         recall(found, truth[:, :args.k])))
            print(rows[-1], flush=True)
    print(f"\n$ python bench/ann.py {' '.join(argv)}")
    print(f"{len(items):,} items x rank {items.shape[1]}, {len(users):,} queries, top-{args.depth} by inner product\n")
    print(f"| library (structure) | setting | build s (2 cores) | queries/s (1 core) | vs exact | recall@{args.depth} "
          f"| exact top-{args.k} found |")
    print("|---|---|---|---|---|---|---|")
    for name, setting, built, rate, found, top in rows:
        print(f"| {name} | {setting} | {built:.0f} | {rate:,.0f} | {rate * per_query:.1f}x | {found:.3f} | {top:.3f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
