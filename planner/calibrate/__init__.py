"""Calibration, torch-free: benchmark results -> hardware profile (:mod:`.profile`), running the
benchmarks (:mod:`.runner`), the executor's measured costs (:mod:`.executor_costs`,
:mod:`.executor_fits`) and fitting a profile to measured runs (:mod:`.fit_runs`)."""
