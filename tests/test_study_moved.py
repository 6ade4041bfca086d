"""A study folder moved or copied elsewhere keeps its finished steps: records are read through
the move their own output paths imply, and content identities still decide what is stale."""

from __future__ import annotations

import shutil
from pathlib import PurePath

import pytest

from cxrprobe.errors import ConfigError
from cxrprobe.workflow.moves import Move, same_setting
from cxrprobe.workflow.state import DONE, REFUSED, STALE, plan_states
from tests.test_study_stale import Chain


@pytest.mark.parametrize(
    ("recorded", "now", "old", "new"),
    [
        ("/scratch/a/run/x.json", "/proj/a/run/x.json", "/scratch", "/proj"),
        ("/tmp/d1/study/m.parquet", "/tmp/d2/study/m.parquet", "/tmp/d1", "/tmp/d2"),
        ("/a/run/x.json", "/a/run/x.json", None, None),  # not moved
        ("/a/x.json", "/b/y.json", None, None),  # nothing shared: no move
    ],
)
def test_move_is_the_prefix_before_the_shared_tail(recorded, now, old, new):
    move = Move.between(recorded, now)
    if old is None:
        assert move.old == move.new and move.forward(recorded) == recorded
    else:
        assert (move.old, move.new) == (PurePath(old), PurePath(new))
        assert move.forward(recorded) == now


def test_only_paths_under_the_old_folder_move():
    move = Move.between("/scratch/a/run/x.json", "/proj/a/run/x.json")
    assert move.forward("/scratch/a/data/img") == "/proj/a/data/img"
    assert move.forward("/elsewhere/weights.pt") == "/elsewhere/weights.pt"
    assert move.forward("relative/path") == "relative/path"
    assert move.back("/proj/a/data/img") == "/scratch/a/data/img"
    recorded = {"root": "/scratch/a/data", "grid": [1, 2], "weights": "/w/v.pt"}
    assert same_setting(
        recorded, {"root": "/proj/a/data", "grid": [1, 2], "weights": "/w/v.pt"}, move
    )
    assert same_setting(recorded, {**recorded}, move)  # a root that stayed where it was
    assert not same_setting(recorded, {**recorded, "root": "/proj/a/other"}, move)
    assert not same_setting(recorded, {**recorded, "grid": [1, 3]}, move)


@pytest.fixture
def moved(chain_ran, tmp_path) -> Chain:
    """The finished chain's whole folder (its source file and its run) moved elsewhere."""
    target = tmp_path / "moved"
    shutil.move(chain_ran.root, target)
    chain = Chain.__new__(Chain)
    chain.root, chain.out, chain.src, chain.calls, chain.fail_store = (
        target,
        target / "run",
        target / "src.txt",
        [],
        False,
    )
    return chain


@pytest.fixture
def chain_ran(tmp_path) -> Chain:
    (tmp_path / "first").mkdir()
    chain = Chain(tmp_path / "first")
    assert chain.run() == ["ran", "ran", "ran"]
    return chain


def test_a_moved_study_is_done_and_still_notices_changes(moved):
    assert [s.state for s in plan_states(moved.steps(), moved.out)] == [DONE] * 3
    assert moved.run() == ["skipped"] * 3
    moved.src.write_text("xyz")  # content still decides: a changed input is stale after a move
    states = plan_states(moved.steps(), moved.out)
    assert [s.state for s in states] == [STALE] * 3
    assert states[0].why == f"input {moved.src} changed"
    assert moved.run() == ["redone"] * 3
    assert (moved.out / "b.txt").read_text() == "ZYX"


def test_a_copied_study_is_done_where_its_files_are_copies(chain_ran, tmp_path):
    shutil.copytree(chain_ran.root, tmp_path / "copy")  # mtimes differ: contents are hashed
    copy = Chain.__new__(Chain)
    copy.root, copy.out, copy.src, copy.calls, copy.fail_store = (
        tmp_path / "copy",
        tmp_path / "copy" / "run",
        tmp_path / "copy" / "src.txt",
        [],
        False,
    )
    assert copy.run() == ["skipped"] * 3
    chain_ran.src.write_text("changed")  # the original, not the copy's input
    assert copy.run() == ["skipped"] * 3


def test_changed_settings_after_a_move_are_refused_one_step_per_line(moved):
    steps = moved.steps({"seed": 1})
    assert plan_states(steps, moved.out)[0].state == REFUSED
    with pytest.raises(ConfigError) as error:
        moved.run(seed=1)
    lines = str(error.value).splitlines()
    assert lines[0].startswith("1 step(s) would change what they already made")
    assert lines[1].startswith("  step a already ran with different settings (seed): delete ")
    assert str(moved.out / "a.txt") in lines[1]
