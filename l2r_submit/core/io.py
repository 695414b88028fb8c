"""All file I/O of l2r_submit: volumes in, displacement fields out and back in.

Nothing else in the package touches nibabel or SimpleITK. Arrays come back in the axis order
``nibabel.load(f).get_fdata()`` gives (see :mod:`l2r_submit.core.contract`); files read with SimpleITK
(z, y, x arrays) are transposed to that order.

Displacement files (one per pair, fixed grid, voxel units, pull map):

========  ===============================  ===========================================================
format    on disk                          notes
========  ===============================  ===========================================================
nii.gz    (I, J, K, 3) float32             identity affine, channel last (2022+ evaluator)
npz       (I, J, K, 3) float32, ``arr_0``  exactly one array; read: any key (2025 evaluator) or
                                           ``arr_0`` (2022-2024), non-float32 cast to float32
npz2020   (3, I/2, J/2, K/2) float16       ``arr_0``, channel first, half resolution, values still in
                                           full-resolution voxels (2020/2021 evaluator)
========  ===============================  ===========================================================

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
from typing import Callable, Sequence

import numpy as np

from .contract import check_disp_array
from .format2020 import downsample_2020, upsample_2020
from .gzip_codec import decompress_errors, gzip_compress, gzip_decompress, write_gzip  # noqa: F401

FORMATS = ("nii.gz", "npz", "npz2020")
NAME_STYLES = ("long", "short", "both")
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


def _fail(path: Path | str, problem: str) -> ValueError:
    return ValueError(f"{path}: {problem}")


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
        raise _fail(path, "cannot be read: empty file")
    if not path.name.lower().endswith(".gz"):
        with _quiet_nibabel():
            return nib.load(str(path))
    data = path.read_bytes()  # an OSError here (permissions, ...) is not a corrupt stream: callers wrap it
    try:
        raw = gzip_decompress(data)
    except (gzip.BadGzipFile, EOFError, zlib.error, *decompress_errors()) as exc:
        raise _fail(path, f"cannot be read: corrupt gzip stream ({type(exc).__name__}: {exc})") from None
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
        raise _fail(path, "file not found")
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
            raise _fail(path, "unknown volume format (expected .nii.gz, .nii, .mha, .nrrd or a DICOM folder)")
    except ValueError:
        raise
    except Exception as exc:  # nibabel/SimpleITK/zlib raise many types for corrupt files
        raise _fail(path, f"cannot be read ({type(exc).__name__}: {exc})") from None
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise _fail(path, f"expected a 3-D volume, got shape {tuple(array.shape)}")
    if dtype is not None:
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported below, not warned
            cast = array.astype(dtype)
        if np.issubdtype(cast.dtype, np.floating) and not np.isfinite(cast).all() and np.isfinite(array).all():
            peak = float(np.abs(array).max())
            raise _fail(path, f"values overflow {np.dtype(dtype).name} (largest magnitude {peak:.3g})")
        array = cast
    return Volume(np.asarray(array), affine)


def _read_itk(path: Path, dicom: bool) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    if dicom:
        reader = sitk.ImageSeriesReader()
        files = reader.GetGDCMSeriesFileNames(str(path))
        if not files:
            raise _fail(path, "folder holds no DICOM series")
        reader.SetFileNames(files)
        img = reader.Execute()
    else:
        img = sitk.ReadImage(str(path))
    if img.GetDimension() != 3:
        raise _fail(path, f"expected a 3-D volume, got {img.GetDimension()}-D")
    array = sitk.GetArrayFromImage(img).transpose(2, 1, 0)  # (z, y, x) -> (x, y, z)
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(img.GetSpacing())[None, :]
    affine[:3, 3] = img.GetOrigin()
    affine[:2] *= -1.0  # ITK world is LPS, NIfTI world is RAS
    return array, affine


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """Read a label map as a C-contiguous (I, J, K) integer array: int32, or int64 when a value does
    not fit in 32 bits (never wrapped: a label of 2**32 + 1 must not become label 1).

    Raises:
        ValueError: unreadable file, or values that are not whole numbers.
    """
    vol = read_volume(path)
    arr = vol.array
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
            raise _fail(path, "label map holds non-integer or non-finite values")
        if arr.size and (arr.min() < -2.0**63 or arr.max() >= 2.0**63):
            raise _fail(path, "label map holds values beyond 64-bit integers")
    elif not np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_:
        raise _fail(path, f"label map of dtype {arr.dtype}: expected integers")
    info = np.iinfo(np.int32)
    fits = arr.size == 0 or (arr.min() >= info.min and arr.max() <= info.max)
    if not fits and np.issubdtype(arr.dtype, np.unsignedinteger) and arr.max() > np.iinfo(np.int64).max:
        raise _fail(path, "label map holds values beyond 64-bit integers")
    return np.ascontiguousarray(arr, dtype=np.int32 if fits else np.int64)


def write_label_map(labels: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a uint8 label map as NIfTI with ``affine`` (the image's), atomically.

    Shape: (I, J, K) integers in 0..255.

    Raises:
        ValueError: not 3-D or values outside 0..255. OSError: the write failed (nothing left behind).
    """
    labels = np.asarray(labels)
    if labels.ndim != 3 or (labels.size and (labels.min() < 0 or labels.max() > 255)):
        raise _fail(path, f"label map of shape {labels.shape}, values {labels.min()}..{labels.max()}: "
                          "expected (I, J, K) in 0..255")
    return write_volume(path, labels.astype(np.uint8), affine)


