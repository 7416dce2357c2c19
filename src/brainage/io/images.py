"""Reading one structural scan: NIfTI (.nii, .nii.gz), Analyze/NIfTI pairs (.hdr + .img), MGZ.

``check_scan_file`` reads only the header and compares the size it promises with the bytes on
disk (cheap enough to run on every scan of a cohort); ``load_scan`` also reads the voxels and
rejects images without usable content.
"""

from __future__ import annotations

import gzip
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.spatialimages import SpatialImage

from brainage.errors import InputError

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".hdr", ".img", ".mgz")
_GZIP_CHUNK = 1 << 20


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
    zooms = tuple(float(zoom) for zoom in image.header.get_zooms()[:3])
    return Scan(path=path, data=data, affine=np.asarray(image.affine, dtype=np.float64), zooms=zooms)


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
    full_shape = tuple(int(n) for n in image.shape)
    shape = _spatial_shape(path, full_shape)
    proxy = image.dataobj
    expected = int(proxy.offset) + math.prod(full_shape) * np.dtype(proxy.dtype).itemsize
    data_file = Path(image.file_map["image"].filename)
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
    return shape  # type: ignore[return-value]


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
