"""dvc.yaml, the CLI and cvpipe/layout.py tell one story about where every artifact lives.

dvc.yaml is parsed as DVC expands it; each stage's command line, outs, deps, metrics and the plots are held
to the layout table; its params keys to the sections its lineage record declares (``track_stage(...,
sections=[...])`` in the CLI, read from the AST) and to :class:`cvpipe.config.Params`.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
import typer

from cvpipe import cli, layout
from cvpipe.config import SPLITS, load_params
from cvpipe.ml.variants import VARIANTS, get_variant
from tests.support.codemap import ROOT, commands, dvc_stages, dvc_top_plots, invocation, paths

STAGES = dvc_stages()
NAMES = list(STAGES)
VARIANT_NAMES = [variant.name for variant in VARIANTS]
LAYOUT_PATHS = {value for value in vars(layout).values() if isinstance(value, Path)}
# Options naming a path that is neither a dep nor an out, and why.
UNTRACKED_OPTIONS = {("download", "--staging"): "the download cache outside DVC's outputs (a rerun resumes)"}


def variant_of(name: str) -> str:
    return name.partition("@")[2]


def expected_outs(name: str) -> list[Path]:
    """What each stage writes besides its lineage folder, from the layout table."""
    group, variant = name.partition("@")[0], variant_of(name)
    table: dict[str, list[Path]] = {
        "download": [layout.ARCHIVE, layout.SOURCE],
        "ingest": [layout.MANIFEST, layout.MANIFEST_REPORT],
        "split": [layout.SPLITS, layout.SPLIT_REPORT, layout.SPLIT_THUMBNAILS],
        "decode": [layout.IMAGES_CACHE],
        "features": [layout.FEATURES_CACHE],
        "audit": [layout.AUDIT_REPORT, layout.AUDIT_THUMBNAILS],
        "report": [layout.REPORT_HTML],
        "label_audit": [layout.LABEL_ISSUES],
        "embedding_audit": [layout.EMBEDDING_AUDIT_REPORT, layout.EMBEDDING_AUDIT_THUMBNAILS],
    }
    mnist = {
        "mnist_data": [layout.MNIST_CACHE],
        "mnist_train": [layout.MNIST_MODEL, layout.MNIST_TRAIN_DIR],
        "mnist_evaluate": [layout.MNIST_PLOTS, layout.MNIST_PREDICTIONS],
    }
    if name in mnist:
        return mnist[name]
    if group == "train":
        return [layout.model_file(variant), layout.train_dir(variant)]
    if group == "evaluate":
        return [layout.plots_dir(variant), layout.predictions_file(variant)]
    return table[group]


def expected_metrics(name: str) -> list[Path]:
    if name == "mnist_evaluate":
        return [layout.MNIST_METRICS]
    if name.startswith("evaluate@"):
        return [layout.metrics_file(variant_of(name))]
    if name == "label_audit":
        return [layout.LABEL_AUDIT_METRICS]
    if name == "embedding_audit":
        return [layout.EMBEDDING_AUDIT_METRICS]
    return [layout.AUDIT_METRICS] if name == "audit" else []


def known_paths() -> set[Path]:
    """Every path the layout table names, its functions applied to every variant, stage and split."""
    known = set(LAYOUT_PATHS)
    for cache in layout.CACHES:
        for split in SPLITS:
            known |= {layout.split_file(cache, split), layout.labels_file(cache, split)}
    for variant in VARIANT_NAMES:
        known |= {layout.model_file(variant), layout.train_dir(variant), layout.metrics_file(variant)}
        known |= {layout.plots_dir(variant), layout.live_plots_dir(variant), layout.predictions_file(variant)}
    known |= {layout.lineage_dir(name) for name in NAMES}
    return known


def inside(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path`` is ``folder`` or lies under it."""
    return Path(path) == Path(folder) or Path(folder) in Path(path).parents


