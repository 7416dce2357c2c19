"""Every bad input the readers are fed, each with its one-line error; docs/troubleshooting.md lists them.

Each case makes a real bad file (or folder) under ``tmp_path`` and names the file the error must name
and words its cause must contain. Fatal errors are :class:`InputError`; a bad spreadsheet row is a
:class:`Problem` of the discovery, which goes on past it. The table in docs/troubleshooting.md is
written from :data:`CASES` by ``.venv/bin/python tests/test_bad_input.py`` and checked here, so the
two cannot drift.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainage.errors import InputError, Problem
from brainage.io import DEMOGRAPHICS_COLUMNS, check_scan_file, load_scan, read_manifest
from brainage.io.bids import discover_bids
from brainage.io.oasis import discover_oasis
from brainage.io.table import discover_table
from brainage.preprocess.adequacy import check_header

ROOT = Path(__file__).resolve().parents[1]
TROUBLESHOOTING = ROOT / "docs" / "troubleshooting.md"
BEGIN = "<!-- bad-input table: written by tests/test_bad_input.py from its CASES; do not edit by hand -->"
END = "<!-- end of the bad-input table -->"
SHAPE = (8, 8, 6)
AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])
#: The file size limit (bytes) under which the "disk full" case writes a manifest.
FSIZE_LIMIT = 2048

#: What a case's action gives: it raises :class:`InputError`, or returns the problems of a discovery.
Action = Callable[[], list[Problem]]


@dataclass(frozen=True)
class Case:
    """A bad input: its name, how it is made, the file its error names and words of the cause."""

    name: str
    made: str
    names: str
    cause: str
    make: Callable[[Path], Action]


# --- scans --------------------------------------------------------------------------------------------


def volume(shape: tuple[int, ...] = SHAPE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 100, shape).astype(np.float32)


def write(path: Path, data: np.ndarray) -> Path:
    """Save ``data`` as a NIfTI file, or a NIfTI pair for a ``.hdr`` name."""
    kind = nib.Nifti1Pair if path.name.endswith(".hdr") else nib.Nifti1Image
    nib.save(kind(data, AFFINE), path)
    return path


def both_readers(path: Path) -> Action:
    """Read ``path`` with the header-only check and with the full load: both must fail alike."""

    def act() -> list[Problem]:
        errors = []
        for reader in (check_scan_file, load_scan):
            with pytest.raises(InputError) as info:
                reader(path)
            errors.append((info.value.path, info.value.cause))
        assert errors[0] == errors[1], "check_scan_file and load_scan disagree"
        raise InputError(*errors[0])

    return act


def on_load(path: Path) -> Action:
    """Content problems pass the header check and fail the load."""

    def act() -> list[Problem]:
        check_scan_file(path)
        load_scan(path)
        return []

    return act


def _missing_img(tmp: Path) -> Action:
    path = write(tmp / "mpr-1.nifti.hdr", volume())
    (tmp / "mpr-1.nifti.img").unlink()
    return both_readers(path)


def _missing_hdr(tmp: Path) -> Action:
    write(tmp / "mpr-1.nifti.hdr", volume()).unlink()
    return both_readers(tmp / "mpr-1.nifti.img")


def _cut(path: Path, keep: int) -> Path:
    path.write_bytes(path.read_bytes()[:keep])
    return path


def _truncated_nii(tmp: Path) -> Action:
    path = write(tmp / "t1.nii", volume())
    return both_readers(_cut(path, path.stat().st_size - 100))


def _truncated_img(tmp: Path) -> Action:
    path = write(tmp / "mpr-1.nifti.hdr", volume())
    _cut(tmp / "mpr-1.nifti.img", 200)
    return both_readers(path)


def _truncated_gz(tmp: Path) -> Action:
    path = write(tmp / "t1.nii.gz", volume())
    return both_readers(_cut(path, path.stat().st_size // 2))


def _corrupt_gz(tmp: Path) -> Action:
    """Noise after the first 200 compressed bytes; the stream's length field is left right."""
    plain = write(tmp / "plain.nii", volume()).read_bytes()
    packed = bytearray(gzip.compress(plain))
    packed[200:-8] = np.random.default_rng(1).integers(0, 256, len(packed) - 208, dtype=np.uint8).tobytes()
    path = tmp / "t1.nii.gz"
    path.write_bytes(bytes(packed))
    return both_readers(path)


