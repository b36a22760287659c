"""The model repository (docs/design.md, "Contract 1"): its layout, versions, metadata schema,
checksums and atomic writes, TensorFlow-free: ``layout`` (names, versions, folders),
``schema`` (``metadata.json``), ``containment`` (what a load may read) and ``files``
(checksums, atomic writes); everything is imported from here (``service.repository``).

Used by everything that reads or writes ``models/``: ``training.export`` and ``training.optimize``
write it, ``service.serving.model_store`` checks an export before serving it (this module is packaged into
the Bento with ``service/``), ``benchmarks.modelrepo`` and the tests find exports through it.

    models/<name>/<version>/          version: a positive integer (TensorFlow Serving's layout)
        saved_model.pb, variables/, fingerprint.pb, assets/   the SavedModel (canonical)
        metadata.json                 ``REQUIRED_KEYS``; ``files``: bytes and SHA-256 of every
                                      file above, recorded at export
        openvino/<precision>/         derived forms (``training.optimize``), each described with
                                      its own files in ``metadata.json["runtimes"]``

- A **name** is letters, digits, ``_``, ``.`` and ``-``, starting with a letter or digit: never a
  path. A **version** folder is digits only; it is **complete** when it holds ``saved_model.pb``
  and ``metadata.json``. Writers publish a version by renaming a hidden ``.tmp-*`` sibling into
  place, so an interrupted export never looks like a version.
- ``metadata.json`` is replaced atomically (``write_json``: a sibling, fsynced, renamed); a derived
  folder (``openvino/<precision>/``) is written as a hidden sibling and published by
  ``replace_folder`` (fsynced, renamed into place).
- ``checksum_problem`` compares a folder with its recorded files: a missing, truncated or
  corrupted file (one flipped byte in a ``variables.data-*`` shard) is named in one line.
- ``containment_problem`` is the one containment rule of every load (docs/design.md, "Serving a repository"):
  a version folder is reached from the repository without a symbolic link, holds only plain files
  and folders (no link, no FIFO, no device), and every path ``metadata.json`` names
  (``files``, ``runtimes[...].path`` and their ``files``) is relative and stays inside it
  (``validate_metadata``); runtime options are limited to ``RUNTIME_OPTIONS``, none of which names
  a file or folder, so metadata never steers a read or a write elsewhere.
"""

from __future__ import annotations

from service.repository.containment import (
    SNAPSHOT_PREFIX,
    _copy_tree,
    containment_problem,
    printable,
    snapshot,
)
from service.repository.files import (
    checksum_problem,
    export_records,
    file_records,
    fsync_dir,
    fsync_tree,
    replace_file,
    replace_folder,
    sha256,
    write_json,
)
from service.repository.layout import (
    MAX_FOLDER_DEPTH,
    MAX_VERSION_DIGITS,
    METADATA_FILE,
    NAME_PATTERN,
    complete_versions,
    is_complete,
    is_valid_name,
    is_version_name,
    latest_version,
    model_names,
    next_version,
    parse_model_spec,
    parse_version,
    parse_version_spec,
    scan_versions,
    version_folders,
)
from service.repository.schema import (
    MAX_INPUT_SIDE,
    MAX_METADATA_BYTES,
    REQUIRED_KEYS,
    RUNTIME_OPTIONS,
    RUNTIMES,
    SERVING_KEYS,
    InvalidExport,
    inside_path_problem,
    read_metadata,
    validate_metadata,
)

__all__ = [
    "InvalidExport",
    "MAX_FOLDER_DEPTH",
    "MAX_INPUT_SIDE",
    "MAX_METADATA_BYTES",
    "MAX_VERSION_DIGITS",
    "METADATA_FILE",
    "NAME_PATTERN",
    "REQUIRED_KEYS",
    "RUNTIMES",
    "RUNTIME_OPTIONS",
    "SERVING_KEYS",
    "SNAPSHOT_PREFIX",
    "_copy_tree",
    "checksum_problem",
    "complete_versions",
    "containment_problem",
    "export_records",
    "file_records",
    "fsync_dir",
    "fsync_tree",
    "inside_path_problem",
    "is_complete",
    "is_valid_name",
    "is_version_name",
    "latest_version",
    "model_names",
    "next_version",
    "parse_model_spec",
    "parse_version",
    "parse_version_spec",
    "printable",
    "read_metadata",
    "replace_file",
    "replace_folder",
    "scan_versions",
    "sha256",
    "snapshot",
    "validate_metadata",
    "version_folders",
    "write_json",
]
