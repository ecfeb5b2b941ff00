"""Building a tfds corpus exactly once per setting, whatever the number of processes and interruptions.

`build_once` takes a file lock in `data_dir`, returns at once if another process finished the build while
it waited, removes tfds temporary directories left by builds that died (only a lock holder may), and runs
`download_and_prepare`, which writes everything into a temporary directory renamed into place at the end:
a reader never sees half a corpus. A build that fails also removes the empty directories it created.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from collections.abc import Callable

import tensorflow_datasets as tfds

from proseco_jax.config_base import data_directory
from proseco_jax.data.errors import DataError, one_line
from proseco_jax.data.markov_builder import _exclusive_lock, _is_prepared, _quiet_tfds
from proseco_jax.data.text_sources import describe_files

SOURCES_JSON = "sources.json"  # A corpus's source files (names and sizes) and its split sizes.


def check_files_unchanged(version_dir: str, paths: list[str], files_glob: str) -> None:
    """DataError unless the source files `paths` (those matching data.files = files_glob) are the ones the
    corpus in version_dir was prepared from (its SOURCES_JSON). No paths: the corpus was prepared
    elsewhere (or its files were removed) and stands on its own."""
    if not paths:
        return
    try:
        with open(os.path.join(version_dir, SOURCES_JSON), encoding="utf-8") as f:
            recorded = json.load(f)["files"]
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{version_dir}/{SOURCES_JSON} is unreadable ({one_line(e)})") from None
    if describe_files(paths) != recorded:
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


def _remove_empty_parents(path: str, stop: str) -> None:
    while os.path.abspath(path) != os.path.abspath(stop) and os.path.isdir(path) and not os.listdir(path):
        os.rmdir(path)
        path = os.path.dirname(path)


def build_once(builder: tfds.core.DatasetBuilder, data_dir: str,
               announce: Callable[[str], None] | None = None) -> None:
    """Builds `builder`'s corpus (array_record) into `data_dir` unless it is there; `announce(version_dir)`
    is called just before a build starts."""
    with _exclusive_lock(data_dir):
        version_dir = os.fspath(builder.data_dir)
        if _is_prepared(version_dir):  # Another process built it while we waited for the lock.
            return
        for stale in glob.glob(os.path.join(os.path.dirname(version_dir), "incomplete.*")):
            shutil.rmtree(stale, ignore_errors=True)
        if announce is not None:
            announce(version_dir)
        try:
            with _quiet_tfds():
                builder.download_and_prepare(
                    file_format="array_record",
                    download_config=tfds.download.DownloadConfig(try_download_gcs=False),
                )
        except BaseException:
            _remove_empty_parents(os.path.dirname(version_dir), data_dir)
            raise