def _longer(name: str, data_file: str, extra: int) -> Callable[[Path], Action]:
    def make(tmp: Path) -> Action:
        path = write(tmp / name, volume())
        with (tmp / data_file).open("ab") as handle:
            handle.write(b"\0" * extra)
        return both_readers(path)

    return make


def _sparse_huge(tmp: Path) -> Action:
    """4 GiB on paper, a few kB on disk: the size check must not read it."""
    path = write(tmp / "t1.nii", volume())
    os.truncate(path, 4 << 30)
    return both_readers(path)


def _huge_header(tmp: Path) -> Action:
    """A 352-byte file whose header promises 30000³ int16 voxels (54 TB)."""
    header = nib.Nifti1Header()
    header.set_data_shape((30000, 30000, 30000))
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    path = tmp / "t1.nii"
    path.write_bytes(header.binaryblock + b"\0" * 4)
    return both_readers(path)


def _shaped(name: str, shape: tuple[int, ...]) -> Callable[[Path], Action]:
    return lambda tmp: both_readers(write(tmp / name, volume(shape)))


def _filled(value: float) -> Callable[[Path], Action]:
    return lambda tmp: on_load(write(tmp / "t1.nii.gz", np.full(SHAPE, value, np.float32)))


def _inadequate(name: str, shape: tuple[int, ...], zooms: tuple[float, ...]) -> Callable[[Path], Action]:
    """A readable scan that no brain-age model can read: it passes both readers, then the header's adequacy check refuses it."""

    def make(tmp: Path) -> Action:
        path = tmp / name
        nib.save(nib.Nifti1Image(volume(shape), np.diag([*zooms, 1.0])), path)

        def act() -> list[Problem]:
            check_scan_file(path)
            load_scan(path)
            check_header(path)
            return []

        return act

    return make


def _bytes(name: str, content: bytes) -> Callable[[Path], Action]:
    def make(tmp: Path) -> Action:
        (tmp / name).write_bytes(content)
        return both_readers(tmp / name)

    return make


def _folder(tmp: Path) -> Action:
    (tmp / "t1.nii").mkdir()
    return both_readers(tmp / "t1.nii")


# --- spreadsheets -------------------------------------------------------------------------------------


def oasis_row(session: str = "OAS2_0001_MR1", **changes: object) -> dict[str, object]:
    subject = session.rsplit("_MR", 1)[0]
    row: dict[str, object] = {
        "Subject ID": subject, "MRI ID": session, "Group": "Nondemented", "Visit": 1, "MR Delay": 0,
        "M/F": "F", "Hand": "R", "Age": 75, "EDUC": 14, "SES": 2.0, "MMSE": 29.0, "CDR": 0.0,
        "eTIV": 1500, "nWBV": 0.75, "ASF": 1.2,
    }  # fmt: skip  # keys grouped in rows
    return row | changes


def _sheet(rows: list[dict[str, object]], suffix: str = ".csv", drop: tuple[str, ...] = ()) -> Callable[[Path], Action]:
    """An OASIS-2 demographics spreadsheet of ``rows`` beside an empty scan folder; discovery of it."""

    def make(tmp: Path) -> Action:
        sheet = tmp / f"oasis_longitudinal_demographics{suffix}"
        frame = pd.DataFrame(rows).drop(columns=list(drop))
        (frame.to_excel if suffix == ".xlsx" else frame.to_csv)(sheet, index=False)
        (tmp / "scans").mkdir()
        return lambda: discover_oasis(tmp / "scans", sheet).problems

    return make


def _sheet_bytes(name: str, content: bytes) -> Callable[[Path], Action]:
    def make(tmp: Path) -> Action:
        (tmp / name).write_bytes(content)
        (tmp / "scans").mkdir()
        return lambda: discover_oasis(tmp / "scans", tmp / name).problems

    return make


