"""Build the sample index from a data.txt: read every annotation file, apply the rules, write the index.

One path for every caller: ``osctl data bucket`` (a thin command that prints what was built) and
training, whose rank 0 builds a missing or stale index before the first step
(:func:`osctl.data.stream.loader.prepare_index`); a dry run buckets in memory with
:func:`bucket_annotations` and writes nothing (:mod:`osctl.data.dry_run`). :func:`check_index` says
where a run's index lives and whether it must be (re)built::

    build = build_index(data_txt, IndexTarget(settings, out_dir), report=Path("drops.jsonl"))
    build.result.buckets, build.index_path

The steps, in order: read the annotation files (:func:`osctl.data.annotations.read_annotations`),
reuse the digests an earlier index recorded for unchanged files, refuse unreadable files, apply the
rules (:func:`osctl.data.bucket.build_buckets`), write the per-record report, refuse an epoch without
a batch, write the index (:func:`osctl.data.index.write_index`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from osctl.data import default_workers
from osctl.data.annotations import read_annotations
from osctl.data.datatxt import display_name, load_data_txt
from osctl.data.table import LoadedAnnotation
from osctl.errors import ConfigError, DataError, OsctlError

if TYPE_CHECKING:
    from osctl.data.bucket import BucketResult, BucketSettings

@dataclasses.dataclass(frozen=True)
class IndexTarget:
    """What to build and where: the bucket settings (the recipe's rules, latent geometry and parallel
    layout) and the folder of the index."""

    settings: BucketSettings
    out_dir: Path


@dataclasses.dataclass(frozen=True)
class IndexBuild:
    """What :func:`build_index` built: its target, the bucketing result and the Arrow file written."""

    target: IndexTarget
    result: BucketResult
    index_path: Path

    @property
    def files(self) -> int:
        """Annotation files read."""
        return len(self.result.loaded)


def _read(data_txt: Path, workers: int | None, meanwhile: Callable[[], Any] | None) -> list[LoadedAnnotation]:
    """Every annotation file of ``data_txt``, read; ``meanwhile`` runs while they are decoded."""
    try:
        sources = load_data_txt(data_txt)
    except OsctlError:
        if meanwhile is not None:
            meanwhile()  # a broken recipe is reported before a broken data.txt, as when it is read first
        raise
    return read_annotations(sources, workers=workers or default_workers(), meanwhile=meanwhile)


def _refuse_unreadable(loaded: list[LoadedAnnotation], data_txt: Path) -> None:
    broken = [item for item in loaded if item.problem is not None]
    if broken:
        more = f" (and {len(broken) - 1} more file(s))" if len(broken) > 1 else ""
        raise DataError(f"{broken[0].problem.message}{more}; no index was written.",  # type: ignore[union-attr]
                        hint=f"run `osctl data validate {data_txt}` to see every problem.")


def bucket_annotations(data_txt: Path, settings: BucketSettings, *, workers: int | None = None) -> BucketResult:
    """Read every annotation file of ``data_txt`` and apply the rules, in memory; nothing is written.

    Raises ``DataError`` when an annotation file cannot be read (``osctl data validate`` names every problem).
    """
    from osctl.data.bucket import build_buckets

    loaded = _read(data_txt, workers, None)
    _refuse_unreadable(loaded, data_txt)
    return build_buckets(loaded, settings)


def build_index(data_txt: Path, target: IndexTarget | Callable[[], IndexTarget], *, workers: int | None = None,
                rehash: bool = False, report: Path | None = None,
                before_write: Callable[[BucketResult], None] | None = None) -> IndexBuild:
    """Read, bucket and write the sample index of ``data_txt`` into ``target.out_dir``; return what was built.

    ``target`` may be a callable: it is called once, while the annotation files are decoded, so that
    loading a recipe and its plugins costs no time (``osctl data bucket``). ``workers``: processes that
    decode large annotation files (default :func:`default_workers`). Unless ``rehash``, the SHA-256 an
    earlier index in ``out_dir`` recorded for an unchanged annotation file is reused
    (:func:`osctl.data.index.reuse_recorded_digests`). ``report``: also write the per-record JSONL report
    (:mod:`osctl.data.report`); ``before_write`` is called with the result before the index is refused
    or written (a plot). Raises ``DataError`` for an unreadable annotation file, when no sample survives
    or when an epoch holds no batch; nothing is written then (the report is, to explain why).
    """
    resolved: list[IndexTarget] = []

    def resolve() -> IndexTarget:
        if not resolved:
            resolved.append(target() if callable(target) else target)
            import osctl.data.index  # noqa: F401  (the writer's modules load while the files decode)
        return resolved[0]

    loaded = _read(data_txt, workers, resolve)
    chosen = resolve()
    from osctl.data.bucket import build_buckets
    from osctl.data.index import reuse_recorded_digests, write_index

    if not rehash:
        reuse_recorded_digests(loaded, chosen.out_dir)
    _refuse_unreadable(loaded, data_txt)
    result = build_buckets(loaded, chosen.settings)
    if report is not None:
        from osctl.data.report import write_report

        base = Path(data_txt).resolve().parent
        write_report(result, report, [display_name(item.source.annotation, base) for item in loaded])
    if before_write is not None:
        before_write(result)
    result.check_trainable()
    return IndexBuild(chosen, result, write_index(result, data_txt, chosen.out_dir))


@dataclasses.dataclass(frozen=True)
class IndexCheck:
    """Where the run's sample index lives and whether it must be (re)built from ``data_txt`` first.

    ``rebuild`` is None for a fresh index, else why it is built: ``"missing"`` or the staleness reason.
    """

    folder: Path
    data_txt: Path | None
    rebuild: str | None

    def note(self, done: bool = True) -> str:
        """The plan's word on the index: up to date, built or rebuilt (``done=False``: would be, in a dry run)."""
        if self.rebuild is None:
            return "up to date"
        if self.rebuild == "missing":
            return f"built now from {self.data_txt}" if done else f"would be built from {self.data_txt}"
        return f"rebuilt ({self.rebuild})" if done else f"would be rebuilt ({self.rebuild})"


