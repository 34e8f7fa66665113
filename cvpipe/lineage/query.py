"""Answers from lineage records, ``dvc.lock`` and the manifests: ``cvpipe lineage model | image | diff``.

Nothing here runs a stage or rewrites a file. The chain of a model is followed record by record: a stage's
record names each input with its DVC hash and the stage that produced it, and the link holds when that
stage's record produced exactly that hash. A broken link (an upstream stage rerun since, a file changed by
hand) is reported as such rather than papered over.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from cvpipe.config import SPLITS
from cvpipe.errors import CvpipeError
from cvpipe.layout import CACHES, LINEAGE_DIR, MANIFEST, RECORD_NAME, SPLIT_REPORT, lineage_dir, split_file
from cvpipe.layout import SPLITS as SPLITS_TABLE
from cvpipe.lineage.dvcfile import dvc_hash, lock_outputs, producing_stage, read_lock
from cvpipe.lineage.record import relative
from cvpipe.lineage.text import format_diff as format_diff  # the CLI's text, kept importable from here
from cvpipe.lineage.text import format_image as format_image
from cvpipe.lineage.text import format_model as format_model

log = logging.getLogger(__name__)

# -- what is read from a record's summary: the stages' typed summaries, as the record wrote them field by field
SOURCE_FIELDS = ("source", "competition", "retrieved_at", "generator", "seed")  # download: SOURCE.json
ARCHIVE_FIELD, DOWNLOAD_FIELD = "archive", "download"  # download: {sha256, bytes}, {last_modified}
MANIFEST_FIELDS = ("members", "ok", "quarantined", "ok_per_class", "quarantined_per_reason")  # ingest
COUNTS_FIELD = "counts"  # split: images per split and class
WEIGHTS_FIELD = "weights"  # features: the VGG16 weights' spec, file and sha256
CONV_BASE_FIELD = "conv_base"  # train@feature_extraction_aug: the same, for the conv base it was built on
DEVICE_FIELD = "device"  # train and evaluate: what ran

_MIN_PREFIX = 8
_DVC_CACHE = Path(".dvc/cache/files/md5")


# -- records --------------------------------------------------------------------------------------------------


def load_record(root: Path, stage: str) -> dict[str, Any] | None:
    """The lineage record of ``stage``, or None when it has none (yet)."""
    path = Path(root) / lineage_dir(stage) / RECORD_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def all_records(root: Path) -> dict[str, dict[str, Any]]:
    """Every stage's record, by stage name."""
    folder = Path(root) / LINEAGE_DIR
    found = {}
    for path in sorted(folder.glob(f"*/{RECORD_NAME}")):
        record = load_record(root, path.parent.name)
        if record is not None:
            found[str(record.get("stage", path.parent.name))] = record
    return found


def _output(record: Mapping[str, Any], path: str) -> dict[str, Any] | None:
    return next((entry for entry in record.get("outputs") or [] if entry.get("path") == path), None)


def _dir_listing(root: Path, md5: str) -> dict[str, str] | None:
    """``{relpath: md5}`` of a folder version, from DVC's cache (None when it is not there)."""
    digest = md5.removesuffix(".dir")
    path = Path(root) / _DVC_CACHE / digest[:2] / f"{digest[2:]}.dir"
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return {entry["relpath"]: entry.get("md5", "") for entry in entries if isinstance(entry, dict)}


def link(root: Path, entry: Mapping[str, Any], upstream: Mapping[str, Any] | None) -> str:
    """Whether an input is exactly what its producing stage's record wrote: ``ok``, ``broken``, ``unknown``.

    A file inside a produced folder (``data/cache/images/test.npy``) is checked against the folder's
    listing in DVC's cache.
    """
    if upstream is None or not entry.get("md5"):
        return "unknown"
    path = str(entry["path"])
    produced = _output(upstream, path)
    if produced is not None:
        return "ok" if produced.get("md5") == entry["md5"] else "broken"
    inside = _folder_member_md5(root, upstream.get("outputs") or [], path)
    if inside is None:
        return "unknown"
    return "ok" if inside == entry["md5"] else "broken"


