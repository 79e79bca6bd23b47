"""Heterogeneous clusters: faster devices get more layers; beats the homogeneous split."""
import pytest

from planner.catalog import load_model
from planner.cluster import load_cluster
from planner.cost.step import predict_plan
from planner.search.hetero import search_hetero


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


def test_best_first_ranks_what_pricing_every_candidate_ranks():
    model = load_model("llama3-8b", seq_len=4096)
    cluster = load_cluster("clusters/mixed-a100-h100.yaml")
    kw = dict(fixed={"mb": 1}, top_k=6)
    pruned = search_hetero(model, cluster, 256, **kw)
    every = search_hetero(model, cluster, 256, prune=False, **kw)
    assert [r["plan"] for r in pruned.rows()] == [r["plan"] for r in every.rows()]
    assert [r.step_time_s for r in pruned.ranked] == [r.step_time_s for r in every.ranked]
    assert pruned.baseline.prediction.step_time_s == every.baseline.prediction.step_time_s
    assert pruned.evaluated < every.evaluated


def test_a_tp_per_node_type_is_a_plan_file(tmp_path):
    """The per-type-tp winner is a Plan on the cluster file: saved, loaded and predicted the same;
    its breakdown carries the tensor-parallel communication the assembler prices."""
    from planner.plan import Plan

    model = load_model("llama3-70b")
    cluster = load_cluster("clusters/mixed-a100-h100.yaml")
    res = search_hetero(model, cluster, 512, top_k=3, cluster_path="clusters/mixed-a100-h100.yaml")
    mixed = [p for p in res.best_plans if p.parallel.stage_tp]
    assert mixed, "expected a plan with a tp per node type among the top 3"
    plan = mixed[0]
    again = Plan.load(plan.save(tmp_path / "p.json"))
    assert again == plan and again.id == plan.id and again.cluster and not again.hardware
    pred = predict_plan(again)
    assert pred.step_time_s == pytest.approx(plan.prediction["step_time_s"], rel=1e-12)
    assert pred.time.tp_s > 0 and pred.fits


def test_a_tp_per_stage_cannot_be_exported_or_run(tmp_path):
    from planner.errors import InputError
    from planner.export import FORMATS, export_plan
    from planner.launch import LaunchConfig
    from planner.commands.run import launch
    from planner.plan import ParallelConfig, Plan

    model = load_model("llama3-70b")
    P = ParallelConfig(tp=8, pp=3, dp=4, global_batch=512, seq_len=8192, stage_tp=(8, 4, 4),
                       stage_layers=(19, 31, 30), sequence_parallel=True)
    plan = Plan(model=model, hardware="", cluster="clusters/mixed-a100-h100.yaml", n_nodes=8, gpus_per_node=8,
                parallel=P)
    for fmt in FORMATS:
        with pytest.raises(InputError) as err:
            export_plan(plan, fmt)
        assert err.value.field == "stage_tp"
    path = plan.save(tmp_path / "p.json")
    with pytest.raises(InputError) as err:
        launch(str(path), LaunchConfig(plan_path=str(path), out=str(tmp_path / "run"), device="cpu"))
    assert err.value.field == "stage_tp"


def test_sites_keep_each_stage_on_one_node_type_and_memory_matches_predict():
    from planner.cost.step import peak_memory, plan_sites, predict
    from planner.errors import InputError
    from planner.plan import ParallelConfig

    model = load_model("llama3-70b")
    cluster = load_cluster("clusters/mixed-a100-h100.yaml")
    P = ParallelConfig(tp=8, pp=3, dp=4, global_batch=512, seq_len=8192, stage_tp=(8, 4, 4),
                       stage_layers=(19, 31, 30), sequence_parallel=True, sharding="zero2")
    sites = plan_sites(cluster, P)
    assert [(s.node.name, s.P.tp, s.ranks) for s in sites] == [("dgx-a100-80gb", 8, (0,)),
                                                               ("dgx-h100-80gb", 4, (1, 2))]
    pred = predict(model, cluster, P)
    mem = peak_memory(model, cluster, P)
    assert mem.peak_bytes == pred.peak_memory_bytes and mem.fits == pred.fits
    straddling = ParallelConfig(tp=8, pp=3, dp=4, global_batch=512, seq_len=8192, stage_tp=(4, 8, 4),
                                stage_layers=(19, 31, 30))
    with pytest.raises(InputError) as err:
        predict(model, cluster, straddling)
    assert err.value.field == "parallel"
