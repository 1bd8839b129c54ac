"""`td3 demo`'s defaults make a valid job at the budget the README's demo figures use."""

from __future__ import annotations

from api.schemas import build_job_config
from td3.cli import build_parser
from td3.demo import demo_config


def test_demo_defaults_make_a_valid_job():
    args = build_parser().parse_args(["demo"])
    config = build_job_config(demo_config(args))
    assert (config.distill.users, config.distill.length) == (20, 10)
    assert config.distill.temperature == 0.3 and config.distill.alt
    assert config.evaluations == ["summary", "full", "random-users", "random-interactions"]
    assert (args.data_users, args.data_items, args.data_follow) == (600, 400, 0.8)