def _scan_table(columns: dict[str, list[object]]) -> Callable[[Path], Action]:
    def make(tmp: Path) -> Action:
        write(tmp / "a.nii.gz", volume())
        pd.DataFrame(columns).to_csv(tmp / "scans.csv", index=False)
        return lambda: discover_table(tmp / "scans.csv").problems

    return make


def _unsupported_table(tmp: Path) -> Action:
    (tmp / "scans.txt").write_text("path,subject_id,age\na.nii.gz,s1,50\n")
    return lambda: discover_table(tmp / "scans.txt").problems


def _bids_without_participants(tmp: Path) -> Action:
    (tmp / "sub-01" / "anat").mkdir(parents=True)
    write(tmp / "sub-01" / "anat" / "sub-01_T1w.nii.gz", volume())
    return lambda: discover_bids(tmp).problems


def _manifest(changes: dict[str, list[object]]) -> Callable[[Path], Action]:
    def make(tmp: Path) -> Action:
        frame = pd.DataFrame(
            {"scan_id": ["a", "b"], "subject_id": ["s1", "s2"], "session_id": ["s1", "s2"], "path": ["/a", "/b"],
             "age": [70, 65], "sex": ["F", "M"], "group": [None, None], "cdr": [None, None]} | changes
        )  # fmt: skip  # columns grouped in rows
        frame.to_csv(tmp / "manifest.csv", index=False)

        def act() -> list[Problem]:
            read_manifest(tmp / "manifest.csv")
            return []

        return act

    return make


# --- permissions and disk space, in a child process ----------------------------------------------------


def _child(code: str, *, drop_root_bypass: bool = False, fsize: int | None = None) -> Action:
    """Run ``code`` in a fresh Python; it must raise InputError, which comes back as the parent's.

    ``drop_root_bypass`` takes away root's licence to ignore file permissions (``setpriv``), so a
    mode-000 file is unreadable even to root; ``fsize`` limits the size of a written file
    (``RLIMIT_FSIZE``, with SIGXFSZ ignored so that a write fails with EFBIG like a full disk).
    """
    script = textwrap.dedent(
        """
        import json, sys
        from brainage.errors import InputError
        try:
        {body}
        except InputError as error:
            print(json.dumps([error.path, error.cause]))
        """
    ).format(body=textwrap.indent(textwrap.dedent(code), "    "))
    argv = [sys.executable, "-c", script]
    if drop_root_bypass and os.geteuid() == 0:
        argv = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *argv]

    def limit() -> None:
        if fsize is not None:
            import resource

            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    def act() -> list[Problem]:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, preexec_fn=limit, check=False)
        assert result.returncode == 0 and result.stdout.strip(), f"no InputError: {result.stdout}{result.stderr}"
        raise InputError(*json.loads(result.stdout.strip().splitlines()[-1]))

    return act


def _unreadable_scan(tmp: Path) -> Action:
    path = write(tmp / "t1.nii", volume())
    path.chmod(0)
    return _child(f"from brainage.io import load_scan; load_scan({str(path)!r})", drop_root_bypass=True)


def _unreadable_sheet(tmp: Path) -> Action:
    path = tmp / "scans.csv"
    path.write_text("path,subject_id,age\na.nii,s1,70\n")
    path.chmod(0)
    return _child(f"from brainage.io.table import discover_table; discover_table(__import__('pathlib').Path({str(path)!r}))", drop_root_bypass=True)


_WRITE_MANIFEST = """
import pandas as pd
from brainage.io import write_manifest
rows = {{"scan_id": [f"s{{i}}" for i in range(200)], "subject_id": "p", "session_id": "p", "path": "/x.nii",
        "age": 70.0, "sex": "F", "group": "g", "cdr": 0.0}}
write_manifest(pd.DataFrame(rows), {path!r})
"""


def _read_only_folder(tmp: Path) -> Action:
    folder = tmp / "out"
    folder.mkdir()
    folder.chmod(0o555)
    return _child(_WRITE_MANIFEST.format(path=str(folder / "manifest.csv")), drop_root_bypass=True)


