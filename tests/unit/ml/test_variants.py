"""The variants table: the five, their builders, parents and caches; the CLI checks a name before loading Keras."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cvpipe import config
from cvpipe.errors import ConfigError
from cvpipe.ml import variants

CVPIPE = str(Path(sys.executable).parent / "cvpipe")
FIVE = "scratch, scratch_aug, feature_extraction, feature_extraction_aug, fine_tuning"


def test_the_five_in_the_seeds_order_agree_with_the_config() -> None:
    assert variants.NAMES == config.VARIANTS
    assert ", ".join(variants.NAMES) == FIVE
    sections = set(config.TrainConfig.model_fields) - {"seed", "deterministic", "precision", "head_activation"}
    assert sections == set(variants.NAMES)


def test_the_variants_with_the_dense_head_are_those_train_head_activation_reaches() -> None:
    # fine_tuning inherits its parent's head; the scratch convnets have none.
    assert [v.name for v in variants.VARIANTS if v.head] == ["feature_extraction", "feature_extraction_aug"]


def test_builders_are_registered_and_parents_come_first() -> None:
    from cvpipe.ml.models import MODEL_BUILDERS

    assert variants.VARIANTS
    for index, variant in enumerate(variants.VARIANTS):
        assert variant.builder in MODEL_BUILDERS, variant.name
        assert variant.inputs in ("images", "features")
        if variant.parent is not None:
            assert variant.parent in variants.NAMES[:index], variant.name
            assert not variant.needs_base  # its base comes with the parent's model
    assert variants.get_variant("fine_tuning").parent == "feature_extraction_aug"
    assert [v.name for v in variants.VARIANTS if v.needs_base] == ["feature_extraction_aug"]
    assert [v.name for v in variants.VARIANTS if v.inputs == "features"] == ["feature_extraction"]


def test_an_unknown_variant_is_one_line_listing_the_five() -> None:
    with pytest.raises(ConfigError) as info:
        variants.get_variant("resnet")
    assert str(info.value) == f"unknown training variant 'resnet'; valid variants: {FIVE}"


def test_the_table_imports_no_keras() -> None:
    code = "import sys, cvpipe.ml.variants; sys.exit(int(any(m in sys.modules for m in ('keras', 'tensorflow'))))"
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=120).returncode == 0


@pytest.mark.parametrize("command", [["train", "--out", "o"], ["evaluate", "--metrics", "m", "--plots", "p"]])
def test_the_cli_refuses_an_unknown_variant_in_one_line(tmp_path: Path, command: list[str]) -> None:
    name, *options = command
    result = subprocess.run(
        [CVPIPE, name, "resnet", "--inputs", "i", "--model", "m.keras", *options],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: unknown training variant 'resnet'; valid variants: {FIVE}"
    assert not (tmp_path / "reports").exists()


def test_the_cli_checks_the_variant_and_init_before_importing_tensorflow(tmp_path: Path) -> None:
    code = """
import sys
from cvpipe import cli
codes = [
    cli.main(["train", "resnet", "--inputs", "i", "--model", "m.keras", "--out", "o"]),
    cli.main(["train", "fine_tuning", "--inputs", "i", "--model", "m.keras", "--out", "o"]),
    cli.main(["train", "scratch", "--inputs", "i", "--model", "m.keras", "--out", "o", "--init", "x.keras"]),
]
print(codes, "tensorflow" in sys.modules, "keras" in sys.modules)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=False, timeout=120
    )
    assert result.stdout.strip() == "[2, 2, 2] False False", result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[1] == (
        "error: fine_tuning starts from feature_extraction_aug's model: pass --init models/feature_extraction_aug.keras"
    )
    assert lines[2] == "error: scratch starts from no trained model: drop --init x.keras"
