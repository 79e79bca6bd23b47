"""benchmarks/mlperf_step_times.py: a block's step time is its duration over its steps."""
import json

from benchmarks.mlperf_step_times import block_step_times_s, mllog_events


def _line(key, time_ms, value=None, event="POINT_IN_TIME", **metadata):
    return ":::MLLOG " + json.dumps({"namespace": "", "time_ms": time_ms, "event_type": event, "key": key,
                                     "value": value, "metadata": metadata})


def test_block_duration_over_its_steps():
    tokens = 11 * 16 * 2048  # 11 steps of global batch 16 at 2048 tokens
    text = "\n".join([
        "noise", _line("global_batch_size", 0, 16), _line("max_sequence_length", 0, 2048),
        _line("block_start", 1000, event="INTERVAL_START", epoch_count=tokens),
        _line("block_stop", 23000, event="INTERVAL_END", epoch_count=tokens),
        _line("eval_start", 23000), ":::MLLOG {broken",
        _line("block_start", 30000, event="INTERVAL_START", epoch_count=tokens),
        _line("block_stop", 41000, event="INTERVAL_END", epoch_count=tokens),
    ])
    gbs, times = block_step_times_s(mllog_events(text))
    assert gbs == 16
    assert times == [2.0, 1.0]


def test_logged_step_times_leave_out_the_first_tenth():
    from benchmarks.mlperf_step_times import steady_step_s
    steps = [_line("tracked_stats", i, {"train_step_time": 9.0 if i == 0 else 1.0 + 0.01 * (i % 3)}, step=i)
             for i in range(20)]
    text = "\n".join([_line("global_batch_size", 0, 32), _line("max_sequence_length", 0, 8192), *steps])
    gbs, step_s = steady_step_s(mllog_events(text))
    assert gbs == 32 and step_s == 1.01  # the 9 s warm-up step is in the first tenth