def data_deps(stage: dict[str, Any]) -> list[str]:
    return [dep for dep in paths(stage.get("deps")) if not dep.startswith("cvpipe/")]


def all_outs() -> dict[str, str]:
    """Every out and metrics file of the DAG -> its stage."""
    return {
        out: name for name, stage in STAGES.items() for out in paths(stage.get("outs")) + paths(stage.get("metrics"))
    }


def test_the_dag_has_every_variant() -> None:
    assert VARIANT_NAMES
    for group in ("train", "evaluate"):
        assert sorted(variant_of(n) for n in NAMES if n.startswith(f"{group}@")) == sorted(VARIANT_NAMES), group


@pytest.mark.parametrize("name", NAMES)
def test_outs_and_metrics_are_the_layout_paths(name: str) -> None:
    stage = STAGES[name]
    assert [Path(p) for p in paths(stage.get("outs"))] == [*expected_outs(name), layout.lineage_dir(name)]
    assert [Path(p) for p in paths(stage.get("metrics"))] == expected_metrics(name)


@pytest.mark.parametrize("name", NAMES)
def test_data_deps_are_layout_paths_written_upstream(name: str) -> None:
    outs = all_outs()
    known = known_paths()
    deps = data_deps(STAGES[name])
    assert deps or name in ("download", "mnist_data"), f"{name} reads nothing"
    for dep in deps:
        assert Path(dep) in known, f"{name}: dep {dep} is not a path of cvpipe/layout.py"
        writers = {stage for out, stage in outs.items() if inside(dep, out) or inside(out, dep)}
        assert writers - {name}, f"{name}: dep {dep} is written by no other stage"


def test_report_reads_every_lineage_record() -> None:
    deps = {Path(dep) for dep in data_deps(STAGES["report"])}
    missing = [name for name in NAMES if name != "report" and layout.lineage_dir(name) not in deps]
    assert not missing, f"the report renders every stage's lineage record; dvc.yaml does not list {missing}"


def expected_option(name: str, option: str, defaults: dict[str, Any]) -> Path | None:
    """The path an option must have in a stage's cmd: the CLI's default, or the variant's layout path."""
    if option in defaults:
        return defaults[option]
    variant = get_variant(variant_of(name))
    group = name.partition("@")[0]
    per_variant = {
        "--inputs": layout.cache_dir(variant.inputs),
        "--model": layout.model_file(variant.name),
        "--metrics": layout.metrics_file(variant.name),
        "--plots": layout.plots_dir(variant.name),
        "--predictions": layout.predictions_file(variant.name),
        "--init": layout.model_file(variant.parent) if variant.parent else None,
    }
    if group == "train":
        per_variant["--out"] = layout.train_dir(variant.name)
    return per_variant.get(option)


def cli_defaults(command: str) -> dict[str, Any]:
    """A command's path options -> their defaults, from the registered app."""
    click_command = typer.main.get_command(cli.app).commands[command]  # type: ignore[attr-defined]
    return {
        opt: param.default for param in click_command.params if isinstance(param.default, Path) for opt in param.opts
    }


@pytest.mark.parametrize("name", NAMES)
def test_cmd_passes_the_layout_paths(name: str) -> None:
    call = invocation(STAGES[name]["cmd"])
    defaults = cli_defaults(call.command)
    for option, value in call.options.items():
        expected = expected_option(name, option, defaults)
        assert expected is not None, f"{name}: {option} {value} has no layout path to agree with"
        assert Path(value) == expected, f"{name}: {option} {value}, but cvpipe/layout.py says {expected}"
    if "@" in name:
        assert call.arguments == (variant_of(name),), f"{name}: the variant is the command's argument"
        variant = get_variant(variant_of(name))
        if name.startswith("train@"):
            assert ("--init" in call.options) == (variant.parent is not None), f"{name}: --init iff it has a parent"