def _disk_full(tmp: Path) -> Action:
    child = _child(_WRITE_MANIFEST.format(path=str(tmp / "manifest.csv")), fsize=FSIZE_LIMIT)

    def act() -> list[Problem]:
        try:
            return child()
        finally:
            assert sorted(path.name for path in tmp.iterdir()) == [], "a failed write left a file behind"

    return act


CASES = [
    # scan files: what the header promises against the bytes on disk
    Case("missing .img", "delete the .img of a NIfTI pair", "mpr-1.nifti.hdr", "missing image file mpr-1.nifti.img beside it", _missing_img),
    Case("missing .hdr", "delete the .hdr of a NIfTI pair", "mpr-1.nifti.img", "missing header mpr-1.nifti.hdr beside it", _missing_hdr),
    Case("truncated .nii", "cut 100 bytes off a .nii", "t1.nii", "truncated: ", _truncated_nii),
    Case("truncated .img", "cut a pair's .img to 200 bytes", "mpr-1.nifti.img", "truncated: 200 bytes of data where the header needs", _truncated_img),
    Case("truncated .nii.gz", "cut a .nii.gz in half", "t1.nii.gz", "truncated: the gzip stream ends after", _truncated_gz),
    Case("corrupt .nii.gz", "noise over a .nii.gz's compressed bytes past the 200th", "t1.nii.gz", "corrupt gzip data", _corrupt_gz),
    Case("longer .nii", "append 64 bytes to a .nii", "t1.nii", "size mismatch: ", _longer("t1.nii", "t1.nii", 64)),
    Case("longer .img", "append 4 bytes to a pair's .img", "mpr-1.nifti.img", "size mismatch: ", _longer("mpr-1.nifti.hdr", "mpr-1.nifti.img", 4)),
    Case("huge file", "extend a .nii to 4 GiB (sparse)", "t1.nii", "size mismatch: 4294967296 bytes", _sparse_huge),
    Case("huge header", "a header promising 30000³ int16 voxels", "t1.nii", "where the header needs 54000000000352", _huge_header),
    Case("empty file", "a 0-byte .nii", "t1.nii", "unreadable image header", _bytes("t1.nii", b"")),
    Case("empty .nii.gz", "a 0-byte .nii.gz", "t1.nii.gz", "unreadable image header", _bytes("t1.nii.gz", b"")),
    Case("not an image", "text saved as .nii", "noise.nii", "unreadable image header", _bytes("noise.nii", b"not an image at all" * 30)),
    Case("unsupported type", "a .png", "scan.png", "unsupported file type", _bytes("scan.png", b"\x89PNG")),
    Case("absent file", "a path to nothing", "nowhere.nii.gz", "file not found", lambda tmp: both_readers(tmp / "nowhere.nii.gz")),
    Case("a folder", "a folder named t1.nii", "t1.nii", "a folder, not an image file", _folder),
    Case("2-D image", "an 8×8 image", "slice.nii", "is 2-D", _shaped("slice.nii", (8, 8))),
    Case("one slice", "an 8×8×1 image", "slice.nii", "is 2-D", _shaped("slice.nii", (8, 8, 1))),
    Case("4-D image", "3 volumes of 8×8×6", "bold.nii.gz", "has 3 volumes", _shaped("bold.nii.gz", (*SHAPE, 3))),
    Case("5-D image", "8×8×6×1×2 (two components)", "field.nii.gz", "shape (8, 8, 6, 1, 2) has 2 volumes", _shaped("field.nii.gz", (*SHAPE, 1, 2))),
    # scan content, found when the voxels are read
    Case("all NaN", "every voxel NaN", "t1.nii.gz", "no finite voxel value", _filled(math.nan)),
    Case("all Inf", "every voxel +Inf", "t1.nii.gz", "no finite voxel value", _filled(math.inf)),
    Case("constant", "every voxel 7", "t1.nii.gz", "constant image (every voxel is 7)", _filled(7.0)),
    # scans that are read but cannot give a brain age (preprocess/adequacy.py; more reasons come after registration)
    Case("clinical slab", "25 axial slices of 6.5 mm, 1 mm in plane", "slab.nii.gz", "not adequate for brain age: thick slices: 6.5 mm along axis 3", _inadequate("slab.nii.gz", (180, 220, 25), (1.0, 1.0, 6.5))),
    Case("brain crop", "a 33×41×25 crop of 1 mm voxels", "crop.nii.gz", "field of view 33 × 41 × 25 mm cannot hold a whole brain", _inadequate("crop.nii.gz", (33, 41, 25), (1.0, 1.0, 1.0))),
    Case("coarse voxels", "24³ voxels of 7 mm", "coarse.nii.gz", "voxels too coarse: 7 mm along axis 1, 7 mm along axis 2, 7 mm along axis 3 (at most 6 mm)", _inadequate("coarse.nii.gz", (24, 24, 24), (7.0, 7.0, 7.0))),
    # spreadsheets: OASIS-2 demographics (fatal for the file; a row's problem leaves that row out)
    Case("sheet without Age", "drop the Age column (.xlsx)", "oasis_longitudinal_demographics.xlsx", "missing column(s): Age", _sheet([oasis_row()], ".xlsx", drop=("Age",))),
    Case("sheet without MRI ID", "drop the MRI ID column (.csv)", "oasis_longitudinal_demographics.csv", "missing column(s): MRI ID", _sheet([oasis_row()], drop=("MRI ID",))),
    Case("damaged .xlsx", "text saved as .xlsx", "demographics.xlsx", "cannot read the table", _sheet_bytes("demographics.xlsx", b"this is no zip archive")),
    Case("empty spreadsheet", "a 0-byte .csv", "demographics.csv", "cannot read the table", _sheet_bytes("demographics.csv", b"")),
    Case("header only", "the 15 column names, no row", "demographics.csv", "no data rows", _sheet_bytes("demographics.csv", ",".join(DEMOGRAPHICS_COLUMNS).encode() + b"\n")),
    Case("duplicated MRI ID", "two rows for OAS2_0001_MR1", "oasis_longitudinal_demographics.csv", "duplicate MRI ID OAS2_0001_MR1 (rows 2, 3): left out", _sheet([oasis_row(), oasis_row(Age=76)])),
    Case("missing age", "an empty Age cell", "oasis_longitudinal_demographics.csv", "row 2 (OAS2_0001_MR1): missing age", _sheet([oasis_row(Age=None)])),
    Case("non-numeric age", "Age 'seventy'", "oasis_longitudinal_demographics.csv", "non-numeric age 'seventy'", _sheet([oasis_row(Age="seventy")])),
    Case("age out of range", "Age 200", "oasis_longitudinal_demographics.csv", "age 200 is outside 0–130 years", _sheet([oasis_row(Age=200)])),
    Case("infinite age", "Age 'inf'", "oasis_longitudinal_demographics.csv", "age inf is not finite", _sheet([oasis_row(Age="inf")])),
    Case("non-numeric MMSE", "MMSE 'n.d.'", "oasis_longitudinal_demographics.csv", "non-numeric MMSE 'n.d.'", _sheet([oasis_row(MMSE="n.d.")])),
    Case("missing Subject ID", "an empty Subject ID cell", "oasis_longitudinal_demographics.csv", "missing Subject ID", _sheet([oasis_row(**{"Subject ID": None})])),
    Case("sex coded 1/2", "M/F holding 1 and 2", "oasis_longitudinal_demographics.csv", "column M/F: no value reads as M or F (found '1', '2')", _sheet([oasis_row(**{"M/F": 1}), oasis_row("OAS2_0002_MR1", **{"M/F": 2})])),
    Case("two sex columns", "M/F and a copy headed Gender", "oasis_longitudinal_demographics.csv", "columns M/F, Gender all hold M/F: keep one", _sheet([oasis_row() | {"Gender": "F"}])),
    # a CSV of scans, BIDS, a manifest
    Case("table without subject_id", "a scan CSV of path and age only", "scans.csv", "missing column(s): subject_id", _scan_table({"path": ["a.nii.gz"], "age": [50]})),
    Case("table row without path", "an empty path cell", "scans.csv", "row 2: missing path", _scan_table({"path": [None], "subject_id": ["s1"], "age": [50]})),
    Case("table with negative age", "age -4", "scans.csv", "row 2 (a.nii.gz): age -4 is outside 0–130 years", _scan_table({"path": ["a.nii.gz"], "subject_id": ["s1"], "age": [-4]})),
    Case("unsupported table", "a scan list saved as .txt", "scans.txt", "unsupported table type", _unsupported_table),
    Case("BIDS without ages", "sub-01/anat/sub-01_T1w.nii.gz, no participants.tsv", "participants.tsv", "file not found: BIDS ages come from", _bids_without_participants),
    Case("duplicated scan_id", "a manifest with scan_id a twice", "manifest.csv", "duplicate scan_id: a", _manifest({"scan_id": ["a", "a"]})),
    Case("non-numeric cdr", "a manifest with cdr 'mild'", "manifest.csv", "non-numeric cdr value 'mild'", _manifest({"cdr": ["mild", None]})),
    # permissions and disk space
    Case("unreadable scan", "chmod 000 a .nii (root's bypass dropped with setpriv)", "t1.nii", "cannot read the file (Permission denied)", _unreadable_scan),
    Case("unreadable table", "chmod 000 a scan CSV", "scans.csv", "cannot read the table (Permission denied)", _unreadable_sheet),
    Case("read-only folder", "write a manifest into a chmod 555 folder", "out/manifest.csv", "cannot write the manifest (Permission denied)", _read_only_folder),
    Case("disk full", f"write a 200-row manifest under RLIMIT_FSIZE = {FSIZE_LIMIT} bytes", "manifest.csv", "cannot write the manifest (File too large)", _disk_full),
]  # fmt: skip  # a table: one case per line


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_gets_its_one_line_error(tmp_path: Path, case: Case) -> None:
    act = case.make(tmp_path)
    try:
        problems = act()
    except InputError as error:
        found = [(error.path, error.cause)]
        assert "\n" not in str(error) and str(error) == f"{error.path}: {error.cause}"
    else:
        found = [(problem.path, problem.cause) for problem in problems]
    named = str(tmp_path / case.names)
    assert any(path == named and case.cause in cause for path, cause in found), f"expected {named}: …{case.cause}…, got {found}"
    assert all("\n" not in cause for _, cause in found)


