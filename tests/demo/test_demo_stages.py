"""How the demo lays its stages out for several workers, without running them."""

import pytest

from scdpo.cli import build_parser
from scdpo.demo import DemoPlan, data_stages, scp_build_config
from scdpo.scp.commands import build_config_from_args


@pytest.mark.parametrize("neutral_frac", [0.0, 0.1])
def test_shard_commands_ask_for_the_demos_own_build(tmp_path, neutral_frac):
    plan = DemoPlan(scp_neutral_frac=neutral_frac)
    stages = data_stages(tmp_path, plan, workers=3)
    names = [s.name for s in stages]
    assert names[0].startswith("cost train") and names[-1] == "data build: SCP preference pairs"
    shards = [s for s in stages if s.command]
    assert len(shards) == 3 and stages[-1].command is None and stages[0].command is None
    for k, stage in enumerate(shards):
        argv = stage.command()
        assert argv[:2] == ["data", "build"] and argv[-2:] == ["--shard", f"{k}/3"]
        args = build_parser().parse_args(argv)
        # the same settings, or the merging stage would refuse the shards as another build's
        assert build_config_from_args(args) == scp_build_config(plan)
        assert args.neutral_frac == neutral_frac
        assert args.cost_model == str(tmp_path / "cost_model.safetensors") and args.out == str(tmp_path / "scp")
    assert [s.name for s in data_stages(tmp_path, plan, workers=1)] == [names[0], names[-1]]
