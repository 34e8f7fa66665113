"""``cvpipe lineage model|image|diff`` for a terminal: the answers of :mod:`cvpipe.lineage.query` as text."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from cvpipe.config import SPLITS


def _short(md5: Any) -> str:
    return str(md5)[:12] if md5 else "-"


def _counts(counts: Mapping[str, Any] | None) -> str:
    if not counts:
        return "-"
    return ", ".join(f"{label} {count}" for label, count in counts.items())


def format_model(answer: Mapping[str, Any]) -> str:
    """``cvpipe lineage model`` for a terminal: the chain from the source to the artifact."""
    run, source, manifest, split = answer["run"], answer["source"], answer["manifest"], answer["split"]
    git = run.get("git") or {}
    who = run.get("orchestrator") or {}
    state = "matches" if answer["matches_file"] else "DIFFERS FROM"
    lines = [
        f"{answer['artifact']}  md5 {_short(answer['md5'])}  ({state} the file on disk; "
        f"{'in' if answer['matches_dvc_lock'] else 'NOT in'} dvc.lock)",
        f"  stage     {answer['stage']}  run {run.get('run_id')}",
        f"  when      {run.get('started_at')} -> {run.get('finished_at')} ({run.get('seconds')} s)",
        f"  by        {who.get('kind')}"
        + (f", Prefect flow run {who['flow_run_id']} ({who.get('flow_run_name')})" if who.get("flow_run_id") else ""),
        f"  code      git {git.get('commit') or 'none'}"
        + (" (dirty: " + ", ".join(git.get("dirty_paths") or []) + ")" if git.get("dirty") else ""),
        f"  device    {run.get('device') or '-'}",
        "  params    " + ", ".join(f"{key}={json.dumps(value)}" for key, value in (run.get("params") or {}).items()),
        "  packages  " + ", ".join(f"{name} {version}" for name, version in (run.get("packages") or {}).items()),
        "source",
        f"  {source.get('source')}"
        + (f" {source['competition']}" if source.get("competition") else "")
        + f", archive sha256 {source.get('archive_sha256')}",
        f"  Last-Modified {source.get('last_modified') or '-'}, retrieved {source.get('retrieved_at')}",
        "manifest",
        f"  {manifest.get('path')} md5 {_short(manifest.get('md5'))}: {manifest.get('members')} members, "
        f"{manifest.get('ok')} ok, {manifest.get('quarantined')} quarantined",
        "split",
        f"  {split.get('path')} md5 {_short(split.get('md5'))}",
    ]
    counts = split.get("counts") or {}
    order = [*SPLITS, *sorted(set(counts) - set(SPLITS))]
    lines += [f"  {name}: {_counts(counts[name])}" for name in order if name in counts]
    weights = answer.get("conv_base") or answer.get("features")
    if weights:
        lines += [
            "feature extractor",
            f"  VGG16 weights {weights.get('spec')} ({weights.get('file')}), sha256 {weights.get('sha256', '-')}",
        ]
    lines.append("chain")
    for step in answer["chain"]:
        inputs = ", ".join(
            f"{entry['path']} ({entry['stage'] or 'source'}: {entry['link']})" for entry in step["inputs"]
        )
        lines.append(f"  {step['stage']:<28} <- {inputs or '-'}")
    if answer["broken_links"]:
        lines.append("BROKEN LINKS: an upstream stage ran again since (dvc repro brings them back in step)")
    return "\n".join(lines)


def format_image(answer: Mapping[str, Any]) -> str:
    """``cvpipe lineage image`` for a terminal."""
    lines = [
        f"{', '.join(answer['members'])}  sha256 {answer['sha256']}",
        f"  label {answer['label'] or '-'}, {answer['status']}"
        + (f" ({answer['reason']})" if answer.get("reason") else ""),
    ]
    if len(answer["exact_copies"]) > 1:
        lines.append(f"  exact copies: {', '.join(answer['exact_copies'])} (the split keeps {answer['kept_member']})")
    if answer["split"] is None:
        lines.append(f"  {answer.get('note')}")
        return "\n".join(lines)
    lines.append(f"  split {answer['split']}, row {answer['row']}")
    if len(answer["near_duplicate_group"]) > 1:
        lines.append(f"  near-duplicate group (same split): {', '.join(answer['near_duplicate_group'])}")
    lines += [f"  cache {cache['path']} row {cache['row']}" for cache in answer["caches"]]
    for model in answer["models"]:
        verdict = (
            "" if model["same_split_version"] and model["chain_intact"] else "  (built from another split version)"
        )
        lines.append(f"  {model['stage']}: {model['model']} {model['use']}{verdict}")
        said = model.get("prediction")
        if said:
            mark = "correct" if said["correct"] else f"WRONG (label {said['label']})"
            lines.append(f"    predicted {said['predicted']} with p={said['confidence']:.3f}: {mark}")
    return "\n".join(lines)


def format_diff(answer: Mapping[str, Any], limit: int = 20) -> str:
    """``cvpipe lineage diff`` for a terminal: per split, what entered and left, with class counts."""
    lines = [f"{answer['path']}: {answer['rev1']} -> {answer['rev2']} ({answer['unchanged']} images kept their split)"]
    for name, change in answer["splits"].items():
        lines.append(
            f"{name}: {change['before']} -> {change['after']} images; "
            f"entered {len(change['entered'])} ({_counts(change['entered_per_class'])}), "
            f"left {len(change['left'])} ({_counts(change['left_per_class'])})"
        )
        for sign, key in (("+", "entered"), ("-", "left")):
            for image in change[key][:limit]:
                where = image["other_side"] or "no split"
                lines.append(
                    f"  {sign} {image['member']} ({image['label']}, {image['sha256'][:12]}; other side: {where})"
                )
            if len(change[key]) > limit:
                lines.append(f"  {sign} ... {len(change[key]) - limit} more (--limit, or --json for all)")
    return "\n".join(lines)
