"""`clusterplan predict` answers for every preset on every profile (issue #2's done-when)."""
import json

import pytest

from planner.cli import main
from planner.presets import PRESETS
from planner.profile_yaml import available_profiles, load_profile


def _tp_for(model, gpus_per_node):
    for tp in (8, 4, 2, 1):
        if (gpus_per_node % tp == 0 and model.n_heads % tp == 0 and model.ffn_hidden_size % tp == 0
                and (model.n_kv_heads % tp == 0 or tp % model.n_kv_heads == 0)):
            return tp
    return 1


@pytest.mark.parametrize("profile", available_profiles())
def test_every_preset_predicts(profile, capsys):
    gpus = load_profile(profile).gpus_per_node
    for name, model in PRESETS.items():
        tp = _tp_for(model, gpus)
        dp = gpus // tp
        argv = ["predict", "--model", name, "--hardware", profile, "--nodes", "1", "--tp", str(tp),
                "--pp", "1", "--dp", str(dp), "--global-batch", str(2 * dp), "--recompute", "full",
                "--seq-len", str(min(model.seq_len, 2048)), "--json"]
        if dp > 1:
            argv += ["--sharding", "zero3"]
        assert main(argv) == 0, (profile, name)
        out = json.loads(capsys.readouterr().out)
        assert out["step_time_s"] > 0 and out["peak_memory_bytes"] > 0 and isinstance(out["fits"], bool)
