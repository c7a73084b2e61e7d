"""The per-record report of ``osctl data bucket --report FILE`` (JSON lines).

One line per record, in data.txt order then file order::

    {"file": "anno_a.json", "index": 4, "kept": true, "reason": "kept", "bucket": "93x352x640",
     "frame_indices": [5, 7, 9, ...]}

- ``reason`` is ``kept`` or a drop reason code (:class:`osctl.data.bucket.Reason`); an annotation
  file that could not be read gives one line with ``index: null`` and its problem code;
- ``bucket`` is the ``T x H x W`` key for kept records and for records dropped by the minority rule
  (null otherwise);
- ``frame_indices`` are the build-time source frames (``[0]`` for images): the resampled candidates
  cropped with ``random.Random(data.seed)`` as the reference does at build time. Training draws a
  fresh temporal crop per read; the count never changes.
"""

from __future__ import annotations

from pathlib import Path

import orjson

from osctl.data.bucket import BucketResult, Reason
from osctl.errors import writing
from osctl.utils.atomic import atomic_file


def write_report(result: BucketResult, path: Path, names: list[str]) -> int:
    """Write the JSONL report atomically to ``path`` (inside its own folder); return the number of lines.

    ``names`` are the display names of the annotation files, in ``result.loaded`` order.
    """
    path = Path(path)
    begins = result.crop_begins()
    lines = 0
    bucketed = (Reason.KEPT, Reason.MINORITY_BUCKET)
    with writing(path, action="write the report"), atomic_file(path, root=path.parent) as tmp, \
            open(tmp, "wb") as handle:
        for f, (item, outcome) in enumerate(zip(result.loaded, result.outcomes, strict=True)):
            name = names[f]
            if outcome is None:
                code = item.problem.code if item.problem is not None else "unreadable"
                handle.write(orjson.dumps({"file": name, "index": None, "kept": False, "reason": code,
                                           "bucket": None, "frame_indices": None}) + b"\n")
                lines += 1
                continue
            reasons = outcome.reason.tolist()
            t, h, w = outcome.t.tolist(), outcome.h.tolist(), outcome.w.tolist()
            file_begins = begins[f]
            assert file_begins is not None
            for i, code in enumerate(reasons):
                reason = Reason(code)
                bucket = f"{t[i]}x{h[i]}x{w[i]}" if reason in bucketed else None
                frames = result.frame_indices(f, i, int(file_begins[i])) if bucket else None
                handle.write(orjson.dumps({"file": name, "index": i, "kept": reason == Reason.KEPT,
                                           "reason": reason.code, "bucket": bucket, "frame_indices": frames}) + b"\n")
                lines += 1
    return lines
