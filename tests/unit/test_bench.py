"""Smoke tests of the benchmark scripts at tiny sizes: they run and report; no timing is asserted."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import common, dag_scale, decode_speed, epoch_input, features_speed, run_all
from cvpipe.config import ImageConfig, Params, parse_params
from cvpipe.stages import decode as decode_module
from cvpipe.stages.decode import DecodePaths

REPO = Path(__file__).resolve().parents[2]


def _row(**changes: object) -> common.Result:
    fields = {"id": "x", "what": "w", "cvpipe": "1 s", "seed": "2 s", "ratio": 2.0, "target": ">= 1x", "passed": True}
    return common.Result(**{**fields, **changes})  # type: ignore[arg-type]


def test_table_verdicts_and_json_round_trip(tmp_path: Path) -> None:
    rows = [_row(), _row(id="y", passed=False, ratio=None), _row(id="z", passed=None)]
    text = common.table(rows)
    assert text.splitlines()[0] == "| id | cvpipe | seed way | ratio | target | result |"
    assert "| x | 1 s | 2 s | 2.00x | >= 1x | pass |" in text
    assert "| y | 1 s | 2 s | — | >= 1x | miss |" in text and "| n/a |" in text
    common.save_json(tmp_path / "r.json", rows, 3.5)
    loaded, seconds = common.load_json(tmp_path / "r.json")
    assert loaded == rows and seconds == 3.5


def test_rows_without_a_seed_side_and_rows_judged_on_a_ratio() -> None:
    alone = common.Result.alone("noop", "w", "1.5 s", "<= 2 s", True, ["d"])
    assert (alone.seed, alone.ratio, alone.verdict) == ("—", None, "pass")
    fast = common.Result.speedup("decode", "w", "3 img/s", "1 img/s", 3.0, 2.0, [], unit=" less time")
    assert fast.target == ">= 2x less time" and fast.passed
    assert not common.Result.speedup("decode", "w", "a", "b", 1.5, 2.0, []).passed


def fake_benchmark(images: int, counts: tuple[int, ...], cache: Path | None = None) -> list[common.Result]:
    return [_row(what=f"{images} {counts} {cache}")]


def test_run_main_parses_options_and_writes_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["x.py", "--images", "7", "--counts", "3,4", "--cache", str(tmp_path), "--json", str(tmp_path / "r.json")]
    monkeypatch.setattr(sys, "argv", argv)
    common.run_main("fake", "A fake benchmark.\n\nMore.", fake_benchmark, images=2000, counts=(1, 2))
    (row,), _ = common.load_json(tmp_path / "r.json")
    assert row.what == f"7 (3, 4) {tmp_path}"


def test_labels_and_seed_batches_count_images() -> None:
    np.testing.assert_array_equal(common.member_labels(["train/dog.3.jpg", "train/cat.10.jpg"]), [1, 0])
    batches = [(np.zeros((4, 2)), np.zeros(4)), (np.zeros((3, 2)), np.zeros(3))]
    assert common.count_batches(batches) == {"images": 7}
    assert common.count_batches([np.zeros((5, 1))]) == {"images": 5}


def test_sampler_reads_the_pss_every_tenth_sample() -> None:
    class Recorder(common.Sampler):
        def __init__(self) -> None:
            super().__init__(interval=0.001)
            self.full: list[bool] = []

        def sample(self, full: bool) -> None:
            self.full.append(full)
            if len(self.full) >= 25:
                self._stop.set()

    with Recorder() as recorder:
        recorder._thread.join(timeout=10)
    assert [i for i, full in enumerate(recorder.full) if full] == [0, 10, 20]


def test_markdown_names_machine_command_and_details(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datetime as dt

    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    started = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
    path = common.write_markdown("demo", [_row(details=["a detail"])], "python bench/x.py", started, ["a note"])
    text = path.read_text()
    assert path.name == "demo-2026-11-28.md"
    for expected in (
        "2026-11-28T12:00:00+00:00",
        f"{common.cores()} cores",
        common.cpu_model(),
        "`python bench/x.py`",
        "- a note",
        "- a detail",
        "| x |",
    ):
        assert expected in text


def test_alternate_rotates_and_measures() -> None:
    calls: list[str] = []
    times = common.alternate({"a": lambda: calls.append("a"), "b": lambda: {"seconds": 7.0, "cpu": 1.0}}, rounds=3)
    assert calls == ["a", "a", "a"]
    assert times["b"].wall == [7.0] * 3 and times["b"].cpu == [1.0] * 3
    assert len(times["a"].wall) == 3 and all(value >= 0 for value in times["a"].cpu)


def test_small_archive_is_kaggle_layout_and_reused(tmp_path: Path) -> None:
    path = common.small_archive(20, side=32, cache=tmp_path)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        assert names[:2] == ["train/cat.0.jpg", "train/dog.0.jpg"] and len(names) == 20
        assert len({archive.read(name) for name in names}) == 20
    assert common.small_archive(20, side=32, cache=tmp_path) == path


def test_run_measured_sees_a_childs_memory(tmp_path: Path) -> None:
    # Held for 1.2 s: the PSS is read every tenth sample (every 0.5 s), the RSS every 50 ms.
    code = "import numpy as np, time; a = np.ones(150 * 2**20, np.uint8); time.sleep(1.2)"
    measured = common.run_measured([sys.executable, "-c", code], cwd=tmp_path)
    assert measured.returncode == 0
    assert measured.peak_single_bytes > 150 * 2**20
    assert measured.peaks.pss > 140 * 2**20 and measured.peaks.main > 140 * 2**20


def remote_factory(offset: int) -> tuple[dict[str, object], dict[str, int]]:
    return {"add": lambda: {"value": offset + 1}}, {"offset": offset}


def test_remote_contenders_run_in_a_child() -> None:
    with common.Remote("tests.unit.test_bench:remote_factory", {"offset": 41}) as remote:
        assert remote.info["offset"] == 41
        reply = remote.call("add")
    assert reply["value"] == 42 and reply["seconds"] >= 0 and "cpu" in reply


def test_all_images_split_feeds_the_decode_stage(tmp_path: Path) -> None:
    archive = common.small_archive(30, side=40, cache=tmp_path)
    table_path = dag_scale.all_images_split(archive, tmp_path / "splits.parquet")
    table = pd.read_parquet(table_path)
    assert sorted(table["split"].unique()) == ["test", "train", "val"] and len(table) == 30
    decode_module.run(Params(image=ImageConfig(size=32, workers=1)), DecodePaths(archive, table_path, tmp_path / "out"))
    assert np.load(tmp_path / "out" / "train.npy").shape == (24, 32, 32, 3)
    val = table[table["split"] == "val"].sort_values("row")
    expected = [int(Path(member).name.startswith("dog.")) for member in val["member"]]
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "val_labels.npy"), expected)


def test_dag_overrides_are_valid_params(tmp_path: Path) -> None:
    params = json.loads(json.dumps(dag_scale.overrides(tmp_path / "a.zip")))
    parse_params({**params, "data": {**params["data"], "path": str(tmp_path / "a.zip")}})
    stage_argv = ["/x/.venv/bin/python", "/x/.venv/bin/cvpipe", "ingest", "--out"]
    assert dag_scale.StageMonitor._stage_of(stage_argv) == "ingest"
    assert dag_scale.StageMonitor._stage_of(["/bin/sh", "-c", "cvpipe ingest --archive a"]) is None


def test_run_all_lists_every_script() -> None:
    ids = [i for _, _, group in run_all.BENCHMARKS for i in group]
    assert ids == ["decode", "epoch-input", "features", "noop", "memory", "demo"]
    for _, script, _ in run_all.BENCHMARKS:
        assert (REPO / "bench" / script).is_file()


@pytest.mark.slow
def test_decode_benchmark_at_tiny_size(tmp_path: Path) -> None:
    (row,) = decode_speed.run(images=40, rounds=1, size=32, cache=tmp_path)
    assert row.id == "decode" and row.ratio and row.ratio > 0 and row.passed in (True, False)
    assert any("decode limit" in line for line in row.details)


@pytest.mark.slow
def test_epoch_input_benchmark_at_tiny_size(tmp_path: Path) -> None:
    (row,) = epoch_input.run(images=40, rounds=1, size=32, cache=tmp_path)
    assert row.id == "epoch-input" and row.ratio and row.ratio > 0


@pytest.mark.slow
def test_features_benchmark_at_tiny_size(tmp_path: Path) -> None:
    (row,) = features_speed.run(images=8, size=32, cache=tmp_path, archive_images=8)
    assert row.id == "features" and row.ratio and row.ratio > 0
    assert any("relative error" in line for line in row.details)
