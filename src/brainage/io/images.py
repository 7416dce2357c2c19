"""Reading one structural scan: NIfTI (.nii, .nii.gz), Analyze/NIfTI pairs (.hdr + .img), MGZ.

``check_scan_file`` reads only the header and compares the size it promises with the bytes on
disk (cheap enough to run on every scan of a cohort); ``load_scan`` also reads the voxels and
rejects images without usable content.

Orientation is never assumed silently: an Analyze 7.5 header has no field for it, and a NIfTI
header whose ``qform_code`` and ``sform_code`` are both 0 declares none; nibabel then takes the
voxel axes as left, anterior, superior (``LAS``, Analyze's radiological default), and
:func:`load_scan` warns (:class:`OrientationWarning`) naming that assumption. Whether it holds is
judged after registration: a swapped or reversed axis leaves the brain on its side, which the
registration score flags or, where a rearranged copy fits the template clearly better, the
orientation check refuses (:func:`brainage.preprocess.qc.orientation_check`); a left–right mirror
cannot be seen against the symmetric template.

Storage conventions of the OASIS data sets. OASIS-2's RAW scans (``mpr-n.nifti.hdr``) are NIfTI-1
pairs whose qform gives the orientation (sagittal, voxel axes posterior, inferior, right: PIR,
256 × 256 × 128 voxels of 1 × 1 × 1.25 mm, as docs/preprocessing.md records); nothing is assumed. OASIS-1's RAW scans
(``OAS1_xxxx_MRy_mpr-n_anon.hdr``) are Analyze 7.5 pairs (16-bit big-endian) of the same sagittal
MP-RAGE geometry, 256 × 256 × 128 voxels of 1 × 1 × 1.25 mm (the OASIS-1 fact sheet, as summarised
at huggingface.co/DRDMsig/Data_Engineering, OAISIS_clean/dataclean_OASIS_1_CS_Sectional.py; the
fact sheet itself was not reachable from here), and their headers hold no orientation. nibabel's
default would take the 128 sagittal slices for axial ones; such files are read as OASIS-2 stores
the same acquisition, PIR (:data:`OASIS1_RAW_STORAGE`), and the warning names that convention.
Which way left and right run cannot be checked from the image (see above).
"""

from __future__ import annotations

import gzip
import math
import re
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.spatialimages import SpatialImage

from brainage.errors import InputError

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".hdr", ".img", ".mgz")
_GZIP_CHUNK = 1 << 20


#: OASIS-1 RAW file names, and the voxel axes their Analyze headers leave out (those of OASIS-2's RAW
#: NIfTI headers for the same acquisition: sagittal, posterior, inferior, right).
OASIS1_RAW_NAME = re.compile(r"^OAS1_\d+_MR\d+_mpr-\d+_anon$", re.IGNORECASE)
OASIS1_RAW_STORAGE = "PIR"


class OrientationWarning(UserWarning):
    """The file's header does not say how its voxel axes lie in the head; a convention was taken."""


@dataclass(frozen=True, eq=False)
class Scan:
    """A 3-D image in memory: float32 voxels, nibabel's best affine and the voxel size in mm."""

    path: Path
    data: np.ndarray
    affine: np.ndarray
    zooms: tuple[float, float, float]


def image_suffix(path: str | Path) -> str | None:
    """The supported image suffix that ``path`` ends with (lower case), or None."""
    name = Path(path).name.lower()
    return next((suffix for suffix in IMAGE_SUFFIXES if name.endswith(suffix)), None)


def scan_stem(path: str | Path) -> str:
    """The file name without its image suffix (and OASIS's ``.nifti``): ``mpr-1.nifti.hdr`` → ``mpr-1``."""
    name = Path(path).name
    suffix = image_suffix(name)
    stem = name[: len(name) - len(suffix)] if suffix else name
    return stem[: -len(".nifti")] if stem.lower().endswith(".nifti") else stem


