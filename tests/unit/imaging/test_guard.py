"""The near-duplicate guard: one line with the numbers and the parameters when groups look like a loose rule."""

from __future__ import annotations

import pytest

from cvpipe.imaging.guard import GroupGuard, group_problem


def test_small_groups_in_a_few_percent_of_each_class_pass() -> None:
    groups = ["a", "a", "b", "b", "b"] + [f"single{i}" for i in range(195)]
    labels = ["cat"] * 100 + ["dog"] * 100
    assert group_problem(groups, labels) is None  # 5 of 100 cats: at the bound, not past it
    assert group_problem([], []) is None


def test_a_class_swallowed_by_groups_is_named_with_its_numbers() -> None:
    groups = [f"g{i // 2}" for i in range(40)] + [f"single{i}" for i in range(160)]
    labels = ["cat"] * 100 + ["dog"] * 100
    message = group_problem(groups, labels)
    assert message is not None and "\n" not in message
    assert "groups hold 40 of 100 images of class 'cat' (40.0%" in message
    assert "split.near_duplicate.max_class_fraction=0.05" in message
    assert "split.near_duplicate.threshold" in message and "20 group(s)" in message
    assert "largest group" not in message


def test_a_giant_group_is_named_and_the_prefix_is_configurable() -> None:
    groups = ["giant"] * 30 + [f"single{i}" for i in range(970)]
    labels = ["0"] * 500 + ["1"] * 500
    message = group_problem(groups, labels, GroupGuard(max_class_fraction=0.1, param_prefix="audit.near"))
    assert message is not None
    assert "the largest group holds 30 images (more than audit.near.max_group_size=25)" in message
    assert "class" not in message.split(";")[0].split(":")[1]


def test_a_few_copies_in_a_small_class_pass_whatever_their_share() -> None:
    groups = ["a", "a", "b", "b", "c", "c"] + [f"single{i}" for i in range(54)]
    labels = ["cat"] * 30 + ["dog"] * 30
    assert group_problem(groups, labels) is None  # 6 of 30 cats (20%) but fewer than max_group_size images
    message = group_problem(groups, labels, GroupGuard(max_group_size=5))
    assert message is not None and "groups hold 6 of 30 images of class 'cat'" in message


def test_ties_name_the_first_class_and_bad_input_is_refused() -> None:
    guard = GroupGuard(max_group_size=2)
    message = group_problem(["a", "a", "b", "b", "c", "d", "d", "e", "e", "f"], ["y"] * 5 + ["x"] * 5, guard)
    assert message is not None and "class 'x'" in message
    with pytest.raises(ValueError, match="labels"):
        group_problem(["a"], [])
    with pytest.raises(ValueError, match="max_group_size"):
        GroupGuard(max_group_size=1)
    with pytest.raises(ValueError, match="max_class_fraction"):
        GroupGuard(max_class_fraction=2.0)
