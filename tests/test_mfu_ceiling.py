"""A plan's MFU against the best published run on its GPU (planner/mfu_ceiling.py)."""
import dataclasses

from planner.catalog import load_model
from planner.cost.runtime import get_runtime
from planner.cost.step import cluster_for, predict
from planner.mfu_ceiling import MARGIN_POINTS, best_published, describe, mfu_check
from planner.plan import ParallelConfig

HEADER = ("row_id,source,profile,status,config,runtime,mfu_published_pct,share_compute,share_recompute,"
          "share_tp,share_cp,share_dp,share_pp,share_bubble,share_optimizer\n")


def table(tmp_path, mfu_pct, shares="0.7,0.2,0.1,0,0,0,0.2,0"):
    path = tmp_path / "rows.csv"
    path.write_text(HEADER + f"7,Paper,dgx-a100-80gb,predicted,tp8 pp8,megatron-lm-2021,{mfu_pct},{shares}\n"
                    + "8,Paper,dgx-a100-80gb,skipped,,,,,,,,,,,\n"
                    + "9,Other,dgx-h100-80gb,predicted,tp1,megatron-core,70,1,0,0,0,0,0,0,0\n")
    return path


def a100_prediction():
    model = load_model("gpt3-175b")
    P = ParallelConfig(tp=8, pp=8, dp=1, micro_batch=1, global_batch=64, recompute="none",
                       sequence_parallel=True)
    return predict(model, cluster_for("dgx-a100-80gb", 8), P, get_runtime("default"), timeline=False)


def test_best_run_is_the_highest_mfu_of_the_profile(tmp_path):
    best = best_published("dgx-a100-80gb", table(tmp_path, 40))
    assert best.row_id == 7 and best.mfu_pct == 40 and best.shares["recompute"] == 0.2
    assert best_published("mi300x-192gb-8x", table(tmp_path, 40)) is None
    assert best_published("dgx-a100-80gb", tmp_path / "missing.csv") is None


def test_a_plan_above_the_best_run_names_what_the_model_credits_it_with(tmp_path):
    pred = a100_prediction()
    mfu = 100 * pred.mfu
    assert mfu_check("dgx-a100-80gb", pred, table(tmp_path, mfu - MARGIN_POINTS + 0.1)) is None
    check = mfu_check("dgx-a100-80gb", pred, table(tmp_path, mfu - 10))
    assert check is not None and abs(check.excess_points - 10) < 1e-9
    text = describe(check)
    assert "row 7" in text and "less recomputation" in text and "less pipeline bubble" in text
    assert check.to_dict()["best_published_row"] == 7
    slower = dataclasses.replace(pred, mfu=0.0)
    assert mfu_check("dgx-a100-80gb", slower, table(tmp_path, 10)) is None