def pair_partner(path: str | Path) -> Path:
    """The other file of a ``.hdr``/``.img`` pair, keeping the case of the given suffix."""
    path = Path(path)
    partner = ".img" if path.suffix.lower() == ".hdr" else ".hdr"
    return path.with_suffix(partner.upper() if path.suffix.isupper() else partner)


def header_of(path: str | Path) -> Path:
    """The ``.hdr`` of a pair given by its ``.img`` when that header exists; any other path as is."""
    path = Path(path)
    if image_suffix(path) == ".img" and pair_partner(path).is_file():
        return pair_partner(path)
    return path


def check_scan_file(path: str | Path) -> None:
    """Raise :class:`InputError` unless ``path`` is a readable 3-D image whose data size matches its header.

    Reads the header only (and, for gzip files, the stored uncompressed length), never the voxels.
    """
    _open_header(Path(path))


def load_scan(path: str | Path) -> Scan:
    """Load a 3-D scan as float32; non-finite voxels become 0.

    Raises :class:`InputError` (naming the file and the cause) for a missing or unsupported
    file, a missing pair partner, a truncated or oversized file, data that is not 3-D, and an
    image with no finite voxel or a constant one.
    """
    path = Path(path)
    image, shape = _open_header(path)
    try:
        data = image.get_fdata(dtype=np.float32).reshape(shape)
    except (OSError, ValueError, EOFError, zlib.error) as error:
        raise InputError(path, f"cannot read the image data ({_one_line(error)})") from None
    finite = np.isfinite(data)
    if finite.all():
        low, high = data.min(), data.max()
    elif finite.any():
        values = data[finite]
        low, high = values.min(), values.max()
        data[~finite] = 0.0
    else:
        raise InputError(path, "no finite voxel value (the image is all NaN or infinite)")
    if low == high:
        raise InputError(path, f"constant image (every voxel is {low:g})")
    zx, zy, zz = (float(zoom) for zoom in image.header.get_zooms()[:3])
    zooms = (zx, zy, zz)
    affine = np.asarray(image.affine, dtype=np.float64)
    assumed = assumed_orientation(image)
    if assumed is not None and OASIS1_RAW_NAME.match(scan_stem(path)):
        affine = storage_affine(OASIS1_RAW_STORAGE, shape, zooms)
        assumed = f"{assumed.split(';')[0]}; read as OASIS-1 RAW scans are stored, {_described(OASIS1_RAW_STORAGE)}"
    if assumed is not None:
        warnings.warn(f"{path}: {assumed}", OrientationWarning, stacklevel=2)
    return Scan(path=path, data=data, affine=affine, zooms=zooms)


def storage_affine(codes: str, shape: tuple[int, ...], zooms: tuple[float, ...]) -> np.ndarray:
    """Voxel → world (RAS mm) affine of voxel axes pointing along ``codes`` (e.g. ``"PIR"``), with
    ``zooms`` mm voxels and the centre of the field of view at the origin."""
    ornt = nib.orientations.axcodes2ornt(tuple(codes))
    affine = np.zeros((4, 4))
    for axis, (world, sign) in enumerate(ornt):
        affine[int(world), axis] = sign * zooms[axis]
    affine[3, 3] = 1.0
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape[:3]) - 1) / 2)
    return affine


def assumed_orientation(image: SpatialImage | str | Path) -> str | None:
    """Why the orientation of ``image`` (an image or a file) is an assumption, naming the one nibabel
    takes; None when the header gives it (NIfTI with a qform or sform code, MGH)."""
    if not isinstance(image, SpatialImage):
        try:
            loaded = nib.load(image)
        except Exception:  # unreadable: the readers say why
            return None
        if not isinstance(loaded, SpatialImage):
            return None
        image = loaded
    header = image.header
    if isinstance(header, nib.Nifti1Header):  # NIfTI-2's header is a subclass
        if int(header["qform_code"]) or int(header["sform_code"]):
            return None
        kind = "NIfTI header with qform_code = sform_code = 0"
    elif isinstance(header, nib.analyze.AnalyzeHeader):
        kind = "Analyze 7.5 header"
    else:
        return None
    return f"{kind}: no orientation stored; assumed {_described(''.join(nib.aff2axcodes(image.affine)))}; wrong if the scan was stored otherwise"


