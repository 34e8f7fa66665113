"""``dvc plots show`` offline: the page template of ``make plots-offline`` (tools/plots_offline.py).

The template's assembly is tested on stand-in scripts; the real one (built by ``make plots-offline``, which
fetches the three libraries from npm: tests never touch the network) with real DVC in a tiny repository holding
one variant's training curves and the project's own plots definitions, then in headless Chromium with every
host name unresolvable: the page must draw its charts.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cvpipe import layout
from cvpipe.pipeline.commands import dvc, run_tool
from tools.plots_offline import LIBRARIES, TEMPLATE_NAME, _comment, dvc_versions, template

ROOT = Path(__file__).resolve().parents[2]
BUILT = ROOT / "build" / "plots-offline" / TEMPLATE_NAME
VARIANT = "scratch"


def test_template_inlines_the_libraries_in_order_and_has_no_cdn_scripts() -> None:
    scripts = {name: f"var {name.replace('-', '_')} = '</script>';" for name in LIBRARIES}
    licences = {name: f"Copyright -- {name}" for name in LIBRARIES}
    page = template(scripts, licences, dict.fromkeys(LIBRARIES, "1.0"))
    assert "{plot_divs}" in page and "{scripts}" not in page  # no {scripts}: DVC adds no CDN tags
    positions = [page.index(f"var {name.replace('-', '_')}") for name in LIBRARIES]
    assert positions == sorted(positions)
    assert page.count("</script>") == len(LIBRARIES)  # the scripts' own "</script" cannot end the element
    assert all(_comment(licences[name]) in page for name in LIBRARIES) and "-- " not in page.split("<body>")[0]


def test_the_versions_are_those_dvc_s_own_page_loads() -> None:
    from dvc_render.vega import VegaRenderer

    versions = dvc_versions()
    assert list(versions) == list(LIBRARIES)
    assert all(f"npm/{name}@{version}" in VegaRenderer.SCRIPTS for name, version in versions.items())


def _curves(repo: Path) -> None:
    for split, offset in (("train", 0.0), ("val", 0.1)):
        for metric in ("loss", "accuracy"):
            path = repo / layout.live_plots_dir(VARIANT) / split / f"{metric}.tsv"
            path.parent.mkdir(parents=True, exist_ok=True)
            rows = "".join(f"{step}\t{0.7 - 0.1 * step + offset:.2f}\n" for step in range(3))
            path.write_text(f"step\t{metric}\n{rows}")


def _variant_plots() -> list[dict[str, object]]:
    """The project's own plots definitions of one variant's curves (train and val overlaid)."""
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    prefix = str(layout.live_plots_dir(VARIANT))
    chosen = [
        entry
        for entry in plots
        if isinstance(entry, dict)
        and any(str(path).startswith(prefix) for spec in entry.values() for path in (spec or {}).get("y", {}))
    ]
    assert len(chosen) == 2, chosen  # loss and accuracy
    return chosen


@pytest.mark.slow
def test_dvc_plots_show_with_the_template_draws_offline(tmp_path: Path) -> None:
    assert BUILT.is_file(), "no offline template: `make plots-offline` builds it (make test does, from npm)"
    repo = tmp_path / "repo"
    repo.mkdir()
    run_tool(["git", "init", "-q"], repo)
    run_tool(dvc("init", "-q"), repo)
    _curves(repo)
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"plots": _variant_plots()}, sort_keys=False))
    # Exactly what `make plots-offline` does: the template under build/, DVC's local config pointing to it.
    (repo / "build" / "plots-offline").mkdir(parents=True)
    shutil.copy(BUILT, repo / "build" / "plots-offline" / TEMPLATE_NAME)
    run_tool(dvc("config", "--local", "plots.html_template", "../build/plots-offline/template.html"), repo)
    run_tool(dvc("plots", "show"), repo)
    html = (repo / "dvc_plots" / "index.html").read_text(encoding="utf-8")
    fetched = re.findall(r"""(?:src|href)\s*=\s*["']?(https?:[^"'\s>]*)""", html)
    assert fetched == [] and "cdn.jsdelivr" not in html
    for split in ("train", "val"):  # both curves in the one plot of each metric
        for metric in ("loss", "accuracy"):
            assert f'"filename": "{split}/{metric}.tsv"' in html

    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    assert chromium, "no Chromium: `make chromium` installs it (make test does)"
    args = [
        chromium,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # offline: no host name resolves
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=10000",
        "--dump-dom",
        (repo / "dvc_plots" / "index.html").as_uri(),
    ]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(re.findall(r'<canvas[^>]*class="marks"', result.stdout)) == 2  # vega-embed drew both charts
    assert "Failed to load resource" not in result.stderr and "vegaEmbed is not defined" not in result.stderr
