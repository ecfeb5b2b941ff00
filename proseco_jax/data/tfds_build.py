"""The bottom of the data package: what every tfds corpus of ours shares, so that a corpus is one module.

A corpus module (`markov_builder`, `text_builder`, `sft_builder`) defines

    a `tfds.core.GeneratorBasedBuilder` whose config is a `SectionConfig`: the typed `data` section
        (`config_base.Data`) the builder reads its settings from, under a name that encodes every setting
        that changes the data (`settings_digest` helps), so different settings never share files;
    its records (`_info`, `_split_generators`), written into `self.data_dir`, which during a build is
        tfds's temporary directory: extra files written there appear atomically with the data;

and calls `prepare(builder_cls, config, ...)`, which builds the corpus once and opens it:

    1. `data.data_dir` resolved and created; the version directory `<builder>/<config name>/<version>`.
    2. Prepared (its dataset_info.json exists): `check_prepared(version_dir)` may refuse stale data.
       Not prepared: `check_inputs()` fails early on missing sources, then `build_once` builds it.
    3. The splits opened through `as_data_source` (no TensorFlow) as `RandomAccessSource`s and handed to
       `check_sources`; any failure is one `DataError` line that names the corpus and says to delete it.

`build_once` takes a file lock in `data_dir`, returns at once if another process finished the build while
it waited, removes tfds temporary directories left by builds that died (only a lock holder may), and runs
`download_and_prepare`, which writes everything into a temporary directory renamed into place at the end:
a reader never sees half a corpus. A build that fails also removes the empty directories it created.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from typing import ClassVar, Protocol

import numpy as np
import tensorflow_datasets as tfds

from proseco_jax import locks
from proseco_jax.config_base import Data, data_directory
from proseco_jax.data.errors import DataError, one_line
from proseco_jax.data.text_sources import same_files


class LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """The base of every builder here: data made on this machine (nothing downloaded), version 1.0.0."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> os.PathLike | None:
        """No source file to locate: tfds only uses it to find download checksums, and nothing is downloaded.

        tfds's own lookup imports `importlib_resources`, which tfds does not declare as a dependency.
        """
        return None

SOURCES_JSON = "sources.json"  # A corpus's source files (names, stamps, digests) and its split sizes.
# In data_dir, shared by every corpus; named after the first one, and kept so that builds by earlier
# versions of this module and by this one exclude each other.
_LOCK_FILE = ".markov_language.lock"


class RandomAccessSource(Protocol):
    """What the input pipeline reads: a sized, indexable collection of `{'tokens': int32 [L], ...}` dicts."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Mapping[str, np.ndarray]: ...


@dataclasses.dataclass
class SectionConfig(tfds.core.BuilderConfig):
    """A corpus's builder config: its name and the `data` section its builder reads every setting from.

    Whatever the builder reads from `data` must be encoded in `name`: tfds files a corpus under its name
    alone. Make one with `section_config`.
    """

    data: Data = dataclasses.field(default_factory=Data)


def section_config(data: Data, name: str, description: str) -> SectionConfig:
    """The builder config of the corpus `data` describes, filed under `name`."""
    return SectionConfig(name=name, description=description, data=data)


def settings_digest(settings: Mapping[str, object]) -> str:
    """12 hex digits that change with any of `settings` (JSON values): the tail of a config name."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------ building


@contextlib.contextmanager
def exclusive_lock(data_dir: str) -> Iterator[None]:
    """Holds an exclusive flock on a file in `data_dir`, so only one process builds there at a time."""
    try:
        fd = locks.acquire(os.path.join(data_dir, _LOCK_FILE), wait=True)
    except OSError as e:
        raise DataError(f"data_dir {data_dir} is not writable: {e}") from e
    try:
        yield
    finally:
        os.close(fd)  # The file stays: every corpus in data_dir shares it.


@contextlib.contextmanager
def quiet_tfds() -> Iterator[None]:
    """Hides tfds's per-example progress bars while building, then restores the previous setting."""
    tqdm_utils = getattr(tfds.core.utils, "tqdm_utils", None)
    was_active = getattr(tqdm_utils, "_active", True)
    tfds.disable_progress_bar()
    try:
        yield
    finally:
        if was_active:
            tfds.enable_progress_bar()


def is_prepared(version_dir: str) -> bool:
    """Whether a complete corpus is there (tfds writes dataset_info.json into the directory it renames)."""
    return os.path.exists(os.path.join(version_dir, "dataset_info.json"))


def _remove_empty_parents(path: str, stop: str) -> None:
    while os.path.abspath(path) != os.path.abspath(stop) and os.path.isdir(path) and not os.listdir(path):
        os.rmdir(path)
        path = os.path.dirname(path)