def index_folder(recipe: Any) -> Path:
    """The folder of a run's sample index: ``data.index_dir``, else ``<train.output_dir>/index``."""
    data = recipe.data
    return Path(data.index_dir) if data.index_dir is not None else Path(recipe.train.output_dir) / "index"


def check_index(recipe: Any, settings: BucketSettings) -> IndexCheck:
    """The index's folder and freshness, read only; refuses what training would refuse.

    A missing index without ``data.data``, and a stale one in an explicit ``data.index_dir``, are errors
    naming the command that builds it.
    """
    from osctl.data.index import INDEX_FILE, StaleIndexError, open_index

    data = recipe.data
    explicit = data.index_dir is not None
    folder = index_folder(recipe)
    data_txt = Path(data.data) if data.data is not None else None
    if not (folder / INDEX_FILE).is_file():
        if data_txt is None:
            raise ConfigError(f"no sample index in {folder} and data.data is not set; set data.data to your data.txt "
                              "(or data.index_dir to an index built with `osctl data bucket`).")
        return IndexCheck(folder, data_txt, "missing")
    try:
        open_index(folder, data_txt=data_txt, settings=settings)
    except StaleIndexError as exc:
        if explicit or data_txt is None:
            world = settings.layout.world_size
            raise StaleIndexError(exc.message, hint=(
                f"rebuild it with `osctl data bucket {data_txt or 'DATA_TXT'} --recipe RECIPE --world-size {world} "
                f"--out {folder}` (training checks it against {world} process(es)), or unset data.index_dir to let "
                "training rebuild it under train.output_dir.")) from None
        return IndexCheck(folder, data_txt, exc.message.split(": ", 1)[-1].rstrip("."))
    return IndexCheck(folder, data_txt, None)