# ------------------------------------------------------------------------------------------- names


def disp_names(fixed_id: str, moving_id: str, names: str = "long",
               fixed_modality: str = "0000", moving_modality: str = "0000") -> list[str]:
    """File stems for one pair: ``disp_FFFF_0000_MMMM_0000`` (long), ``disp_FFFF_MMMM`` (short) or both.

    Raises:
        ValueError: unknown name style, or ids that are not four digits.
    """
    if names not in NAME_STYLES:
        raise ValueError(f"names: '{names}' received, expected one of {', '.join(NAME_STYLES)}")
    for value in (fixed_id, moving_id, fixed_modality, moving_modality):
        if len(value) != 4 or not value.isdigit():
            raise ValueError(f"case id or modality '{value}' is not four digits")
    long = f"disp_{fixed_id}_{fixed_modality}_{moving_id}_{moving_modality}"
    short = f"disp_{fixed_id}_{moving_id}"
    return {"long": [long], "short": [short], "both": [long, short]}[names]


def disp_extension(fmt: str) -> str:
    """File extension for a format name (``npz2020`` is an ``.npz`` file too)."""
    if fmt not in FORMATS:
        raise ValueError(f"format: '{fmt}' received, expected one of {', '.join(FORMATS)}")
    return ".nii.gz" if fmt == "nii.gz" else ".npz"


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


def write_disp(disp: np.ndarray, out_dir: str | os.PathLike, fixed_id: str, moving_id: str,
               fmt: str = "nii.gz", names: str = "long", fixed_modality: str = "0000",
               moving_modality: str = "0000") -> list[Path]:
    """Write one pair's field in an official format, atomically, under each requested name.

    Args:
        disp: (3, I, J, K) float32, voxels, pull map on the fixed grid.
        out_dir: destination folder (created if needed).
        fixed_id, moving_id: four-digit case ids.
        fmt: ``nii.gz``, ``npz`` or ``npz2020``.
        names: ``long``, ``short`` or ``both``.
        fixed_modality, moving_modality: the cases' modality indices (``0000``, ``0001``...), part of the names.

    Returns:
        The paths written.

    Raises:
        ValueError: a field that breaks the contract, or an unknown format or name style.
    """
    check_disp_array(disp)
    ext = disp_extension(fmt)
    stems = disp_names(fixed_id, moving_id, names, fixed_modality, moving_modality)
    if fmt == "nii.gz":
        import nibabel as nib

        data = np.ascontiguousarray(np.moveaxis(disp.astype(np.float32), 0, -1))

        def write(tmp: str) -> None:  # the bytes nib.save writes, compressed faster (gzip_compress)
            write_gzip(tmp, nib.Nifti1Image(data, np.eye(4)).to_bytes())
    else:
        data = downsample_2020(disp) if fmt == "npz2020" else np.moveaxis(disp.astype(np.float32), 0, -1)

        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, arr_0=data)

    out = Path(out_dir)
    first = atomic_write(out / (stems[0] + ext), write)
    written = [first]
    for stem in stems[1:]:  # further names: a hard link (or copy), renamed into place
        def link(tmp: str) -> None:
            os.unlink(tmp)
            try:
                os.link(first, tmp)
            except OSError:
                import shutil

                shutil.copyfile(first, tmp)
        written.append(atomic_write(out / (stem + ext), link))
    return written