def build_once(builder: tfds.core.DatasetBuilder, data_dir: str,
               announce: Callable[[str], None] | None = None) -> None:
    """Builds `builder`'s corpus (array_record) into `data_dir` unless it is there; `announce(version_dir)`
    is called just before a build starts. Safe to call from several processes at once."""
    with exclusive_lock(data_dir):
        version_dir = os.fspath(builder.data_dir)
        if is_prepared(version_dir):  # Another process built it while we waited for the lock.
            return
        for stale in glob.glob(os.path.join(os.path.dirname(version_dir), "incomplete.*")):
            shutil.rmtree(stale, ignore_errors=True)
        if announce is not None:
            announce(version_dir)
        try:
            with quiet_tfds():
                builder.download_and_prepare(
                    file_format="array_record",
                    download_config=tfds.download.DownloadConfig(try_download_gcs=False),
                )
        except BaseException:
            _remove_empty_parents(os.path.dirname(version_dir), data_dir)
            raise


# ------------------------------------------------------------------------------------------ preparing


def check_files_unchanged(version_dir: str, paths: list[str], files_glob: str) -> None:
    """DataError unless the source files `paths` (those matching data.files = files_glob) are the ones the
    corpus in version_dir was prepared from (its SOURCES_JSON): the same names and content digests (a file
    is hashed again only when its size, mtime or ctime moved). No paths: the corpus was prepared
    elsewhere (or its files were removed) and stands on its own."""
    if not paths:
        return
    try:
        with open(os.path.join(version_dir, SOURCES_JSON), encoding="utf-8") as f:
            recorded = json.load(f)["files"]
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{version_dir}/{SOURCES_JSON} is unreadable ({one_line(e)})") from None
    if not same_files(paths, recorded):
        raise DataError(f"the files matching data.files={files_glob!r} changed since {version_dir} was "
                        "prepared; delete that directory to prepare them again")


def created_data_dir(data_dir: str) -> str:
    """`data.data_dir` resolved (see `config_base.data_directory`) and created."""
    data_dir = data_directory(os.fspath(data_dir))
    try:
        os.makedirs(data_dir, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create data_dir {data_dir}: {e}") from e
    return data_dir


def version_dir_of(builder_cls: type[tfds.core.DatasetBuilder], data_dir: str,
                   config: tfds.core.BuilderConfig) -> str:
    """Where the corpus of `config` lives (or will); DataError if what is there cannot even be opened."""
    try:
        return os.fspath(builder_cls(data_dir=data_dir, config=config).data_dir)
    except Exception as e:  # noqa: BLE001 - tfds reads dataset_info.json of an existing version directory.
        raise DataError(f"{builder_cls.name} corpus {config.name} under {data_dir} is corrupt: "
                        f"{one_line(e)}") from e


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A prepared corpus: its splits as random-access sources and its tfds version directory."""

    sources: dict[str, RandomAccessSource]
    version_dir: str


def prepare(
    builder_cls: type[tfds.core.DatasetBuilder],
    config: SectionConfig,
    *,
    check_prepared: Callable[[str], None] | None = None,
    check_inputs: Callable[[], None] | None = None,
    check_sources: Callable[[dict[str, RandomAccessSource], str], None] | None = None,
    announce: Callable[[str], None] | None = None,
) -> Prepared:
    """Builds the corpus of `config` into `config.data.data_dir` unless it is there, and opens it.

    Args:
      builder_cls: the corpus's builder; constructed as `builder_cls(data_dir=..., config=config)`.
      config: from `section_config`.
      check_prepared: `(version_dir)` of a corpus already prepared; raises DataError if it is stale.
      check_inputs: run before a build; raises DataError if the sources are plainly not there.
      check_sources: `(sources by split, version_dir)` after opening; raises DataError if they are wrong.
      announce: `(version_dir)` just before a build starts.

    Raises:
      DataError (one line): data_dir not writable, a corpus directory left without dataset_info.json,
        whatever the checks or the build raise, or prepared data that cannot be read.
    """
    data_dir = created_data_dir(config.data.data_dir)
    version_dir = version_dir_of(builder_cls, data_dir, config)
    if is_prepared(version_dir):
        if check_prepared is not None:
            check_prepared(version_dir)
    else:
        if os.path.isdir(version_dir):
            raise DataError(f"{version_dir} exists without dataset_info.json; delete it to rebuild")
        if check_inputs is not None:
            check_inputs()
        try:
            build_once(builder_cls(data_dir=data_dir, config=config), data_dir, announce)
        except OSError as e:
            raise DataError(f"cannot build {builder_cls.name} in {data_dir}: {one_line(e)}") from e

    label, hint = f"{builder_cls.name} corpus {config.name}", f"delete {version_dir} to rebuild"
    try:
        # A fresh builder reads the split sizes from the dataset_info.json that the build wrote.
        sources = dict(builder_cls(data_dir=data_dir, config=config).as_data_source())
        if check_sources is not None:
            check_sources(sources, version_dir)
    except DataError as e:
        raise DataError(f"{label}: {e}; {hint}") from e
    except Exception as e:  # noqa: BLE001 - missing or truncated array_record files fail inside tfds.
        raise DataError(f"{label} is unreadable: {one_line(e)}; {hint}") from e
    return Prepared(sources=sources, version_dir=version_dir)
