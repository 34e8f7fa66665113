"""Every stage command that loads TensorFlow does it without TensorFlow's C++ start-up lines (issue 14, point 3)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

CVPIPE = str(Path(sys.executable).parent / "cvpipe")
TF_NOISE = re.compile(r"absl::InitializeLog|oneDNN custom operations|cuda drivers|cuInit|cpu_feature_guard")


@pytest.mark.slow
def test_the_mnist_stages_load_tensorflow_quietly(tmp_path: Path) -> None:
    params = {"mnist": {"source": "synthetic", "epochs": 1, "synthetic": {"train": 200, "test": 100}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for command in ("mnist-data", "mnist-train", "mnist-evaluate"):
        result = subprocess.run([CVPIPE, command], cwd=tmp_path, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
        noise = [line for line in (result.stdout + result.stderr).splitlines() if TF_NOISE.search(line)]
        assert noise == [], (command, noise)
