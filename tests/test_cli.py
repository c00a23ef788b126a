"""The `fastrec` command: every recipe's parser builds together (flags shared through fastrec.train must not
collide with a recipe's own) and each subcommand parses its defaults."""

import pytest

from fastrec.cli import build_parser

COMMANDS = [
    ["bench", "--quick"],
    ["demo"],
    ["lightgcn", "train"],
    ["sellarec", "train"],
    ["sellarec", "train", "--lr-scheduler", "linear", "--lr", "1e-4"],
    ["kirec", "compare", "--data", "DIR"],
    ["kirec", "train", "--data", "DIR"],
    ["lcrec", "train", "--data", "DIR", "--index", "I.json", "--out", "RUN"],
    ["lcrec", "eval", "--run", "RUN"],
]


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a))
def test_every_subcommand_parses(argv):
    args = build_parser().parse_args(argv)
    assert callable(args.func)


def test_sellarec_engine_flags_reach_its_config():
    from fastrec.recipes import sellarec

    args = build_parser().parse_args(["sellarec", "train", "--lr-scheduler", "linear", "--lr", "1e-4"])
    cfg = sellarec.config_from_args(args)
    assert cfg.lr_scheduler == "linear" and cfg.lora_lr == 1e-4
    assert sellarec.config_from_args(build_parser().parse_args(["sellarec", "train"])).lr_scheduler == "cosine"
