"""Data layer: find scans and ages in OASIS-2, BIDS or a table, and read images.

Example::

    found = discover("~/data/oasis2")        # an OASIS-2 root, a BIDS root or a CSV of scans
    found.manifest                           # one row per scan: scan_id, subject_id, ..., age
    found.problems                           # what was left out, and why
    scan = load_scan(found.manifest.path[0]) # float32 3-D voxels, affine, zooms
"""

from brainage.io.discover import check_scans, discover, summarize
from brainage.io.images import IMAGE_SUFFIXES, Scan, check_scan_file, load_scan, scan_stem
from brainage.io.manifest import (
    COLUMN_DTYPES,
    CORE_COLUMNS,
    OASIS_EXTRA_COLUMNS,
    Discovery,
    read_manifest,
    validate_manifest,
    write_manifest,
)
from brainage.io.oasis import DEMOGRAPHICS_COLUMNS, find_demographics, read_demographics

__all__ = [
    "COLUMN_DTYPES",
    "CORE_COLUMNS",
    "DEMOGRAPHICS_COLUMNS",
    "IMAGE_SUFFIXES",
    "OASIS_EXTRA_COLUMNS",
    "Discovery",
    "Scan",
    "check_scan_file",
    "check_scans",
    "discover",
    "find_demographics",
    "load_scan",
    "read_demographics",
    "read_manifest",
    "scan_stem",
    "summarize",
    "validate_manifest",
    "write_manifest",
]
