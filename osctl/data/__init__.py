"""Annotation files, their checks, the frame/resolution rules, buckets and the sample index.

Modules, one job each (none imports a plugin, torch or a decoder at import time):

- :mod:`~osctl.data.datatxt`: parse ``data.txt`` (``DATA_ROOT,ANNOTATION`` lines);
- :mod:`~osctl.data.records`: the Open-Sora-Plan v1.3 record fields and media kinds;
- :mod:`~osctl.data.annotations`: read .json/.jsonl/.pkl/.parquet files into columns, fast;
- :mod:`~osctl.data._fast.pool`: share the decoding of one large JSON file between processes;
- :mod:`~osctl.data.checksum`: SHA-256 of annotation files on a background thread (index fingerprint);
- :mod:`~osctl.data._fast.strings`: vectorised facts about Arrow string columns (hashes, last ``/``, odd segments);
- :mod:`~osctl.data.validate`: every check of ``osctl data validate``, returned as findings;
- :mod:`~osctl.data.probe`: open media files (decord, Pillow) for ``--probe``;
- :mod:`~osctl.data.rules`: pure frame and resolution rules (vectorised) and read-time frame sampling;
- :mod:`~osctl.data.bucket`: apply the rules, drop reasons, buckets and the minority rule;
- :mod:`~osctl.data.index`: write and memory-map the sample index used by training;
- :mod:`~osctl.data.report`: the per-record JSONL report of ``osctl data bucket --report``.
"""

import os

MAX_DEFAULT_WORKERS = 8
"""Processes the data commands use by default: the CPU count, at most this many."""


def default_workers() -> int:
    """Processes that decode large annotation files (and probe media) unless told otherwise (``--workers``)."""
    return max(1, min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1))
