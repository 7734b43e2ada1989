"""Search-space specs and the schedulers' decisions: pure logic, no process."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from localbackend import LocalBackendError
from localbackend.cli._common import CliError
from localbackend.cli._schedulers import (
    CONTINUE,
    PAUSE,
    Asha,
    Pbt,
    ResumeTrial,
    Scheduler,
    Settings,
    StartTrial,
    rung_levels,
)
from localbackend.cli._search_space import (
    Choice,
    Integer,
    LogUniform,
    SearchSpace,
    Uniform,
    build_search_space,
    parse_param,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("param", "expected"),
    [
        ("lr=uniform(0,0.5)", Uniform(0.0, 0.5)),
        ("lr=loguniform(1e-4, 1e-1)", LogUniform(1e-4, 1e-1)),
        ("width=int(16,256)", Integer(16, 256)),
        ("opt=choice(sgd,adam)", Choice(("sgd", "adam"))),
        ("bs=choice(32, 64)", Choice((32, 64))),
        ("epochs=10", 10),
        ("lr=0.1", 0.1),
        ("flag=true", True),
        ("name=adam", "adam"),
        ("sizes=[1,2]", [1, 2]),
    ],
)
def test_specs(param: str, expected: object) -> None:
    assert parse_param(param)[1] == expected


def test_errors_are_ours_and_name_the_value() -> None:
    with pytest.raises(CliError) as caught:
        parse_param("lr=loguniform(-1,1)")
    assert isinstance(caught.value, LocalBackendError)
    assert "'lr=loguniform(-1,1)'" in str(caught.value) and caught.value.exit_code == 2


def test_the_shipped_search_space_and_round_trip() -> None:
    space = build_search_space(str(REPO / "entrypoints" / "search_space.json"), ["epochs=3"])
    assert space.entries["epochs"] == 3
    assert isinstance(space.entries["lr"], LogUniform)
    again = SearchSpace.from_json(json.loads(json.dumps(space.to_json())))
    assert again.entries == space.entries
    config = space.sample(random.Random(0))
    assert config == again.sample(random.Random(0))
    assert set(config) == set(space.entries)


def test_asha_pauses_at_rungs_and_promotes_the_top_third() -> None:
    space = SearchSpace({"lr": Uniform(0, 1)})
    asha = Asha(space, Settings("loss", "min", "epoch", 9.0), random.Random(0))
    assert rung_levels(1, 3, 9) == [1, 3]
    for trial_id in range(3):
        asha.on_trial_start(trial_id, {})
    assert asha.on_result(0, 1, 0.5).decision == PAUSE  # alone on its rung: not top 1/3
    assert asha.on_result(1, 1, 0.9).decision == PAUSE
    # The third result makes trial 0 the top third; the newcomer is worse and pauses too.
    assert asha.on_result(2, 1, 0.7).decision == PAUSE
    action = asha.next_action(can_start=True, idle={0, 1, 2})
    assert isinstance(action, ResumeTrial) and action.trial_id == 0
    assert isinstance(asha.next_action(can_start=True, idle={1, 2}), StartTrial)
    asha.on_trial_start(3, {})
    assert asha.on_result(3, 1, 0.1).decision == CONTINUE  # best on arrival: goes straight on
    restored = Asha(space, Settings("loss", "min", "epoch", 9.0), random.Random(0))
    restored.load_state_dict(json.loads(json.dumps(asha.state_dict())))
    assert restored.state_dict() == asha.state_dict()


def test_pbt_bottom_member_takes_a_top_members_checkpoint() -> None:
    space = SearchSpace({"lr": LogUniform(1e-3, 1.0), "epochs": 10})
    pbt = Pbt(space, Settings("loss", "min", "epoch", 10.0), random.Random(0), population=4,
              interval=2)
    for trial_id in range(4):
        pbt.on_trial_start(trial_id, {"lr": 0.01 * (trial_id + 1), "epochs": 10})
    for trial_id, loss in [(0, 0.1), (1, 0.2), (2, 0.3)]:
        pbt.on_result(trial_id, 2, loss)
    verdict = pbt.on_result(3, 2, 0.9)
    assert verdict.decision == PAUSE and verdict.event is not None
    assert verdict.event["event"] == "exploit" and verdict.event["source"] == 0
    action = pbt.next_action(can_start=False, idle={3})
    assert isinstance(action, ResumeTrial) and action.copy_from == 0
    assert action.new_config is not None and action.new_config["epochs"] == 10
    assert 1e-3 <= action.new_config["lr"] <= 1.0
    assert pbt.label(3) == "1"


def test_each_trials_part_of_the_scheduler_state_brings_an_old_state_up_to_date() -> None:
    """What the tuner journals per batch: an old state plus the touched trials' parts."""
    space = SearchSpace({"lr": LogUniform(1e-3, 1.0), "epochs": 9})
    settings = Settings("loss", "min", "epoch", 9.0)

    def make(kind: str) -> Scheduler:
        if kind == "asha":
            return Asha(space, settings, random.Random(0))
        return Pbt(space, settings, random.Random(0), population=4, interval=1)

    for kind in ("asha", "pbt"):
        live = make(kind)
        for trial_id in range(4):
            live.on_trial_start(trial_id, {"lr": 0.01 * (trial_id + 1), "epochs": 9})
        live.on_result(0, 1, 0.5)
        live.on_result(1, 1, 0.4)
        old = json.loads(json.dumps(live.state_dict()))
        # Then: more results, a trial that ends while paused, a promotion.
        live.on_result(2, 1, 0.3)
        live.on_result(3, 1, 0.9)
        live.on_trial_end(0, "Stopped")
        live.next_action(can_start=False, idle={1, 2, 3})
        restored = make(kind)
        restored.load_state_dict(old)
        for trial_id in range(4):
            restored.load_trial_state(trial_id, json.loads(json.dumps(live.trial_state(trial_id))))
        assert restored.state_dict() == live.state_dict(), kind
        assert [restored.label(t) for t in range(4)] == [live.label(t) for t in range(4)]
