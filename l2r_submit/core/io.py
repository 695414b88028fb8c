"""All file I/O of l2r_submit: volumes and label maps in and out, and the atomic write every file goes through.

Nothing else in the package touches nibabel or SimpleITK, except :mod:`l2r_submit.core.disp_files` for
field files. Arrays come back in the axis order
``nibabel.load(f).get_fdata()`` gives (see :mod:`l2r_submit.core.contract`); files read with SimpleITK
(z, y, x arrays) are transposed to that order.

Displacement-field files (names, formats, the evaluators' read rules): :mod:`l2r_submit.core.disp_files`.

Every write goes to a temporary file in the destination folder and is renamed into place, so a
killed run never leaves a truncated file under a final name. Temporary files are named
``.tmp-<pid>-*``; :func:`l2r_submit.core.folders.clean_stale_tmp` removes those a dead process left behind.

Every gzip stream read here (``.nii.gz`` images, label maps and fields) is decompressed in full and its
CRC-32 and length are checked: nibabel alone reads only as many bytes as the array needs and never
reaches the gzip trailer, so a flipped byte would otherwise give a silently wrong array.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import threading
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .gzip_codec import decompress_errors, gzip_decompress

_ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")


@dataclass(frozen=True)
class Volume:
    """A volume as read from disk.

    Attributes:
        array: (I, J, K) array in nibabel axis order.
        affine: 4x4 voxel-to-RAS world matrix (mm).
    """

    array: np.ndarray
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along each array axis, in mm."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))


def one_line(message: object, limit: int | None = None) -> str:
    """A message (often a library's, over several lines) as one line: joined, not cut at its first line
    (torch's ``load_state_dict`` says what is missing only after it); at most ``limit`` characters."""
    line = " ".join(str(message).split())
    return line if limit is None or len(line) <= limit else line[:limit - 3] + "..."


def file_error(path: Path | str, problem: str) -> ValueError:
    """``PATH: problem`` on one line (a library's message over several lines is joined, not cut)."""
    return ValueError(f"{path}: {one_line(problem)}")


# ---------------------------------------------------------------------------------------------- read


def load_nifti(path: Path):
    """A nibabel image of a ``.nii`` or ``.nii.gz`` file; a gzip stream is verified (CRC-32, length) first.

    The whole file is decompressed once in memory and handed to nibabel, which costs about what
    nibabel's own decompression costs, so the check does not double the read time.

    Raises:
        ValueError: a damaged gzip stream (bad CRC, truncated, not gzip), naming the file.
        Exception: whatever nibabel raises for a malformed header (callers wrap it).
    """
    import nibabel as nib

    if path.stat().st_size == 0:
        raise file_error(path, "cannot be read: empty file")
    if not path.name.lower().endswith(".gz"):
        with _quiet_nibabel():
            return nib.load(str(path))
    data = path.read_bytes()  # an OSError here (permissions, ...) is not a corrupt stream: callers wrap it
    try:
        raw = gzip_decompress(data)
    except (gzip.BadGzipFile, EOFError, zlib.error, *decompress_errors()) as exc:
        raise file_error(path, f"cannot be read: corrupt gzip stream ({type(exc).__name__}: {exc})") from None
    klass = nib.Nifti2Image if raw[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c") else nib.Nifti1Image
    with _quiet_nibabel():
        return klass.from_bytes(raw)


_NIBABEL_LOG = threading.Lock()


@contextlib.contextmanager
def _quiet_nibabel():
    """nibabel's logger silenced (a bad header is our one-line error, not nibabel's log). nibabel's own
    suppressor takes the global logger's handlers away and puts them back, which two threads (predict's
    reader and writer) doing at once could leave removed for good: one thread at a time, under a lock."""
    import nibabel as nib

    with _NIBABEL_LOG, nib.imageglobals.LoggingOutputSuppressor():
        yield


def read_volume(path: str | os.PathLike, dtype: type | None = None) -> Volume:
    """Read a 3-D volume: NIfTI (.nii, .nii.gz), .mha/.mhd/.nrrd/.nhdr, or a DICOM series folder.

    Raises:
        ValueError: missing file, unreadable or corrupt file, not 3-D; the message names the file.
    """
    path = Path(path)
    if not path.exists():
        raise file_error(path, "file not found")
    name = path.name.lower()
    try:
        if path.is_dir():
            array, affine = _read_itk(path, dicom=True)
        elif name.endswith((".nii", ".nii.gz")):
            img = load_nifti(path)
            array = np.asanyarray(img.dataobj)
            affine = np.asarray(img.affine, dtype=np.float64)
        elif name.endswith(_ITK_SUFFIXES):
            array, affine = _read_itk(path, dicom=False)
        else:
            raise file_error(path, "unknown volume format (expected .nii.gz, .nii, .mha, .nrrd or a DICOM folder)")
    except ValueError:
        raise
    except Exception as exc:  # nibabel/SimpleITK/zlib raise many types for corrupt files
        raise file_error(path, f"cannot be read ({type(exc).__name__}: {exc})") from None
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise file_error(path, f"expected a 3-D volume, got shape {tuple(array.shape)}")
    if dtype is not None:
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported below, not warned
            cast = array.astype(dtype)
        if np.issubdtype(cast.dtype, np.floating) and not np.isfinite(cast).all() and np.isfinite(array).all():
            peak = float(np.abs(array).max())
            raise file_error(path, f"values overflow {np.dtype(dtype).name} (largest magnitude {peak:.3g})")
        array = cast
    return Volume(np.asarray(array), affine)


def volume_shape(path: str | os.PathLike) -> tuple[int, ...] | None:
    """The (I, J, K) shape a volume file declares in its header, read without its voxels: a NIfTI header (for
    ``.nii.gz``, the first bytes of the stream are decompressed), an ITK header. The voxels are not read, so
    a damaged stream behind a good header is not found here (:func:`read_volume` finds it).

    Returns:
        The shape, as :func:`read_volume` would give it (a trailing axis of 1 dropped); None for a DICOM
        folder, whose shape is known only from its files.

    Raises:
        ValueError: missing file, a header that cannot be read, not 3-D; the message names the file.
    """
    path = Path(path)
    if not path.exists():
        raise file_error(path, "file not found")
    if path.is_dir():
        return None
    name = path.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            with _quiet_nibabel():
                shape = tuple(int(n) for n in nib.load(str(path)).shape)
        elif name.endswith(_ITK_SUFFIXES):
            import SimpleITK as sitk

            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            shape = tuple(int(n) for n in reader.GetSize())  # x, y, z: read_volume's axis order
        else:
            raise file_error(path, "unknown volume format (expected .nii.gz, .nii, .mha, .nrrd or a DICOM folder)")
    except ValueError:
        raise
    except Exception as exc:  # nibabel/SimpleITK/gzip raise many types for a bad header
        raise file_error(path, f"cannot be read ({type(exc).__name__}: {exc})") from None
    if len(shape) == 4 and shape[-1] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise file_error(path, f"expected a 3-D volume, got shape {shape}")
    return shape


def _read_itk(path: Path, dicom: bool) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    if dicom:
        reader = sitk.ImageSeriesReader()
        files = reader.GetGDCMSeriesFileNames(str(path))
        if not files:
            raise file_error(path, "folder holds no DICOM series")
        reader.SetFileNames(files)
        img = reader.Execute()
    else:
        img = sitk.ReadImage(str(path))
    if img.GetDimension() != 3:
        raise file_error(path, f"expected a 3-D volume, got {img.GetDimension()}-D")
    array = sitk.GetArrayFromImage(img).transpose(2, 1, 0)  # (z, y, x) -> (x, y, z)
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(img.GetSpacing())[None, :]
    affine[:3, 3] = img.GetOrigin()
    affine[:2] *= -1.0  # ITK world is LPS, NIfTI world is RAS
    return array, affine


def check_image(path: str | os.PathLike, array: np.ndarray, shape: tuple[int, ...]) -> None:
    """An image ``array`` read from ``path`` is usable as a dataset's image: its declared shape, finite values.

    Raises:
        ValueError: another shape, or NaN or inf values (one line naming the file).
    """
    if array.shape != tuple(shape):
        raise file_error(path, f"shape {array.shape} received, the dataset declares {tuple(shape)}")
    if not np.isfinite(array).all():
        raise file_error(path, "image holds NaN or inf values")


def check_label_shape(path: str | os.PathLike, seg: np.ndarray, shape: tuple[int, ...],
                      what: str = "label map") -> None:
    """A label map (or a mask: ``what``) read from ``path`` has the dataset's shape.

    Raises:
        ValueError: another shape (one line naming the file).
    """
    check_shape(path, seg.shape, shape, what)


def check_shape(path: str | os.PathLike, found: tuple[int, ...], shape: tuple[int, ...], what: str) -> None:
    """A volume of ``path`` (an image, a label map, a mask: ``what``) has the dataset's shape; ``found`` from
    its array or its header (:func:`volume_shape`).

    Raises:
        ValueError: another shape (one line naming the file and both shapes).
    """
    if tuple(found) != tuple(shape):
        raise file_error(path, f"{what} of shape {tuple(found)}, expected {tuple(shape)} (the dataset's shape)")


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """Read a label map as a C-contiguous (I, J, K) integer array: int32, or int64 when a value does
    not fit in 32 bits (never wrapped: a label of 2**32 + 1 must not become label 1).

    Raises:
        ValueError: unreadable file, or values that are not whole numbers.
    """
    return read_label_volume(path).array


def read_label_volume(path: str | os.PathLike) -> Volume:
    """:func:`read_labels`, with the file's affine.

    Raises:
        ValueError: unreadable file, or values that are not whole numbers.
    """
    vol = read_volume(path)
    arr = vol.array
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
            raise file_error(path, "label map holds non-integer or non-finite values")
        if arr.size and (arr.min() < -2.0**63 or arr.max() >= 2.0**63):
            raise file_error(path, "label map holds values beyond 64-bit integers")
    elif not np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_:
        raise file_error(path, f"label map of dtype {arr.dtype}: expected integers")
    info = np.iinfo(np.int32)
    fits = arr.size == 0 or (arr.min() >= info.min and arr.max() <= info.max)
    if not fits and np.issubdtype(arr.dtype, np.unsignedinteger) and arr.max() > np.iinfo(np.int64).max:
        raise file_error(path, "label map holds values beyond 64-bit integers")
    return Volume(np.ascontiguousarray(arr, dtype=np.int32 if fits else np.int64), vol.affine)


def write_label_map(labels: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a uint8 label map as NIfTI with ``affine`` (the image's), atomically.

    Shape: (I, J, K) integers in 0..255.

    Raises:
        ValueError: not 3-D or values outside 0..255. OSError: the write failed (nothing left behind).
    """
    labels = np.asarray(labels)
    if labels.ndim != 3 or (labels.size and (labels.min() < 0 or labels.max() > 255)):
        raise file_error(path, f"label map of shape {labels.shape}, values {labels.min()}..{labels.max()}: "
                          "expected (I, J, K) in 0..255")
    return write_volume(path, labels.astype(np.uint8), affine)


# ------------------------------------------------------------------------------------------ write


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it to ``path``.

    The file gets the permissions of an ordinary ``open(path, "w")`` (0666 less the umask), not the
    0600 of the temporary file, so that organisers scoring as another user can read the fields.

    Raises:
        OSError: the write or rename failed (the temporary file is removed); ``filename`` is ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.getpid()}-", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno is not None:  # name the file the caller asked for
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
        raise
    return path


def write_volume(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write a 3-D volume as NIfTI (``.nii.gz`` compressed) with ``affine``, atomically, in ``array``'s dtype.

    Shape: (I, J, K) array, (4, 4) voxel-to-RAS affine (mm).

    Raises:
        OSError: the write failed (nothing is left under ``path``).
    """
    import nibabel as nib

    image = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64))
    return atomic_write(path, lambda tmp: nib.save(image, tmp))