@pytest.mark.parametrize("name", NAMES)
def test_every_path_option_is_a_dep_or_an_out(name: str) -> None:
    stage = STAGES[name]
    call = invocation(stage["cmd"])
    outs = paths(stage.get("outs")) + paths(stage.get("metrics"))
    deps = data_deps(stage)
    for option, value in call.options.items():
        if (call.command, option) in UNTRACKED_OPTIONS:
            continue
        written = any(inside(out, value) for out in outs)
        read = any(inside(dep, value) or inside(value, dep) for dep in deps)
        assert written != read, f"{name}: {option} {value} must be exactly one of its deps or outs"


def test_plots_are_layout_paths_inside_outs() -> None:
    plotted: list[Path] = []
    for entry in dvc_top_plots():
        (key, spec), *_ = entry.items() if isinstance(entry, dict) else [(entry, {})]
        y = (spec or {}).get("y")
        plotted.extend(Path(path) for path in y) if isinstance(y, dict) else plotted.append(Path(key))
    # Each variant's curves: train and val of one metric overlaid in one plot (MNIST has no val split).
    curves = [Path(split) / f"{metric}.tsv" for split in ("train", "val") for metric in ("loss", "accuracy")]
    expected = {layout.live_plots_dir(v) / curve for v in VARIANT_NAMES for curve in curves}
    names = (layout.CONFUSION_NAME, layout.ROC_NAME, layout.CALIBRATION_NAME)
    expected |= {layout.plots_dir(v) / name for v in VARIANT_NAMES for name in names}
    expected |= {layout.MNIST_LIVE_PLOTS, layout.MNIST_PLOTS / layout.CONFUSION_NAME}
    assert set(plotted) == expected
    outs = all_outs()
    for path in plotted:
        assert any(inside(path, out) for out in outs), f"plot {path} is inside no stage's outs"


def declared_sections(command: str) -> list[str]:
    """The ``sections=[...]`` a CLI command gives ``track_stage`` (its lineage record's params sections)."""
    function = commands()[command].function
    for node in ast.walk(function):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            for keyword in node.keywords if called == "track_stage" else []:
                if keyword.arg == "sections":
                    assert isinstance(keyword.value, ast.List | ast.Tuple), f"cvpipe {command}: sections literal"
                    return [ast.literal_eval(element) for element in keyword.value.elts]
    raise AssertionError(f"cvpipe {command} runs no track_stage(..., sections=[...])")


def lookup(params: Any, key: str) -> bool:
    """Whether a dotted key exists in the validated params."""
    node = params
    for part in key.split("."):
        if isinstance(node, dict):
            if part not in node:
                return False
            node = node[part]
        elif part in type(node).model_fields:
            node = getattr(node, part)
        else:
            return False
    return True


@pytest.mark.parametrize("name", NAMES)
def test_params_keys_belong_to_the_declared_sections(name: str) -> None:
    keys = STAGES[name].get("params") or []
    sections = declared_sections(invocation(STAGES[name]["cmd"]).command)
    params = load_params(ROOT / "params.yaml")
    assert keys, f"{name} reads no params"
    for key in keys:
        assert isinstance(key, str), f"{name}: params from another file: {key}"
        assert key.split(".")[0] in sections, f"{name}: {key} is outside its record's sections {sections}"
        assert lookup(params, key), f"{name}: {key} is not a key of cvpipe.config.Params"


def test_every_path_default_of_the_cli_is_a_layout_value() -> None:
    def walk(command: Any, prefix: str) -> list[tuple[str, str, Path]]:
        if hasattr(command, "commands"):
            return [found for n, c in command.commands.items() for found in walk(c, f"{prefix} {n}".strip())]
        return [(prefix, param.name, param.default) for param in command.params if isinstance(param.default, Path)]

    defaults = walk(typer.main.get_command(cli.app), "")
    assert defaults
    strays = [f"cvpipe {cmd} {opt}={value}" for cmd, opt, value in defaults if value not in LAYOUT_PATHS]
    assert not strays, f"path defaults not in cvpipe/layout.py: {strays}"
