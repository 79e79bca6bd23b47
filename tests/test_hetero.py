"""Heterogeneous clusters: faster devices get more layers; beats the homogeneous split."""
import pytest

from planner.cluster import load_cluster
from planner.cost.step import predict_plan
from planner.search.hetero import search_hetero
from planner.catalog import load_model


@pytest.fixture(scope="module")
def result():
    model = load_model("llama3-8b", seq_len=4096)
    cluster = load_cluster("clusters/mixed-a100-h100.yaml")
    return search_hetero(model, cluster, 256, fixed={"mb": 1, "recompute": "none", "sharding": "zero1"},
                         top_k=5, cluster_path="clusters/mixed-a100-h100.yaml")


def test_faster_devices_get_more_layers(result):
    assert result.fits
    best = result.entries[0].config
    stage_type = [i for i, n in enumerate(best.pps) for _ in range(n)]
    a100 = sum(n for n, t in zip(best.stage_layers, stage_type) if t == 0) / best.pps[0]
    h100 = sum(n for n, t in zip(best.stage_layers, stage_type) if t == 1) / best.pps[1]
    # per stage, normalised by tp (GPUs per stage): H100 stages carry more layers per GPU
    assert h100 / best.tps[1] > a100 / best.tps[0]


def test_beats_homogeneous_split(result):
    assert result.baseline is not None
    assert result.ranked[0].step_time_s < result.baseline.prediction.step_time_s
    assert result.gain > 0 and "homogeneous split" in result.gain_text
    assert len(set(result.baseline.config.stage_layers)) == 1  # equal layers per stage


def test_plan_file_records_cluster_path(result, tmp_path):
    plans = result.best_plans
    assert plans
    plan = plans[0]
    assert plan.cluster == "clusters/mixed-a100-h100.yaml" and plan.hardware == ""
    path = plan.save(tmp_path / "p.json")
    from planner.plan import Plan

    again = Plan.load(path)
    pred = predict_plan(again)
    assert pred.step_time_s == pytest.approx(plan.prediction["step_time_s"], rel=1e-9)
