"""Download the wheels the GPU check needs on the lent GPU machine, which has JAX but no Keras and no internet.

Run here (where PyPI is reachable) with the project's interpreter, so the versions are exactly the ones the
project is tested with:

    .venv/bin/python bench/gpu/prepare.py            # -> bench/gpu/wheels/*.whl + requirements.txt

Then carry ``bench/gpu/wheels`` to the machine (it is ignored by git) and run ``bash bench/gpu/run.sh`` there;
``bench/gpu/install.py`` installs from the folder only what the machine lacks.

What is carried: Keras and the two of its needs the machine's image lacks (namex, optree), pydantic and its
needs (``cvpipe.config``), and small fallbacks for what the image is said to hold (absl-py, rich and its
needs, packaging, PyYAML) in case it does not. NumPy, h5py and ml-dtypes are not carried: JAX needs them
too, so the image has versions that match its JAX, and shadowing them could break it. Binary wheels are
fetched for each CPython in :data:`PYTHONS` (the machine's Python has been 3.12; Keras 3.15 needs 3.11+).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DEST = HERE / "wheels"
REQUIREMENTS = "requirements.txt"

# Keras and its needs that the machine's image lacks; pydantic and its needs (cvpipe.config); fallbacks for
# what the image reportedly holds (Keras's absl-py, rich and its needs, packaging).
PURE: tuple[str, ...] = (
    "keras",
    "namex",
    "pydantic",
    "annotated-types",
    "typing-inspection",
    "typing-extensions",
    "absl-py",
    "rich",
    "markdown-it-py",
    "mdurl",
    "pygments",
    "packaging",
)
BINARY: tuple[str, ...] = ("optree", "pydantic-core", "pyyaml")
PYTHONS: tuple[str, ...] = ("3.11", "3.12", "3.13")
PURE_PYTHON = "3.12"
"""Interpreter version pip resolves the pure-Python wheels for (py3-none-any fits every version)."""
# pip matches --platform tags exactly; these cover the manylinux wheels of the packages above.
PLATFORMS: tuple[str, ...] = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
CARRY_LIMIT_MIB = 64
"""What the device tool carries in all (working tree + carried paths)."""


def pinned_versions(names: Sequence[str], version: Callable[[str], str] = importlib.metadata.version) -> dict[str, str]:
    """Return ``{name: version}`` as installed in this interpreter.

    Raises:
        SystemExit: a package is not installed here (run with the project's ``.venv/bin/python``).
    """
    pins = {}
    for name in names:
        try:
            pins[name] = version(name)
        except importlib.metadata.PackageNotFoundError:
            message = f"{name} is not installed in {sys.executable}: run with the project's .venv/bin/python"
            raise SystemExit(message) from None
    return pins


def download_commands(pins: dict[str, str], dest: Path, python: str = sys.executable) -> list[list[str]]:
    """Return the ``pip download`` command lines: one for the pure-Python wheels, one per CPython for the binary ones.

    ``--only-binary=:all:`` with ``--python-version``/``--platform`` makes pip fetch wheels for the target
    interpreter, not this one; ``--no-deps`` because what each needs is listed explicitly above.
    """
    base = [python, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--dest", str(dest)]
    platforms = [arg for tag in PLATFORMS for arg in ("--platform", tag)]
    pure = [f"{name}=={pins[name]}" for name in PURE]
    binary = [f"{name}=={pins[name]}" for name in BINARY]
    commands = [[*base, "--python-version", PURE_PYTHON, *platforms, *pure]]
    for version in PYTHONS:
        commands.append([*base, "--python-version", version, "--implementation", "cp", *platforms, *binary])
    return commands


def requirements_text(pins: dict[str, str]) -> str:
    """Return the requirements file ``install.py`` reads: one ``name==version`` a line."""
    header = "# Written by bench/gpu/prepare.py: what bench/gpu/install.py may install from this folder.\n"
    return header + "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))


def describe(dest: Path) -> tuple[list[str], int]:
    """Return one line per wheel (size, name) and the folder's total bytes."""
    wheels = sorted(dest.glob("*.whl"))
    total = sum(path.stat().st_size for path in dest.iterdir() if path.is_file())
    return [f"{path.stat().st_size / 2**20:7.2f} MiB  {path.name}" for path in wheels], total


def main(argv: Sequence[str] | None = None) -> int:
    """Download, write the requirements file, print the list and the total size."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help=f"wheel folder (default {DEFAULT_DEST})")
    parser.add_argument("--dry-run", action="store_true", help="print the pip commands, download nothing")
    args = parser.parse_args(argv)

    pins = pinned_versions([*PURE, *BINARY])
    commands = download_commands(pins, args.dest)
    if args.dry_run:
        print("\n".join(" ".join(command) for command in commands))
        return 0
    args.dest.mkdir(parents=True, exist_ok=True)
    for stale in args.dest.glob("*.whl"):  # one version of each: two would make the carried folder ambiguous
        stale.unlink()
    for command in commands:
        subprocess.run(command, check=True)
    (args.dest / REQUIREMENTS).write_text(requirements_text(pins))

    lines, total = describe(args.dest)
    print("\n".join(lines))
    print(
        f"{len(lines)} wheels, {total / 2**20:.1f} MiB in {args.dest} (the device tool carries {CARRY_LIMIT_MIB} "
        "MiB in all, working tree included)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
