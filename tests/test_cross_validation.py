"""Leave-one-source-out cross-validation (planner/cross_validation.py) on a small slice of the
published dataset: the refit must use only the other sources' rows."""
import csv
import dataclasses

import pytest

from planner.cross_validation import FITTED_CHOICES, _errors, _fit, cross_validate

ROWS = ("1", "2", "35", "36", "24")  # SC'21 PTD-P x2, Korthikanti x2 (A100), Megatron README (H100)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    with open("benchmarks/published_runs.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if r["row_id"] in ROWS]
        fields = reader.fieldnames
    path = tmp_path_factory.mktemp("cv") / "runs.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def gemm_result(small_dataset):
    choice = dataclasses.replace(FITTED_CHOICES[0], candidates=(0.8, 0.9, 1.0))
    return cross_validate(small_dataset, choice)


def test_every_source_is_predicted_with_a_value_fitted_without_it(gemm_result):
    table = gemm_result.per_source.set_index("source")
    assert set(table["rows"]) == {1, 2}
    h100 = table.loc[[s for s in table.index if "H100" in s][0]]
    assert h100["in_sample"] == pytest.approx(h100["cross_validated"])  # the A100 value does not touch it
    assert gemm_result.cross_validated.notna().all()
    assert len(gemm_result.in_sample) == len(ROWS)


def test_the_refit_sees_only_the_other_sources(small_dataset, gemm_result):
    errors, rows = _errors(small_dataset, gemm_result.choice)
    for t in gemm_result.per_source.itertuples():
        held = rows.index[rows["source"] == t.source]
        others = errors.drop(index=held)
        if "H100" not in t.source:  # A100 rows remain: the value is their argmin
            assert t.value_without == others.mean().idxmin()
        assert t.cross_validated == pytest.approx(errors.loc[held, t.value_without].mean())
        assert t.in_sample == pytest.approx(errors.loc[held, gemm_result.in_sample_value].mean())


def test_no_dependent_row_falls_back_to_the_documented_value():
    import pandas as pd

    choice = FITTED_CHOICES[-1]
    flat = pd.DataFrame({0.0: [0.1, 0.2], 1.0e9: [0.1, 0.2]})
    assert _fit(flat, choice) == choice.documented
    varying = pd.DataFrame({0.0: [0.1, 0.2], 1.0e9: [0.3, 0.2]})
    assert _fit(varying, choice) == 0.0
