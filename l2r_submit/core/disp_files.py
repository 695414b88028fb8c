"""Displacement-field files: their names, writing them in an official format, reading them as an evaluator does.

Formats (one file per pair, fixed grid, voxel units, pull map):

========  ===============================  ===========================================================
format    on disk                          notes
========  ===============================  ===========================================================
nii.gz    (I, J, K, 3) float32             identity affine, channel last (2022+ evaluator)
npz       (I, J, K, 3) float32, ``arr_0``  exactly one array; read: any key (2025 evaluator) or
                                           ``arr_0`` (2022-2024), non-float32 cast to float32
npz2020   (3, I/2, J/2, K/2) float16       ``arr_0``, channel first, half resolution, values still in
                                           full-resolution voxels (2020/2021 evaluator)
========  ===============================  ===========================================================

Writes are atomic and gzip streams are checked in full, through :mod:`l2r_submit.core.io`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from . import gzip_codec, io
from .contract import check_disp_array
from .format2020 import downsample_2020, upsample_2020

FORMATS = ("nii.gz", "npz", "npz2020")
NAME_STYLES = ("long", "short", "both")


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
            gzip_codec.write_gzip(tmp, nib.Nifti1Image(data, np.eye(4)).to_bytes())
    else:
        data = downsample_2020(disp) if fmt == "npz2020" else np.moveaxis(disp.astype(np.float32), 0, -1)

        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, arr_0=data)

    out = Path(out_dir)
    first = io.atomic_write(out / (stems[0] + ext), write)
    written = [first]
    for stem in stems[1:]:  # further names: a hard link (or copy), renamed into place
        def link(tmp: str) -> None:
            os.unlink(tmp)
            try:
                os.link(first, tmp)
            except OSError:
                import shutil

                shutil.copyfile(first, tmp)
        written.append(io.atomic_write(out / (stem + ext), link))
    return written


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
        raise io.file_error(path, "displacement file not found")
    name = path.name.lower()
    if version.half_resolution:
        arr = _read_npz(path, any_key=False)
        half = tuple(n // 2 for n in full)
        if arr.dtype != np.float16:
            raise io.file_error(path, f"dtype {arr.dtype} received, the 2020 format expects float16")
        if arr.shape != (3, *half):
            raise io.file_error(path, f"shape {arr.shape} received, the 2020 format expects {(3, *half)}")
        if not np.isfinite(arr).all():
            raise io.file_error(path, "field holds NaN or inf values")
        return upsample_2020(arr)
    if name.endswith(".nii.gz"):
        try:
            img = io.load_nifti(path)
            dtype = img.get_data_dtype()
            if np.issubdtype(dtype, np.complexfloating):  # get_fdata would drop the imaginary part
                raise io.file_error(path, f"dtype {dtype} received: a displacement field must hold real numbers")
            if img.shape != (*full, 3):  # before the whole volume is read
                _shape_error(path, img.shape, full)
            arr = img.get_fdata()
        except ValueError as exc:
            if str(exc).startswith(str(path)):
                raise
            raise io.file_error(path, f"cannot be read ({type(exc).__name__}: {exc})") from None
        except Exception as exc:
            raise io.file_error(path, f"cannot be read ({type(exc).__name__}: {exc})") from None
    elif name.endswith(".npz"):
        arr = _read_npz(path, any_key=version.npz_any_key)
        if np.iscomplexobj(arr):
            raise io.file_error(path, f"dtype {arr.dtype} received: a displacement field must hold real numbers")
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise io.file_error(path, f"dtype {arr.dtype} received: a displacement field must hold numbers")
        if arr.dtype != np.float32:
            with np.errstate(over="ignore", invalid="ignore"):  # values beyond float32 become inf: refused below
                arr = arr.astype(np.float32)  # as the official loader (utils.load_disp) does
    else:
        raise io.file_error(path, "a displacement field must be a .nii.gz or .npz file")
    if arr.shape != (*full, 3):
        _shape_error(path, arr.shape, full)
    disp = np.moveaxis(arr, -1, 0)
    try:
        check_disp_array(disp, full, name=str(path))
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    return disp


def _shape_error(path: Path, shape: tuple[int, ...], full: tuple[int, ...]) -> None:
    """Raise the one-line error for a field of ``shape`` where (*full, 3) is expected, with a hint."""
    hint = ""
    if tuple(shape) == (3, *full):
        hint = " (channel-first; the official format is channel-last (I, J, K, 3))"
    elif len(shape) == 4 and shape[0] == 3:
        hint = " (channel-first at another size; a half-resolution 2020 field is read only with --protocol 2020)"
    raise io.file_error(path, f"shape {tuple(shape)} received, expected {(*full, 3)}{hint}")


def _read_npz(path: Path, any_key: bool) -> np.ndarray:
    """The field array of an .npz file.

    ``any_key``: the single array under whatever key (evaluator 2025-02-10, 8847509: more than one
    array is an error). Otherwise the array ``arr_0`` (evaluators 2023-06-28 to 2025-02-10 read
    ``np.load(f)['arr_0']``; other arrays beside it are ignored, as there).
    """
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise io.file_error(path, "not an .npz archive (it holds a bare .npy array or text); "
                              "write it with numpy.savez_compressed")
        with loaded as npz:
            keys = list(npz.keys())
            if any_key:
                if len(keys) != 1:
                    raise io.file_error(path, f"an .npz field must hold exactly one array, found {len(keys)}: {keys}")
                return npz[keys[0]]
            if "arr_0" not in keys:
                raise io.file_error(path, f"this evaluator version reads the array 'arr_0', found {keys} "
                                  f"(the 2025 evaluator, --protocol 2025, takes any single key)")
            return npz["arr_0"]
    except ValueError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise io.file_error(path, f"cannot be read ({type(exc).__name__}: {exc})") from None
    except Exception as exc:  # zipfile, zlib, OSError, EOFError... on damaged files
        raise io.file_error(path, f"cannot be read ({type(exc).__name__}: {exc})") from None
