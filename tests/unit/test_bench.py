"""The benchmark scripts: their pieces, and each script run whole in its quick mode (no timing is asserted)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import common, dag_scale, run_all
from cvpipe.config import ImageConfig, parse_params
from cvpipe.layout import labels_file, split_file
from cvpipe.stages import decode

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


def test_run_main_side_runs_one_contender_and_prints_its_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["x.py", "--contender", "add", '{"offset": 41}'])
    sides = {"add": lambda offset: {"value": offset + 1, **common.measure(lambda: None)}}
    common.run_main("fake", "A fake benchmark.", fake_benchmark, sides, images=1, counts=(1,))
    reply = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert reply["value"] == 42 and reply["seconds"] >= 0 and reply["cpu"] >= 0


def test_alternate_rotates_the_order_every_round(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def fake_child(module: str, side: str, config: dict[str, int]) -> dict[str, float]:
        calls.append(side)
        return {"seconds": float(config["n"]), "cpu": 0.5}

    monkeypatch.setattr(common, "in_child", fake_child)
    times = common.alternate("m", {"a": {"n": 1}, "b": {"n": 2}, "c": {"n": 3}}, rounds=3)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert times["b"].wall == [2.0] * 3 and times["c"].cpu == [0.5] * 3


def test_a_contender_runs_in_its_own_process(tmp_path: Path) -> None:
    archive = common.synthetic_archive(6, cache=tmp_path, side=64)
    reply = common.in_child("decode_speed", "simplejpeg_dct", {"archive": str(archive), "size": 32})
    assert reply["seconds"] > 0 and reply["cpu"] >= 0
    with pytest.raises(RuntimeError, match="--contender nope failed"):
        common.in_child("decode_speed", "nope", {})


def test_labels_and_seed_batches_count_images() -> None:
    np.testing.assert_array_equal(common.member_labels(["train/dog.3.jpg", "train/cat.10.jpg"]), [1, 0])
    batches = [(np.zeros((4, 2)), np.zeros(4)), (np.zeros((3, 2)), np.zeros(3))]
    assert common.count_batches(batches) == 7
    assert common.count_batches([np.zeros((5, 1))]) == 5


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


def test_synthetic_archive_is_kaggle_layout_and_reused(tmp_path: Path) -> None:
    path = common.synthetic_archive(20, cache=tmp_path, side=32)
    with zipfile.ZipFile(path) as archive:
        names = sorted(archive.namelist())
        assert len(names) == 20 and {"train/cat.0.jpg", "train/dog.9.jpg"} <= set(names)
        assert len({archive.read(name) for name in names}) == 20
    mtime = path.stat().st_mtime_ns
    assert common.synthetic_archive(20, cache=tmp_path, side=32) == path and path.stat().st_mtime_ns == mtime


def test_run_stages_times_each_stage(tmp_path: Path) -> None:
    code = "import time; print(\"Running stage 'a'\", flush=True); time.sleep(0.2); print(\"Running stage 'b'\")"
    done = common.run_stages([sys.executable, "-c", code], tmp_path)
    assert done.returncode == 0 and [name for name, _ in done.stages] == ["a", "b"]
    assert done.stages[0][1] >= 0.2 and done.seconds >= 0.2


def test_run_measured_sees_a_childs_memory(tmp_path: Path) -> None:
    # Held for 1.2 s: the PSS is read every tenth sample (every 0.5 s), the RSS every 50 ms.
    code = "import numpy as np, time; a = np.ones(150 * 2**20, np.uint8); time.sleep(1.2)"
    measured = common.run_measured([sys.executable, "-c", code], cwd=tmp_path)
    assert measured.returncode == 0
    assert measured.peak_single_bytes > 150 * 2**20
    assert measured.peaks.pss > 140 * 2**20 and measured.peaks.main > 140 * 2**20


def test_all_images_split_feeds_the_decode_stage(tmp_path: Path) -> None:
    archive = common.synthetic_archive(30, cache=tmp_path, side=40)
    table_path = dag_scale.all_images_split(archive, tmp_path / "splits.parquet")
    table = pd.read_parquet(table_path)
    assert sorted(table["split"].unique()) == ["test", "train", "val"] and len(table) == 30
    params = parse_params({"image": ImageConfig(size=32, workers=1).model_dump()})
    decode.run(params, decode.DecodePaths(archive, table_path, tmp_path / "out"))
    assert np.load(split_file(tmp_path / "out", "train")).shape == (24, 32, 32, 3)
    val = table[table["split"] == "val"].sort_values("row")
    expected = [int(Path(member).name.startswith("dog.")) for member in val["member"]]
    np.testing.assert_array_equal(np.load(labels_file(tmp_path / "out", "val")), expected)


def test_dag_overrides_are_valid_params(tmp_path: Path) -> None:
    params = json.loads(json.dumps(dag_scale.overrides(tmp_path / "a.zip")))
    parse_params({**params, "data": {**params["data"], "path": str(tmp_path / "a.zip")}})
    stage_argv = ["/x/.venv/bin/python", "/x/.venv/bin/cvpipe", "ingest", "--out"]
    assert dag_scale.StageMonitor._stage_of(stage_argv) == "ingest"
    assert dag_scale.StageMonitor._stage_of(["/bin/sh", "-c", "cvpipe ingest --archive a"]) is None


def test_run_all_lists_every_module() -> None:
    ids = [i for _, _, group in run_all.BENCHMARKS for i in group]
    assert ids == ["decode", "epoch-input", "features", "precision-epoch", "precision-guard", "noop", "memory", "demo"]
    for _, module, _ in run_all.BENCHMARKS:
        assert (REPO / "bench" / f"{module}.py").is_file()


def test_no_benchmark_edits_sys_path_or_imports_the_tests() -> None:
    scripts = sorted((REPO / "bench").rglob("*.py"))
    modules = {module for _, module, _ in run_all.BENCHMARKS}
    assert modules <= {script.stem for script in scripts}
    for script in scripts:
        text = script.read_text()
        assert "sys.path" not in text and "from tests" not in text and "import tests" not in text, script


# ------------------------------------------------------------------------------------------- quick mode


def quick(module: str, tmp_path: Path, *args: str, timeout: int = 600) -> list[common.Result]:
    """Run ``python -m bench.<module>`` with CVPIPE_BENCH_QUICK=1; return the results it wrote as JSON."""
    env = {**os.environ, "CVPIPE_BENCH_QUICK": "1", "CVPIPE_BENCH_CACHE": str(tmp_path / "cache")}
    out = tmp_path / f"{module}.json"
    argv = [sys.executable, "-m", f"bench.{module}", "--json", str(out), *args]
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "machine: " in done.stdout and common.cpu_model() in done.stdout
    return common.load_json(out)[0]


@pytest.mark.slow
def test_decode_benchmark_quick(tmp_path: Path) -> None:
    (row,) = quick("decode_speed", tmp_path)
    assert row.id == "decode" and row.ratio and row.ratio > 0 and row.passed in (True, False)
    assert any("decode limit" in line for line in row.details)


@pytest.mark.slow
def test_epoch_input_benchmark_quick(tmp_path: Path) -> None:
    (row,) = quick("epoch_input", tmp_path)
    assert row.id == "epoch-input" and row.ratio and row.ratio > 0


@pytest.mark.slow
def test_features_benchmark_quick(tmp_path: Path) -> None:
    (row,) = quick("features_speed", tmp_path)
    assert row.id == "features" and row.ratio and row.ratio > 0
    assert any("relative error" in line for line in row.details)


@pytest.mark.slow
def test_demo_benchmark_quick(tmp_path: Path) -> None:
    (row,) = quick("demo_time", tmp_path)
    assert row.id == "demo" and row.ratio is None


@pytest.mark.slow
def test_run_all_quick_writes_one_table(tmp_path: Path) -> None:
    env = {**os.environ, "CVPIPE_BENCH_QUICK": "1", "CVPIPE_BENCH_CACHE": str(tmp_path / "cache")}
    argv = [sys.executable, "-m", "bench.run_all", "--only", "demo"]
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| demo |" in done.stdout and common.cpu_model() in done.stdout
    assert str(REPO / "bench" / "results") not in done.stdout  # quick runs leave the real results alone


@pytest.mark.slow
def test_dag_benchmark_quick(tmp_path: Path) -> None:
    noop, memory = quick("dag_scale", tmp_path, timeout=900)
    assert (noop.id, memory.id) == ("noop", "memory")
    assert all("not measured" not in line for line in memory.details)
