"""The package's architecture, enforced: four wings that import only downwards, a serving wing that
needs none of the pipeline's dependencies, and stages that share code through the wings, never
through each other."""

import pytest

from helpers import imports, package_modules, reached_from
from nightrec.constants import STAGES, TUNE

SHARED = {"constants", "errors", "settings"}  # every wing may use these
MAY_IMPORT = {"serving": {"serving"}, "data": {"data"}, "modeling": {"modeling", "serving"},
              "pipeline": {"pipeline", "data", "modeling", "serving"}}
PIPELINE_ONLY = {"pyspark", "mlflow", "airflow", "great_expectations", "deltalake", "numba", "pandas", "pyarrow",
                 "scipy", "boto3", "matplotlib"}
MODULES = package_modules()


def nightrec_imports(name: str) -> set[str]:
    return {m for m in imports(MODULES[name]) if m in MODULES}


def test_the_wings_exist_and_hold_every_module():
    wings = {name.split(".")[1] for name in MODULES if name.count(".") >= 1}
    assert {"data", "modeling", "serving", "pipeline"} <= wings
    loose = sorted(n for n in MODULES if n.count(".") == 1 and n.split(".")[1] not in (*MAY_IMPORT, *SHARED, "cli"))
    assert loose == [], f"modules outside the wings: {loose}"


@pytest.mark.parametrize("wing", sorted(MAY_IMPORT))
def test_a_wing_imports_only_the_wings_below_it(wing):
    for name in (n for n in MODULES if n.startswith(f"nightrec.{wing}")):
        for target in nightrec_imports(name):
            part = target.split(".")[1] if target.count(".") else ""
            assert part in MAY_IMPORT[wing] | SHARED, f"{name} imports {target}"


def test_serving_needs_nothing_of_the_pipeline():
    """Everything serving/ reaches, directly or through other nightrec modules, imports no Spark,
    MLflow, Airflow (nor the rest of the pipeline's dependencies)."""
    reached = reached_from([n for n in MODULES if n.startswith("nightrec.serving")])
    assert "nightrec.serving.api" in reached and "nightrec.settings" in reached
    for name in reached:
        heavy = {m for m in imports(MODULES[name]) if m.split(".")[0] in PIPELINE_ONLY}
        assert not heavy, f"{name} imports {sorted(heavy)}"


def test_no_stage_imports_another_stage():
    stages = {f"nightrec.pipeline.{stage}" for stage in (*STAGES, TUNE)}
    assert stages <= set(MODULES)
    for stage in stages:
        others = {m for m in nightrec_imports(stage) if m.rsplit(".", 1)[0] in stages or m in stages} - {stage}
        assert not others, f"{stage} imports {sorted(others)}"
