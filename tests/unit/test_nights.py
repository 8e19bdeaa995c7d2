"""Every stage run is recorded (ops/stage_runs) with its state, seconds and summary or error: what the
night's report, /healthz and /metrics read."""

import dataclasses

import pytest

from nightrec.errors import PermanentError
from nightrec.pipeline import nights
from nightrec.pipeline.report import night_state
from nightrec.pipeline.runtime import stage_main


@dataclasses.dataclass
class Fitted:
    rows: int
    seconds: dict  # a stage's own breakdown, as train's: not the run's seconds


def test_stage_runs_are_recorded_with_their_summary_or_their_error(make_settings, monkeypatch):
    settings = make_settings()
    monkeypatch.setattr("nightrec.pipeline.runtime.load_settings", lambda env=None: settings)
    summary = stage_main("train", lambda s, ds: Fitted(7, {"fit": 1.5}), ["--ds", "2024-06-30"], needs_spark=False)
    assert summary["seconds"] == {"fit": 1.5}

    def broken(s, ds):
        raise PermanentError("no holdout: no user has enough items\nsecond line")

    with pytest.raises(PermanentError):
        stage_main("score", broken, ["--ds", "2024-06-30"], needs_spark=False)
    runs = nights.stage_runs(settings)["2024-06-30"]
    assert runs["train"]["state"] == "success" and runs["train"]["summary"]["rows"] == 7
    assert 0 <= runs["train"]["seconds"] < 5
    assert runs["score"]["state"] == "failed"
    assert runs["score"]["error"] == "PermanentError: no holdout: no user has enough items"
    assert night_state(runs) == ("failed", "score")
