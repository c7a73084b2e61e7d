"""From a folder of videos to a data set: import, scene splitting, captioning and quality scores.

Every step reads media, does the same per-file work on each one and writes Open-Sora-Plan annotation
files plus a ``data.txt`` that ``osctl data validate``, ``data bucket`` and ``train`` take as they are:

- :mod:`osctl.curate.importer` (``osctl data import``): probe a folder, a CSV/JSONL/Parquet list or an
  existing annotation, with captions from ``.txt`` sidecars, a column or ``captions.jsonl``;
- :mod:`osctl.curate.scenes` (``osctl data split-scenes``): one ``cut`` record per scene;
- :mod:`osctl.curate.apply` (``osctl data caption`` / ``data score``): run ``captioner`` and ``scorer``
  plugins over the records of a ``data.txt``.

The per-file work runs on an :mod:`engine <osctl.curate.engines>`: local processes by default, or Ray
tasks on a Ray cluster (``--engine ray``), with the same outputs. Outputs are written atomically inside
the chosen folder (:mod:`osctl.curate.output`).
"""
