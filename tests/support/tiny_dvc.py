"""A tiny git + DVC repository whose stages are ``python stage.py ...``: DVC for real, in a second or two."""

from __future__ import annotations

from pathlib import Path

import yaml

from cvpipe.pipeline.commands import dvc, run_tool

STAGE_SCRIPT = """\
import os, sys, time
out, seconds, code = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
print("2026-01-02 03:04:05,678 WARNING cvpipe.fake: stage says hello", file=sys.stderr, flush=True)
time.sleep(seconds)
if code:
    sys.exit(code)
with open(out, "w") as f:
    f.write(os.environ.get("CVPIPE_FLOW_RUN_ID", "none"))
"""


def tiny_repo(repo: Path) -> Path:
    """Create ``repo`` with four stages: ``make`` -> ``use``, and ``broken`` (exit 3), ``slow`` (300 s) alone."""
    repo.mkdir(parents=True)
    (repo / "stage.py").write_text(STAGE_SCRIPT)
    stages = {
        "make": {"cmd": "python stage.py made.txt 0 0", "deps": ["stage.py"], "outs": ["made.txt"]},
        "use": {"cmd": "python stage.py used.txt 0 0", "deps": ["made.txt"], "outs": ["used.txt"]},
        "broken": {"cmd": "python stage.py broken.txt 0 3", "outs": ["broken.txt"]},
        "slow": {"cmd": "python stage.py slow.txt 300 0", "outs": ["slow.txt"]},
    }
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    run_tool(["git", "init", "-q"], repo)
    run_tool(dvc("init", "-q"), repo)
    return repo
