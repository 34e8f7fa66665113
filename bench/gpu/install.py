"""Install, from the carried wheel folder, what the GPU machine lacks for the GPU check (standard library only).

    python3 bench/gpu/install.py --wheels bench/gpu/wheels --target /tmp/gpu-check-site

Reads ``requirements.txt`` (written by ``prepare.py``) and installs with ``pip --no-index --no-deps --target``
each package that is missing there or older than the carried one; Keras always (the check is about this
version). A package the machine has at the same or a newer version is kept: JAX and PyTorch live in that
environment, and the target folder goes first on ``PYTHONPATH``, so anything installed there shadows theirs.
pydantic and pydantic-core are pinned to each other and are installed together or not at all.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

ALWAYS: frozenset[str] = frozenset({"keras"})
TOGETHER: tuple[frozenset[str], ...] = (frozenset({"pydantic", "pydantic-core"}),)


def normalise(name: str) -> str:
    """Return the PEP 503 form of a name (``PyYAML`` -> ``pyyaml``, ``pydantic_core`` -> ``pydantic-core``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_requirements(path: Path) -> dict[str, str]:
    """Return ``{normalised name: version}`` from a requirements file (see :func:`parse_requirements`)."""
    return parse_requirements(path.read_text())


def parse_requirements(text: str) -> dict[str, str]:
    """Return ``{normalised name: version}`` from ``name==version`` lines (comments and blanks skipped)."""
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[normalise(name)] = version.strip()
    return pins


def release(version: str) -> tuple[int, ...]:
    """Return the leading numeric release of a version (``2.50.5`` -> (2, 50, 5); ``1.2rc1`` -> (1, 2))."""
    numbers = []
    for part in version.split("."):
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        numbers.append(int(digits.group()))
        if digits.group() != part:
            break
    return tuple(numbers)


def installed_version(name: str) -> str | None:
    """Return the version this interpreter sees, or None when the distribution is absent."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def plan(
    pins: dict[str, str], installed: Callable[[str], str | None] = installed_version
) -> tuple[list[str], list[str]]:
    """Decide what to install.

    Args:
        pins: carried ``{normalised name: version}``.
        installed: the version the machine has, or None.

    Returns:
        (``name==version`` to install, one line per package saying what was decided and why).
    """
    chosen, notes = set(), []
    for name, version in sorted(pins.items()):
        have = installed(name)
        if name in ALWAYS:
            chosen.add(name)
            notes.append(f"{name}: install {version} (always; machine has {have or 'none'})")
        elif have is None or release(have) < release(version):
            chosen.add(name)
            notes.append(f"{name}: install {version} (machine has {have or 'none'})")
        else:
            notes.append(f"{name}: keep the machine's {have} (carried {version})")
    for group in TOGETHER:
        if chosen & group:
            for name in sorted((group & pins.keys()) - chosen):
                chosen.add(name)
                partners = ", ".join(sorted((chosen & group) - {name}))
                notes.append(f"{name}: install {pins[name]} (goes with {partners})")
    return [f"{name}=={pins[name]}" for name in sorted(chosen)], notes


def pip_command(requirements: Sequence[str], wheels: Path, target: Path, python: str = sys.executable) -> list[str]:
    """Return the offline ``pip install`` into ``target`` (``--no-deps``: the plan already lists every package)."""
    return [
        python,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-index",
        "--no-deps",
        "--no-compile",
        "--no-cache-dir",
        "--upgrade",
        "--disable-pip-version-check",
        "--target",
        str(target),
        "--find-links",
        str(wheels),
        *requirements,
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Plan, print the plan, install."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheels", type=Path, required=True, help="folder with the wheels and requirements.txt")
    parser.add_argument("--target", type=Path, required=True, help="folder to install into (goes on PYTHONPATH)")
    args = parser.parse_args(argv)

    requirements_file = args.wheels / "requirements.txt"
    if not requirements_file.is_file():
        print(
            f"{requirements_file} is missing: run `.venv/bin/python bench/gpu/prepare.py` and carry {args.wheels}",
            file=sys.stderr,
        )
        return 2
    wanted, notes = plan(read_requirements(requirements_file))
    print(f"install.py: Python {sys.version.split()[0]} at {sys.executable}")
    print("\n".join(f"install.py: {note}" for note in notes))
    if wanted:
        subprocess.run(pip_command(wanted, args.wheels, args.target), check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