def table() -> str:
    """The Markdown table of :data:`CASES`, between its markers."""
    lines = [BEGIN, "", f"The tests feed **{len(CASES)} bad inputs**; each gets this one-line error (`<file>: <cause>`, cause abridged):", ""]
    lines += ["| # | bad input | how the test makes it | the error names | its cause contains |", "| --- | --- | --- | --- | --- |"]
    for number, case in enumerate(CASES, 1):
        cells = [str(number), case.name, case.made, f"`{case.names}`", f"`{case.cause}`"]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join([*lines, "", END])


def test_the_troubleshooting_table_lists_every_case() -> None:
    text = TROUBLESHOOTING.read_text(encoding="utf-8")
    found = re.search(re.escape(BEGIN) + ".*?" + re.escape(END), text, re.DOTALL)
    assert found is not None, f"{TROUBLESHOOTING}: no bad-input table; run .venv/bin/python tests/test_bad_input.py"
    assert found[0] == table(), f"{TROUBLESHOOTING}: the bad-input table is stale; run .venv/bin/python tests/test_bad_input.py"
    assert len(CASES) >= 25 and len({case.name for case in CASES}) == len(CASES)


def main() -> None:
    """Write the bad-input table into docs/troubleshooting.md (replacing the old one, else appending it)."""
    argparse.ArgumentParser(description=main.__doc__).parse_args()
    text = TROUBLESHOOTING.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
    new = pattern.sub(lambda _: table(), text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + table() + "\n"
    TROUBLESHOOTING.write_text(new, encoding="utf-8")


if __name__ == "__main__":
    main()
