"""Experiment definitions and the assignment of users to variants (nightrec.serving.experiments)."""

import numpy as np
import pytest
from scipy.stats import chi2_contingency, chisquare

from nightrec.serving.experiments import Experiment, ExperimentError, Variant, parse_variant

STARTED = "2026-11-30T10:00:00+00:00"


def experiment(*specs: str, name: str = "ab1", started: str = STARTED) -> Experiment:
    return Experiment(name, tuple(parse_variant(s) for s in specs), started)


def test_variants_are_parsed_from_the_command_line_form():
    assert parse_variant("control=champion:90") == Variant("control", "champion", 90)
    assert parse_variant("treatment=challenger:10") == Variant("treatment", "challenger", 10)
    assert parse_variant("pinned=12:50") == Variant("pinned", "12", 50)
    assert parse_variant("diverse=champion:10:max_per_category=2") == \
        Variant("diverse", "champion", 10, {"max_per_category": 2})
    assert parse_variant("control=champion:90").follows_champion
    assert not parse_variant("diverse=champion:10:max_per_category=2").follows_champion
    for bad, message in (("control", "NAME=MODEL:WEIGHT"), ("control=champion", "NAME=MODEL:WEIGHT"),
                         ("Control=champion:9", "invalid name"), ("c=best:9", "is not champion"),
                         ("c=champion:0", "weight '0'"), ("c=champion:x", "weight 'x'"),
                         ("c=champion:5:colour=2", "rule 'colour=2'"), ("c=champion:5:max_per_category=0", "rule")):
        with pytest.raises(ExperimentError, match=message):
            parse_variant(bad)


def test_an_experiment_needs_distinct_variants_and_a_valid_end():
    with pytest.raises(ExperimentError, match="two or more variants"):
        experiment("a=champion:1")
    with pytest.raises(ExperimentError, match="distinct names"):
        experiment("a=champion:1", "a=challenger:1")
    with pytest.raises(ValueError):
        Experiment("ab", (parse_variant("a=champion:1"), parse_variant("b=3:1")), STARTED, until="2026-13-01")
    with pytest.raises(ExperimentError, match="experiment invalid name"):
        experiment("a=champion:1", "b=3:1", name="A/B")


def test_assignment_is_proportional_to_the_weights():
    ab = experiment("control=champion:90", "treatment=challenger:10")
    counts = np.bincount(ab.assign_many(np.arange(1, 100_001)), minlength=2)
    assert chisquare(counts, [90_000, 10_000]).pvalue > 0.001
    three = experiment("a=champion:50", "b=7:30", "c=8:20")
    counts = np.bincount(three.assign_many(np.arange(1, 100_001)), minlength=3)
    assert chisquare(counts, [50_000, 30_000, 20_000]).pvalue > 0.001


def test_assignment_is_the_same_per_user_everywhere_and_every_night():
    ab = experiment("control=champion:90", "treatment=challenger:10")
    users = np.concatenate([np.arange(1, 5001), np.array([2**31 - 1, 123_456_789])])
    vectorised = ab.assign_many(users)
    assert [ab.variants[i].name for i in vectorised] == [ab.assign(int(u)).name for u in users]
    again = Experiment.from_json(ab.to_json())  # as a worker or the score stage reads it back
    assert (again.assign_many(users) == vectorised).all()
    assert ab.assign(42) == ab.assign(42)


def test_a_new_experiment_reshuffles_users_independently_of_the_last_one():
    users = np.arange(1, 100_001)
    first = experiment("a=champion:50", "b=7:50").assign_many(users)
    other = experiment("a=champion:50", "b=7:50", name="ab2").assign_many(users)
    restarted = experiment("a=champion:50", "b=7:50", started="2026-12-07T10:00:00+00:00").assign_many(users)
    for second in (other, restarted):
        table = np.histogram2d(first, second, bins=2)[0]
        assert chi2_contingency(table).pvalue > 0.001  # who was in b before says nothing about b now


def test_consecutive_user_ids_do_not_cluster():
    ab = experiment("control=champion:50", "treatment=challenger:50")
    runs = np.diff(ab.assign_many(np.arange(1, 100_001))) != 0
    assert 0.48 < runs.mean() < 0.52  # a switch between neighbours half the time, as for coin flips
