"""An HTML template that makes ``dvc plots show`` draw offline: vega, vega-lite and vega-embed inline.

DVC's page loads the three libraries from a CDN (``dvc_render.vega.VegaRenderer.SCRIPTS``), so offline it is
blank. DVC takes a page template (``--html-template``, or ``plots.html_template`` in its config): a template
without the ``{scripts}`` placeholder gets none of DVC's script tags, and ``{plot_divs}`` is where DVC puts the
plots. This script fetches the very versions DVC names from npm (``npm pack``: the packages publish
``build/<name>.min.js``), once, at install time (``make plots-offline``), and writes the template with the
scripts inline, so a page works from any folder and needs no network. The three are BSD-3-Clause; each one's
LICENSE is kept beside it and its text is copied into the template (and so into every page).

Usage: ``python tools/plots_offline.py [DEST]`` (default ``build/plots-offline``, git-ignored).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

DEFAULT_DEST = Path("build/plots-offline")
TEMPLATE_NAME = "template.html"
# The order the page must load them in: vega-lite and vega-embed use the globals the ones before define.
LIBRARIES = ("vega", "vega-lite", "vega-embed")
_CDN_SCRIPT = re.compile(r"https://cdn\.jsdelivr\.net/npm/(?P<name>[\w-]+)@(?P<version>[\w.-]+)")


class OfflineError(RuntimeError):
    """What stops the template from being built; the message says what to do."""


def dvc_versions(scripts: str | None = None) -> dict[str, str]:
    """The version of each library DVC's own page loads, from its script tags.

    The same versions as online, so the specs DVC writes (vega-lite v5) draw the same.

    Args:
        scripts: DVC's script tags; default: those of the installed ``dvc_render``.
    """
    if scripts is None:
        from dvc_render.vega import VegaRenderer

        scripts = VegaRenderer.SCRIPTS
    versions = {match["name"]: match["version"] for match in _CDN_SCRIPT.finditer(scripts)}
    missing = [name for name in LIBRARIES if name not in versions]
    if missing:
        raise OfflineError(f"dvc_render's page names no version of {', '.join(missing)}: update {__file__}")
    return {name: versions[name] for name in LIBRARIES}


def fetch(versions: Mapping[str, str], dest: Path) -> None:
    """``npm pack`` each library and keep ``build/<name>.min.js`` and its LICENSE in ``dest``.

    Raises:
        OfflineError: npm is not installed, or a package could not be fetched or lacks the file.
    """
    npm = shutil.which("npm")
    if npm is None:
        raise OfflineError("npm not found: install Node.js (npm), or use `dvc plots show` online / reports/index.html")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, version in versions.items():
            spec = f"{name}@{version}"
            result = subprocess.run(
                [npm, "pack", "--silent", "--pack-destination", tmp, spec], capture_output=True, text=True, check=False
            )
            if result.returncode != 0:
                raise OfflineError(f"npm pack {spec} failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
            tarball = Path(tmp) / result.stdout.strip().splitlines()[-1]
            with tarfile.open(tarball) as archive:
                for member, target in (
                    (f"package/build/{name}.min.js", f"{name}.min.js"),
                    ("package/LICENSE", f"{name}.LICENSE"),
                ):
                    try:
                        data = archive.extractfile(member)
                    except KeyError:
                        data = None
                    if data is None:
                        raise OfflineError(f"{spec} has no {member.removeprefix('package/')}")
                    (dest / target).write_bytes(data.read())


def _comment(text: str) -> str:
    # "--" may not appear inside an HTML comment.
    return text.replace("--", "- -")


def _inline(script: str) -> str:
    # A literal "</script" would end the element early; "<\/" is the same string to JavaScript.
    return script.replace("</script", "<\\/script")


def template(scripts: Mapping[str, str], licences: Mapping[str, str], versions: Mapping[str, str]) -> str:
    """The page template: each library inline (in ``LIBRARIES`` order) with its licence, then ``{plot_divs}``.

    Args:
        scripts: each library's minified JavaScript, by name.
        licences: each library's LICENSE text, by name.
        versions: each library's version, by name.
    """
    parts = []
    for name in LIBRARIES:
        notice = f"{name} {versions[name]} (npm), inlined for offline use.\n{licences[name].strip()}"
        parts.append(f"<!--\n{_comment(notice)}\n-->\n<script>\n{_inline(scripts[name])}\n</script>")
    body = "\n".join(parts)
    # {refresh_tag} kept from DVC's own page (dvclive's live reload); no {scripts}: no CDN tags.
    return (
        '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n{refresh_tag}\n<title>DVC Plot</title>\n'
        f"{body}\n<style>table {{ border-spacing: 15px; }}</style>\n</head>\n<body>\n{{plot_divs}}\n</body>\n</html>\n"
    )


def build(dest: Path, versions: Mapping[str, str] | None = None) -> Path:
    """Fetch the libraries into ``dest`` (unless already there) and write the template; return its path."""
    versions = dict(versions or dvc_versions())
    stamp = dest / "VERSIONS"
    wanted = "".join(f"{name}@{version}\n" for name, version in versions.items())
    have = all((dest / f"{name}.min.js").is_file() for name in LIBRARIES)
    if not have or not stamp.is_file() or stamp.read_text() != wanted:
        fetch(versions, dest)
        stamp.write_text(wanted)
    scripts = {name: (dest / f"{name}.min.js").read_text(encoding="utf-8") for name in LIBRARIES}
    licences = {name: (dest / f"{name}.LICENSE").read_text(encoding="utf-8") for name in LIBRARIES}
    path = dest / TEMPLATE_NAME
    path.write_text(template(scripts, licences, versions), encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Build the template; one line on stderr and exit 2 when it cannot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", nargs="?", type=Path, default=DEFAULT_DEST)
    args = parser.parse_args(argv)
    try:
        path = build(args.dest)
    except OfflineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
