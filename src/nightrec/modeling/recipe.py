"""Recipes: what a night fits. A candidate (one family, or the hybrid of several), each used
family's hyperparameters and the blend weights; tuning chooses it from the search space."""

from __future__ import annotations

import itertools
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

from nightrec.modeling.candidates import FAMILIES as FAMILY_MODULES

FAMILIES = tuple(FAMILY_MODULES)  # als, itemknn, neighbours, content, popularity
HYBRID = "hybrid"
CANDIDATES = FAMILIES + (HYBRID,)


@dataclass(frozen=True)
class Recipe:
    """What a night fits: a candidate (a family or the hybrid), each used family's hyperparameters
    and the blend weights. Tuning chooses it; it is stored as JSON with every model version."""

    candidate: str
    params: dict[str, dict]
    weights: dict[str, float]

    def families(self) -> list[str]:
        return [f for f in FAMILIES if self.weights.get(f, 0) > 0]

    def scaled_to_users(self, factor: float) -> Recipe:
        """The recipe for `factor` times as many users as it was tuned on: co-occurrence counts grow
        with users, so EASE's l2 and the neighbours' shrink grow with them (ALS's reg_param is
        already scaled per user and item by Spark)."""
        scaled = {"itemknn": "l2", "neighbours": "shrink"}
        params = {family: ({**p, scaled[family]: round(float(p[scaled[family]]) * factor, 3)}
                           if family in scaled and scaled[family] in p else dict(p))
                  for family, p in self.params.items()}
        return Recipe(self.candidate, params, dict(self.weights))

    def flat_params(self) -> dict:
        """One level of params, as MLflow shows them: als.rank, weight.als, ..."""
        flat = {"candidate": self.candidate}
        for family, params in self.params.items():
            flat |= {f"{family}.{k}": v for k, v in params.items()}
        if self.candidate == HYBRID:
            flat |= {f"weight.{n}": w for n, w in self.weights.items()}
        return flat

    def to_json(self) -> str:
        return json.dumps({"candidate": self.candidate, "params": self.params, "weights": self.weights}, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> Recipe:
        try:
            recipe = cls(str(data["candidate"]), {f: dict(p) for f, p in data["params"].items()},
                         {f: float(w) for f, w in data["weights"].items()})
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"a recipe needs candidate, params and weights: {error!r} in {data!r}") from None
        unknown = (set(recipe.params) | set(recipe.weights)) - set(FAMILIES)
        if recipe.candidate not in CANDIDATES or unknown or not recipe.families():
            raise ValueError(f"not a usable recipe: {data!r} (families: {FAMILIES}, candidates: {CANDIDATES})")
        if recipe.candidate != HYBRID and recipe.families() != [recipe.candidate]:
            raise ValueError(f"recipe {data!r}: candidate {recipe.candidate} must weigh itself alone")
        for family in recipe.families():
            missing = sorted(set(FAMILY_MODULES[family].REQUIRED_PARAMS) - set(recipe.params.get(family, {})))
            if missing:
                raise ValueError(f"recipe {data!r}: {family} needs {missing}")
        return recipe

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_file(cls, path: str | Path) -> Recipe:
        try:
            return cls.from_dict(tomllib.loads(Path(path).read_text()))
        except (OSError, tomllib.TOMLDecodeError, ValueError) as error:
            raise ValueError(f"{path}: {error}") from None


def load_search_space(path: str | Path) -> dict[str, dict[str, list]]:
    space = tomllib.loads(Path(path).read_text())
    unknown = set(space) - set(FAMILIES)
    if unknown:
        raise ValueError(f"{path}: unknown candidate families {sorted(unknown)}; known: {FAMILIES}")
    return space


def grid(space: dict[str, list]) -> list[dict]:
    names = sorted(space)
    return [dict(zip(names, values)) for values in itertools.product(*(space[n] for n in names))]