def _described(codes: str) -> str:
    return f"{codes} (voxel axes 1, 2, 3 pointing {', '.join(_AXIS_WORDS[code] for code in codes)})"


_AXIS_WORDS = {"L": "left", "R": "right", "A": "anterior", "P": "posterior", "S": "superior", "I": "inferior"}


def _open_header(path: Path) -> tuple[SpatialImage, tuple[int, int, int]]:
    """Open ``path`` lazily and validate it; return the image and its 3-D shape."""
    suffix = image_suffix(path)
    if suffix is None:
        raise InputError(path, f"unsupported file type (expected one of {', '.join(IMAGE_SUFFIXES)})")
    if path.is_dir():
        raise InputError(path, "a folder, not an image file")
    if not path.is_file():
        raise InputError(path, "file not found")
    if suffix in (".hdr", ".img"):
        partner = pair_partner(path)
        if not partner.is_file():
            role = "image file" if suffix == ".hdr" else "header"
            raise InputError(path, f"missing {role} {partner.name} beside it")
    try:
        path.open("rb").close()  # nibabel reports an unreadable file as one of unknown type
    except OSError as error:
        raise InputError(path, f"cannot read the file ({error.strerror})") from None
    try:
        image = nib.load(path, mmap=False)
    except Exception as error:
        if _is_gzip(path):
            _data_length(path, expected=-1)  # a cut gzip stream is the likelier cause: say so
        raise InputError(path, f"unreadable image header ({_one_line(error)})") from None
    if not isinstance(image, SpatialImage):
        raise InputError(path, f"not a volume image ({type(image).__name__})")
    full_shape = tuple(int(n) for n in image.shape)
    shape = _spatial_shape(path, full_shape)
    proxy: Any = image.dataobj  # an ArrayProxy, as the image was read from a file
    expected = int(proxy.offset) + math.prod(full_shape) * np.dtype(proxy.dtype).itemsize
    data_file = Path(image.file_map["image"].filename or path)
    actual = _data_length(data_file, expected)
    if actual < expected:
        raise InputError(data_file, f"truncated: {actual} bytes of data where the header needs {expected}")
    if actual > expected and suffix != ".mgz":  # MGH files may carry a footer after the voxels
        raise InputError(data_file, f"size mismatch: {actual} bytes where the header describes {expected}")
    return image, shape


def _spatial_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Drop trailing singleton axes beyond the third; reject anything that is not a 3-D volume."""
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 3:
        raise InputError(path, f"not a 3-D image: shape {shape} has {math.prod(shape[3:])} volumes")
    if len(shape) < 3 or min(shape) < 2:
        raise InputError(path, f"not a 3-D image: shape {shape} is 2-D")
    x, y, z = shape
    return x, y, z


def _data_length(path: Path, expected: int) -> int:
    """Bytes of (uncompressed) data in ``path``; gzip streams are fully read only when the trailer disagrees."""
    if not _is_gzip(path):
        return path.stat().st_size
    with path.open("rb") as handle:
        handle.seek(0, 2)
        if handle.tell() >= 18:  # smallest gzip member; its last 4 bytes are the length mod 2**32
            handle.seek(-4, 2)
            if int.from_bytes(handle.read(4), "little") == expected % 2**32:
                return expected
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(_GZIP_CHUNK):
                total += len(chunk)
    except EOFError:
        raise InputError(path, f"truncated: the gzip stream ends after {total} bytes") from None
    except (OSError, zlib.error) as error:
        raise InputError(path, f"corrupt gzip data ({_one_line(error)})") from None
    return total


def _is_gzip(path: Path) -> bool:
    return path.name.lower().endswith((".gz", ".mgz"))


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
