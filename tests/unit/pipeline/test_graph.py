"""DVC's stage graph, targets and the order the flow submits stages in."""

from __future__ import annotations

from pathlib import Path

import pytest

from cvpipe.pipeline.graph import family, select_stages, stage_graph, topological_order
from tests.support.tiny_dvc import tiny_repo

# The shape of cvpipe's DAG once every stage is there.
GRAPH: dict[str, tuple[str, ...]] = {
    "download": (),
    "ingest": ("download",),
    "split": ("ingest",),
    "decode": ("download", "split"),
    "features": ("decode",),
    "train@scratch": ("decode",),
    "train@feature_extraction": ("features",),
    "train@feature_extraction_aug": ("decode",),
    "train@fine_tuning": ("train@feature_extraction_aug", "decode"),
    "evaluate@scratch": ("train@scratch",),
    "evaluate@fine_tuning": ("train@fine_tuning",),
}


def test_family_strips_foreach_key_and_dvcfile() -> None:
    assert family("train@scratch") == "train"
    assert family("download") == "download"
    assert family("sub/dvc.yaml:evaluate@x") == "evaluate"


def test_topological_order_puts_every_stage_after_its_upstream() -> None:
    order = topological_order(GRAPH)
    assert sorted(order) == sorted(GRAPH)
    for stage, ups in GRAPH.items():
        assert all(order.index(up) < order.index(stage) for up in ups), stage
    assert order[:4] == ["download", "ingest", "split", "decode"]


def test_topological_order_rejects_cycles_and_unknown_stages() -> None:
    with pytest.raises(ValueError, match="cycle"):
        topological_order({"a": ("b",), "b": ("a",)})
    with pytest.raises(ValueError, match="not in the graph"):
        topological_order({"a": ("ghost",)})


def test_select_stages_takes_targets_and_everything_upstream() -> None:
    assert set(select_stages(GRAPH, ["split"])) == {"download", "ingest", "split"}
    selected = select_stages(GRAPH, ["evaluate@fine_tuning"])
    assert set(selected) == {
        "download",
        "ingest",
        "split",
        "decode",
        "train@feature_extraction_aug",
        "train@fine_tuning",
        "evaluate@fine_tuning",
    }
    assert selected["train@fine_tuning"] == GRAPH["train@fine_tuning"]
    assert select_stages(GRAPH, None) == GRAPH


def test_select_stages_accepts_a_foreach_group() -> None:
    selected = select_stages(GRAPH, ["train"])
    trains = {s for s in GRAPH if s.startswith("train@")}
    assert trains and {s for s in selected if s.startswith("train@")} == trains
    assert "evaluate@scratch" not in selected


def test_select_stages_names_the_stages_there_are() -> None:
    with pytest.raises(ValueError, match=r"no stage 'trian'.*download, ingest"):
        select_stages(GRAPH, ["trian"])


@pytest.mark.slow
def test_stage_graph_is_dvcs(tmp_path: Path) -> None:
    repo = tiny_repo(tmp_path / "repo")
    assert stage_graph(repo) == {"make": (), "use": ("make",), "broken": (), "slow": ()}
