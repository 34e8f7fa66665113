"""Lineage: a record per stage run (:mod:`.record`), its OpenLineage events (:mod:`.openlineage`), and queries.

:func:`track_stage` is where the two meet: ``record`` knows nothing of OpenLineage, and ``openlineage`` reads
a :class:`~cvpipe.lineage.record.StageRun` without importing ``record``, so neither imports the other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from cvpipe.lineage.record import StageRun, begin_stage, build_record, events_file, hash_outputs, write_record

__all__ = ["StageRun", "track_stage"]


@contextlib.contextmanager
def track_stage(
    command: str,
    *,
    inputs: Sequence[Path | str],
    outputs: Sequence[Path | str],
    params_file: Path,
    sections: Sequence[str],
    stage: str | None = None,
) -> Iterator[StageRun]:
    """Wrap a stage: START event, the stage, then its record and COMPLETE event (or a FAIL event).

    Lineage never breaks a stage: events that cannot be sent are logged and counted in the record. The
    stage's own exceptions propagate unchanged, after the FAIL (or, on Ctrl-C, ABORT) event.

    Args:
        command: the cvpipe subcommand.
        inputs: data paths it reads.
        outputs: paths it writes.
        params_file: the params file.
        sections: params sections it reads (recorded when dvc.yaml does not name its keys).
        stage: the stage name outside DVC, e.g. ``train@scratch`` (default: ``command``).

    Yields:
        The :class:`StageRun`; set ``run.summary`` to what the stage returned.
    """
    # Imported here: the OpenLineage client takes ~0.2 s to import, which `cvpipe lineage`, `cvpipe --help`
    # and the report's record queries do not need.
    from cvpipe.lineage.openlineage import EventEmitter

    run = begin_stage(command, inputs, outputs, params_file, sections, stage)
    emitter = EventEmitter(events_file(run))
    emitter.start(run)
    try:
        yield run
    except BaseException as error:
        emitter.fail(run, error)
        raise
    hash_outputs(run)
    emitter.complete(run)
    write_record(run, build_record(run, "completed", emitter.stats()))
    emitter.close()  # a failed send has already logged its one warning