def _folder_member_md5(root: Path, outputs: Iterable[Mapping[str, Any]], path: str) -> str | None:
    """The md5 of ``path`` inside one of ``outputs``' folders, from the folder's ``.dir`` listing in DVC's cache.

    '' when the folder's listing lacks the file, None when no folder holds it or the listing is not cached.
    """
    for out in outputs:
        prefix = f"{out.get('path')}/"
        md5 = str(out.get("md5", ""))
        if path.startswith(prefix) and md5.endswith(".dir"):
            listing = _dir_listing(root, md5)
            return None if listing is None else listing.get(path.removeprefix(prefix), "")
    return None


def chain(root: Path, stage: str, records: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The stages upstream of ``stage`` (itself first), each with its inputs' links, breadth first."""
    produced = lock_outputs(read_lock(root))
    order, seen, queue = [], {stage}, [stage]
    while queue:
        name = queue.pop(0)
        record = records.get(name)
        links = []
        for entry in (record or {}).get("inputs") or []:
            upstream = entry.get("stage") or producing_stage(str(entry.get("path", "")), produced)
            links.append(
                {
                    "path": entry.get("path"),
                    "md5": entry.get("md5"),
                    "stage": upstream,
                    "link": link(root, entry, records.get(upstream) if upstream else None),
                }
            )
            if upstream and upstream not in seen:
                seen.add(upstream)
                queue.append(upstream)
        order.append({"stage": name, "record": record is not None, "inputs": links})
    return order


# -- model ----------------------------------------------------------------------------------------------------


def _source(record: Mapping[str, Any] | None) -> dict[str, Any]:
    summary = _summary_of(record)
    archive = summary.get(ARCHIVE_FIELD) or {}
    download = summary.get(DOWNLOAD_FIELD) or {}
    source = {key: summary.get(key) for key in SOURCE_FIELDS}
    return {
        "source": source["source"],
        "competition": source["competition"],
        "archive_sha256": archive.get("sha256"),
        "archive_bytes": archive.get("bytes"),
        "last_modified": download.get("last_modified"),
        "retrieved_at": source["retrieved_at"],
        "generator": source["generator"],
        "seed": source["seed"],
    }


def _table(record: Mapping[str, Any] | None, suffix: str) -> dict[str, Any]:
    entry = next((out for out in (record or {}).get("outputs") or [] if out.get("path", "").endswith(suffix)), {})
    return {"path": entry.get("path"), "md5": entry.get("md5"), "rows": entry.get("rows")}


def _run(record: Mapping[str, Any]) -> dict[str, Any]:
    """The when, who and how of one record."""
    environment = record.get("environment") or {}
    return {
        "stage": record.get("stage"),
        "run_id": record.get("run_id"),
        "started_at": record.get("started_at"),
        "finished_at": record.get("finished_at"),
        "seconds": record.get("seconds"),
        "orchestrator": record.get("orchestrator"),
        "git": record.get("git"),
        "params": record.get("params"),
        "packages": environment.get("packages"),
        "user": environment.get("user"),
        "host": environment.get("host"),
        "device": _summary(record, DEVICE_FIELD),
    }


def model_lineage(root: Path, artifact: Path | str) -> dict[str, Any]:
    """The chain behind a model (or any artifact): source, manifest, split, features, params, code, runs.

    Raises:
        CvpipeError: no stage in ``dvc.lock`` produced the artifact, or its stage has no lineage record.
    """
    root = Path(root).resolve()
    path = relative(root, Path(artifact) if Path(artifact).is_absolute() else root / artifact)
    produced = lock_outputs(read_lock(root))
    records = all_records(root)
    stage = producing_stage(path, produced) or next(
        (name for name, record in records.items() if _output(record, path)), None
    )
    if stage is None:
        raise CvpipeError(f"{path}: no stage in dvc.lock produced it; run `dvc repro` (or check the path)")
    record = records.get(stage)
    if record is None:
        raise CvpipeError(f"{path}: stage {stage} has no lineage record ({lineage_dir(stage)}/); rerun it")
    stages = chain(root, stage, records)
    by_command = {}
    for step in stages:
        upstream = records.get(step["stage"])
        if upstream is not None:
            by_command.setdefault(str(upstream.get("command")), upstream)
    # A file inside a folder output (data/cache/images/test.npy) is in the folder's .dir listing, not its own.
    recorded = (_output(record, path) or {}).get("md5") or _folder_member_md5(root, record.get("outputs") or [], path)
    current = _current_hash(root / path)
    locked = produced.get(path, {}).get("md5") or _folder_member_md5(
        root, [{"path": out, **info} for out, info in produced.items()], path
    )
    features = by_command.get("features")
    return {
        "artifact": path,
        "stage": stage,
        "md5": recorded or None,
        "matches_file": bool(recorded) and current == recorded,
        "matches_dvc_lock": bool(recorded) and locked == recorded,
        "run": _run(record),
        "source": _source(by_command.get("download")),
        "manifest": {**_table(by_command.get("ingest"), ".parquet"), **_manifest_counts(by_command.get("ingest"))},
        "split": {
            **_table(by_command.get("split"), ".parquet"),
            "counts": _summary(by_command.get("split"), COUNTS_FIELD),
        },
        "features": _summary(features, WEIGHTS_FIELD) if features else None,
        "conv_base": _summary(record, CONV_BASE_FIELD) or _first_conv_base(stages, records),
        "chain": stages,
        "broken_links": [
            {"stage": step["stage"], **entry}
            for step in stages
            for entry in step["inputs"]
            if entry["link"] == "broken"
        ],
        "upstream_runs": [_run(records[step["stage"]]) for step in stages[1:] if step["stage"] in records],
    }


def _current_hash(path: Path) -> str | None:
    try:
        return str(dvc_hash(path)["md5"])
    except OSError:
        return None


def _summary_of(record: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return (record or {}).get("summary") or {}


def _summary(record: Mapping[str, Any] | None, key: str) -> Any:
    return _summary_of(record).get(key)


def _manifest_counts(record: Mapping[str, Any] | None) -> dict[str, Any]:
    summary = _summary_of(record)
    return {key: summary.get(key) for key in MANIFEST_FIELDS}


def _first_conv_base(stages: Sequence[Mapping[str, Any]], records: Mapping[str, Mapping[str, Any]]) -> Any:
    """The VGG16 weights a model inherited (fine_tuning continues feature_extraction_aug's model)."""
    for step in stages:
        found = _summary(records.get(step["stage"]), CONV_BASE_FIELD)
        if found:
            return found
    return None


# -- image ----------------------------------------------------------------------------------------------------


def find_image(manifest: pd.DataFrame, query: str) -> pd.DataFrame:
    """Manifest rows matching an archive member name, a sha256, or a unique sha256 prefix (8+ hex digits).

    Raises:
        CvpipeError: nothing matches, or a prefix matches several images.
    """
    rows = manifest[manifest["member"] == query]
    if rows.empty and len(query) >= _MIN_PREFIX and all(c in "0123456789abcdef" for c in query.lower()):
        rows = manifest[manifest["sha256"].str.startswith(query.lower())]
        if rows["sha256"].nunique() > 1:
            raise CvpipeError(f"{query}: the prefix matches {rows['sha256'].nunique()} images; give more digits")
    if rows.empty:
        raise CvpipeError(f"{query}: no archive member or sha256 like that in the manifest")
    return rows


def _split_md5(root: Path, stage: str, records: Mapping[str, Mapping[str, Any]]) -> tuple[str | None, bool]:
    """The splits.parquet hash a stage's chain was built from, and whether every link up to it holds."""
    steps = chain(root, stage, records)
    intact = all(entry["link"] == "ok" for step in steps for entry in step["inputs"] if entry["stage"])
    split = next((records[s["stage"]] for s in steps if records.get(s["stage"], {}).get("command") == "split"), None)
    return (_table(split, ".parquet")["md5"] if split else None), intact


def _why_unplaced(root: Path, members: Sequence[str]) -> str:
    """Why an ok image is in no split: a label conflict (the split report lists it), else not drawn."""
    try:
        report = json.loads((root / SPLIT_REPORT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"in no split (a label conflict or not drawn: {SPLIT_REPORT} is not readable to say which)"
    for group in report.get("label_conflicts") or []:
        if set(group) & set(members):
            return (
                f"in no split: a label conflict, its copies or near-duplicates carry another label ({', '.join(group)})"
            )
    return "in no split: not drawn (the split takes split.per_class images of each class, or split.fractions)"


def image_lineage(
    root: Path, query: str, manifest_path: Path | str = MANIFEST, splits_path: Path | str = SPLITS_TABLE
) -> dict:
    """Where an image went: its split, its row in the caches, and which models trained, validated or tested on it.

    Raises:
        CvpipeError: the manifest or split table is missing, or the query matches nothing.
    """
    root = Path(root).resolve()
    manifest, splits = _read_table(root / manifest_path), _read_table(root / splits_path)
    rows = find_image(manifest, query).sort_values("member")
    sha256 = str(rows["sha256"].iloc[0])
    first = rows.iloc[0]
    copies = manifest[(manifest["sha256"] == sha256) & (manifest["status"] == "ok")]["member"].sort_values().tolist()
    placed = splits[splits["sha256"] == sha256]
    answer: dict[str, Any] = {
        "query": query,
        "members": rows["member"].tolist(),
        "sha256": sha256,
        "label": first["label"],
        "status": first["status"],
        "reason": first["reason"] or None,
        "exact_copies": copies,
        "split": None,
        "row": None,
        "kept_member": copies[0] if copies else None,  # the split keeps the first copy by name
        "near_duplicate_group": [],
        "caches": [],
        "models": [],
    }
    if placed.empty:
        quarantined = first["status"] != "ok"
        answer["note"] = "quarantined: in no split" if quarantined else _why_unplaced(root, rows["member"].tolist())
        return answer
    entry = placed.iloc[0]
    split, row = str(entry["split"]), int(entry["row"])
    group = splits[splits["group"] == entry["group"]]["member"].sort_values().tolist()
    answer.update(split=split, row=row, near_duplicate_group=group)
    answer["caches"] = _cache_rows(root, split, row)
    answer["models"] = _models_using(root, split, _current_hash(root / splits_path), sha256)
    return answer


def _read_table(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as error:
        raise CvpipeError(f"{path}: cannot read it ({type(error).__name__}); run `dvc repro` or `dvc pull`") from None


def _cache_rows(root: Path, split: str, row: int) -> list[dict[str, Any]]:
    import numpy as np

    rows = []
    for folder in CACHES:
        cache = split_file(folder, split)
        path = root / cache
        if path.is_file():
            length = int(np.load(path, mmap_mode="r").shape[0])
            rows.append({"path": cache.as_posix(), "row": row, "present": row < length})
    return rows


def _models_using(root: Path, split: str, splits_md5: str | None, sha256: str = "") -> list[dict[str, Any]]:
    """Training stages that fit on (train) or selected by (val) this split version; evaluations on test.

    Each evaluation carries its model's verdict on the image (``reports/predictions/<variant>.parquet``).
    """
    records = all_records(root)
    wanted = "evaluate" if split == "test" else "train"
    use = {"train": "trained on it", "val": "validated on it (best epoch chosen on val)", "test": "tested on it"}[split]
    found = []
    for name, record in sorted(records.items()):
        if record.get("command") != wanted:
            continue
        used_md5, intact = _split_md5(root, name, records)
        model = next((out["path"] for out in record.get("outputs") or [] if out["path"].endswith(".keras")), None)
        if model is None:
            model = next(
                (entry["path"] for entry in record.get("inputs") or [] if entry["path"].endswith(".keras")), None
            )
        found.append(
            {
                "stage": name,
                "model": model,
                "use": use,
                "same_split_version": used_md5 is not None and used_md5 == splits_md5,
                "chain_intact": intact,
                **({"prediction": _prediction(root, record, sha256)} if wanted == "evaluate" else {}),
            }
        )
    return found


def _prediction(root: Path, record: Mapping[str, Any], sha256: str) -> dict[str, Any] | None:
    """The evaluate stage's verdict on one image, from the predictions parquet its record lists (None: none)."""
    path = next((out["path"] for out in record.get("outputs") or [] if out["path"].endswith(".parquet")), None)
    if path is None or not (root / path).is_file():
        return None
    frame = pd.read_parquet(root / path)
    rows = frame[frame["sha256"] == sha256]
    if rows.empty:
        return None
    row = rows.iloc[0]
    probabilities = {col[2:]: float(row[col]) for col in frame.columns if col.startswith("p_")}
    return {
        "label": str(row["label"]),
        "predicted": str(row["predicted"]),
        "confidence": float(row["confidence"]),
        "correct": bool(row["correct"]),
        "probabilities": probabilities,
        "path": path,
    }


# -- diff -----------------------------------------------------------------------------------------------------


def read_at(root: Path, path: str, rev: str | None) -> pd.DataFrame:
    """A DVC-tracked parquet file as it was at git revision ``rev`` (None: the workspace), through DVC's API.

    Raises:
        CvpipeError: the revision or its data cannot be read (say how to fetch it).
    """
    if rev is None:
        return _read_table(Path(root) / path)
    import dvc.api

    try:
        data = dvc.api.read(path, repo=str(root), rev=rev, mode="rb")
    except Exception as error:
        raise CvpipeError(
            f"{path}@{rev}: cannot read it ({type(error).__name__}: {_first_line(error)}); {_fix_for(root, rev)}"
        ) from None
    return pd.read_parquet(io.BytesIO(data))


def _fix_for(root: Path, rev: str) -> str:
    """What to do when ``rev``'s data cannot be read: name the revision when git does not know it."""
    import subprocess

    known = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=root, capture_output=True, check=False
    )
    if known.returncode != 0:
        return f"git knows no revision {rev!r} (see `git log --oneline`)"
    return "its data is not in DVC's cache: `dvc fetch --all-commits` (or `dvc pull`) brings it"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def split_diff(before: pd.DataFrame, after: pd.DataFrame) -> dict[str, Any]:
    """Images (by sha256) that entered or left each split between two split tables, with per-class counts."""
    keys = ["sha256", "member", "label", "split"]
    old, new = before[keys].set_index("sha256"), after[keys].set_index("sha256")
    splits: dict[str, Any] = {}
    for name in SPLITS:
        was, now = set(old.index[old["split"] == name]), set(new.index[new["split"] == name])
        entered = sorted(now - was, key=lambda sha: str(new.at[sha, "member"]))
        left = sorted(was - now, key=lambda sha: str(old.at[sha, "member"]))
        splits[name] = {
            "entered": [_moved(sha, new, old) for sha in entered],
            "left": [_moved(sha, old, new) for sha in left],
            "entered_per_class": _per_class(new.loc[entered, "label"]),
            "left_per_class": _per_class(old.loc[left, "label"]),
            "before": len(was),
            "after": len(now),
        }
    common = old.index.intersection(new.index)
    unchanged = int((old.loc[common, "split"] == new.loc[common, "split"]).sum())
    return {"splits": splits, "unchanged": unchanged}


def _moved(sha: str, here: pd.DataFrame, there: pd.DataFrame) -> dict[str, Any]:
    """One image of a diff: where it is here and where it was (or is) on the other side."""
    return {
        "sha256": sha,
        "member": str(here.at[sha, "member"]),
        "label": str(here.at[sha, "label"]),
        "other_side": str(there.at[sha, "split"]) if sha in there.index else None,
    }


def _per_class(labels: pd.Series) -> dict[str, int]:
    return {str(label): int(count) for label, count in labels.value_counts().sort_index().items()}


def lineage_diff(root: Path, rev1: str, rev2: str | None, path: str = SPLITS_TABLE.as_posix()) -> dict[str, Any]:
    """:func:`split_diff` of the split table at two git revisions (``rev2`` None: the workspace)."""
    before, after = read_at(root, path, rev1), read_at(root, path, rev2)
    return {"path": path, "rev1": rev1, "rev2": rev2 or "workspace", **split_diff(before, after)}