def write_volume(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write a 3-D volume as NIfTI (``.nii.gz`` compressed) with ``affine``, atomically, in ``array``'s dtype.

    Shape: (I, J, K) array, (4, 4) voxel-to-RAS affine (mm).

    Raises:
        OSError: the write failed (nothing is left under ``path``).
    """
    import nibabel as nib

    image = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64))
    return atomic_write(path, lambda tmp: nib.save(image, tmp))


# ------------------------------------------------------------------------------------------- read


def read_disp(path: str | os.PathLike, spatial_shape: Sequence[int], protocol: str = "2025") -> np.ndarray:
    """Read one displacement file as the official evaluator version ``protocol`` would.

    2022+ versions (see :mod:`l2r_submit.core.versions`): ``.nii.gz`` through ``get_fdata()`` (float64), or
    ``.npz`` holding one full-resolution array (any key for ``2025``, the key ``arr_0`` for ``2024``
    and ``2022``) cast to float32 as the official loader does (complex values are refused: a cast
    would drop the imaginary part). ``2020``: an ``.npz`` with a float16 (3, I/2, J/2, K/2) array
    under ``arr_0``, upsampled by :func:`upsample_2020`.

    Shape: file (I, J, K, 3) (2020: (3, I/2, J/2, K/2)) -> (3, I, J, K).

    Returns:
        (3, I, J, K) field (a channel-first view of the file's channel-last data for 2022+).

    Raises:
        ValueError: missing or corrupt file, wrong format for the protocol, wrong shape or dtype, NaNs.
    """
    from .versions import get as get_version

    version = get_version(protocol)
    path = Path(path)
    full = tuple(int(n) for n in spatial_shape)
    if not path.is_file():
        raise _fail(path, "displacement file not found")
    name = path.name.lower()
    if version.half_resolution:
        arr = _read_npz(path, any_key=False)
        half = tuple(n // 2 for n in full)
        if arr.dtype != np.float16:
            raise _fail(path, f"dtype {arr.dtype} received, the 2020 format expects float16")
        if arr.shape != (3, *half):
            raise _fail(path, f"shape {arr.shape} received, the 2020 format expects {(3, *half)}")
        if not np.isfinite(arr).all():
            raise _fail(path, "field holds NaN or inf values")
        return upsample_2020(arr)
    if name.endswith(".nii.gz"):
        try:
            arr = load_nifti(path).get_fdata()
        except ValueError as exc:
            if str(exc).startswith(str(path)):
                raise
            raise _fail(path, f"cannot be read ({type(exc).__name__}: {exc})") from None
        except Exception as exc:
            raise _fail(path, f"cannot be read ({type(exc).__name__}: {exc})") from None
    elif name.endswith(".npz"):
        arr = _read_npz(path, any_key=version.npz_any_key)
        if np.iscomplexobj(arr):
            raise _fail(path, f"dtype {arr.dtype} received: a displacement field must hold real numbers")
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise _fail(path, f"dtype {arr.dtype} received: a displacement field must hold numbers")
        if arr.dtype != np.float32:
            arr = arr.astype(np.float32)  # as the official loader (utils.load_disp) does
    else:
        raise _fail(path, "a displacement field must be a .nii.gz or .npz file")
    if arr.shape != (*full, 3):
        hint = ""
        if arr.shape == (3, *full):
            hint = " (channel-first; the official format is channel-last (I, J, K, 3))"
        elif arr.ndim == 4 and arr.shape[0] == 3:
            hint = (" (channel-first at another size; a half-resolution 2020 field is read only with "
                    "--protocol 2020)")
        raise _fail(path, f"shape {arr.shape} received, expected {(*full, 3)}{hint}")
    disp = np.moveaxis(arr, -1, 0)
    try:
        check_disp_array(disp, full, name=str(path))
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    return disp


def _read_npz(path: Path, any_key: bool) -> np.ndarray:
    """The field array of an .npz file.

    ``any_key``: the single array under whatever key (evaluator 2025-02-10, 8847509: more than one
    array is an error). Otherwise the array ``arr_0`` (evaluators 2023-06-28 to 2025-02-10 read
    ``np.load(f)['arr_0']``; other arrays beside it are ignored, as there).
    """
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise _fail(path, "not an .npz archive (it holds a bare .npy array or text); "
                              "write it with numpy.savez_compressed")
        with loaded as npz:
            keys = list(npz.keys())
            if any_key:
                if len(keys) != 1:
                    raise _fail(path, f"an .npz field must hold exactly one array, found {len(keys)}: {keys}")
                return npz[keys[0]]
            if "arr_0" not in keys:
                raise _fail(path, f"this evaluator version reads the array 'arr_0', found {keys} "
                                  f"(the 2025 evaluator, --protocol 2025, takes any single key)")
            return npz["arr_0"]
    except ValueError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise _fail(path, f"cannot be read ({type(exc).__name__}: {exc})") from None
    except Exception as exc:  # zipfile, zlib, OSError, EOFError... on damaged files
        raise _fail(path, f"cannot be read ({type(exc).__name__}: {exc})") from None
