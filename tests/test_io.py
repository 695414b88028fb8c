import os
import stat
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from l2r_submit.core import disp_files, io
from l2r_submit.training.synthetic import smooth_random_disp

SHAPE = (16, 12, 20)


@pytest.fixture
def disp():
    return smooth_random_disp(3, SHAPE, max_disp=4.0)


def test_names():
    assert disp_files.disp_names("0001", "0004", "long") == ["disp_0001_0000_0004_0000"]
    assert disp_files.disp_names("0001", "0004", "short") == ["disp_0001_0004"]
    assert disp_files.disp_names("0001", "0004", "both") == ["disp_0001_0000_0004_0000", "disp_0001_0004"]
    with pytest.raises(ValueError, match="four digits"):
        disp_files.disp_names("1", "0004")


def test_nii_layout_is_official(tmp_path, disp):
    (path,) = disp_files.write_disp(disp, tmp_path, "0001", "0004", "nii.gz")
    img = nib.load(path)
    assert path.name == "disp_0001_0000_0004_0000.nii.gz"
    assert img.shape == (*SHAPE, 3) and img.get_data_dtype() == np.float32
    assert np.array_equal(img.affine, np.eye(4))
    assert np.array_equal(img.get_fdata()[..., 1], disp[1])  # channel last, channel k = axis k


def test_npz_layout_is_official(tmp_path, disp):
    (path,) = disp_files.write_disp(disp, tmp_path, "0001", "0004", "npz", "short")
    with np.load(path) as f:
        assert list(f.keys()) == ["arr_0"]
        assert f["arr_0"].shape == (*SHAPE, 3) and f["arr_0"].dtype == np.float32


def test_2020_layout_and_round_trip(tmp_path):
    shape = (64, 48, 80)
    disp = smooth_random_disp(3, shape, max_disp=4.0, grid=(3, 3, 3))
    (path,) = disp_files.write_disp(disp, tmp_path, "0001", "0004", "npz2020")
    with np.load(path) as f:
        arr = f["arr_0"]
    assert arr.dtype == np.float16 and arr.shape == (3, 32, 24, 40)
    back = disp_files.read_disp(path, shape, protocol="2020")
    assert back.shape == (3, *shape)
    # a smooth field survives half resolution + float16 inside the volume: error under a tenth of a voxel.
    # The last planes are not kept: zoom's default mode='constant' zeroes them (so does the 2020 evaluator).
    err = np.abs(back - disp)
    assert err[:, :-4, :-4, :-4].max() < 0.1  # the spline prefilter carries the edge effect ~4 voxels in
    assert err.max() > 0.5


def test_all_formats_read_back_the_same(tmp_path, disp):
    a = disp_files.read_disp(disp_files.write_disp(disp, tmp_path, "0001", "0004", "nii.gz")[0], SHAPE)
    b = disp_files.read_disp(disp_files.write_disp(disp, tmp_path, "0001", "0004", "npz")[0], SHAPE)
    assert a.dtype == np.float64 and b.dtype == np.float32  # the dtypes the official loader gives
    assert np.array_equal(a, b) and np.array_equal(b, disp)


def test_both_names_are_identical_files(tmp_path, disp):
    paths = disp_files.write_disp(disp, tmp_path, "0001", "0004", "nii.gz", "both")
    assert [p.name for p in paths] == ["disp_0001_0000_0004_0000.nii.gz", "disp_0001_0004.nii.gz"]
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    def boom(tmp: str) -> None:
        Path(tmp).write_bytes(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        io.atomic_write(tmp_path / "disp_0001_0004.npz", boom)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_gives_ordinary_permissions(tmp_path, disp):
    old = os.umask(0o022)
    try:
        path = disp_files.write_disp(disp, tmp_path, "0001", "0004", "npz")[0]
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # readable by the organisers' scoring user


def test_rewrite_replaces_atomically(tmp_path, disp):
    disp_files.write_disp(disp, tmp_path, "0001", "0004", "npz")
    disp_files.write_disp(disp * 0, tmp_path, "0001", "0004", "npz")
    assert not disp_files.read_disp(tmp_path / "disp_0001_0000_0004_0000.npz", SHAPE).any()


@pytest.mark.parametrize("arr, fmt, msg", [
    (np.zeros((*SHAPE[:2], SHAPE[2] + 1, 3), np.float32), "npz", "shape"),
    (np.zeros((3, 8, 6, 10), np.float16), "npz", "half-resolution"),
    (np.full((*SHAPE, 3), np.nan, np.float32), "npz", "non-finite"),
    (np.zeros((*SHAPE, 3), np.float32), "nii.gz", None),
    # get_fdata() drops the imaginary part with a warning: a complex field was scored as its real part
    (np.full((*SHAPE, 3), 1 + 50j, np.complex64), "nii.gz", "dtype complex64 received: .* real numbers"),
    (np.zeros((3, *SHAPE), np.float32), "nii.gz", "channel-first"),
    (np.full((*SHAPE, 3), 1e39), "npz", "non-finite"),  # beyond float32 after the official cast, no warning
])
def test_read_disp_rejects_bad_fields(tmp_path, arr, fmt, msg):
    path = tmp_path / f"disp_0001_0004.{fmt}"
    if fmt == "npz":
        np.savez_compressed(path, arr)
    else:
        nib.save(nib.Nifti1Image(arr, np.eye(4)), path)
    if msg is None:
        assert disp_files.read_disp(path, SHAPE).shape == (3, *SHAPE)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy's own warnings would reach the user's terminal
            with pytest.raises(ValueError, match=msg) as exc:
                disp_files.read_disp(path, SHAPE)
        assert str(path) in str(exc.value)


def test_read_disp_2020_rejects_wrong_dtype_and_shape(tmp_path):
    path = tmp_path / "d.npz"
    np.savez_compressed(path, np.zeros((3, 8, 6, 10), np.float32))
    with pytest.raises(ValueError, match="float16"):
        disp_files.read_disp(path, SHAPE, protocol="2020")
    np.savez_compressed(path, np.zeros((3, 16, 12, 20), np.float16))
    with pytest.raises(ValueError, match="2020 format expects"):
        disp_files.read_disp(path, SHAPE, protocol="2020")


def test_npz_key_rules_per_evaluator_version(tmp_path):
    # 2022-2024 evaluators read np.load(f)['arr_0']; the 2025 one (8847509) takes the single array under any key
    path = tmp_path / "d.npz"
    np.savez(path, disp=np.zeros((*SHAPE, 3), np.float32))
    for protocol in ("2024", "2022"):
        with pytest.raises(ValueError, match="arr_0"):
            disp_files.read_disp(path, SHAPE, protocol)
    assert disp_files.read_disp(path, SHAPE, "2025").shape == (3, *SHAPE)
    np.savez(path, a=np.zeros((*SHAPE, 3), np.float32), b=np.zeros(1))
    with pytest.raises(ValueError, match="exactly one array"):
        disp_files.read_disp(path, SHAPE, "2025")


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "disp_0001_0004.nii.gz"
    bad.write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(ValueError, match="cannot be read"):
        disp_files.read_disp(bad, SHAPE)
    trunc = tmp_path / "t.npz"
    np.savez_compressed(trunc, np.zeros((*SHAPE, 3), np.float32))
    trunc.write_bytes(trunc.read_bytes()[:50])
    with pytest.raises(ValueError, match="cannot be read"):
        disp_files.read_disp(trunc, SHAPE)
    with pytest.raises(ValueError, match="not found"):
        disp_files.read_disp(tmp_path / "nope.npz", SHAPE)
    with pytest.raises(ValueError, match="not found"):
        io.read_volume(tmp_path / "nope.nii.gz")


def test_read_volume_itk_formats_match_nibabel_axes(tmp_path):
    import SimpleITK as sitk

    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    nib.save(nib.Nifti1Image(arr, np.diag([2.0, 3.0, 4.0, 1.0])), tmp_path / "a.nii.gz")
    img = sitk.ReadImage(str(tmp_path / "a.nii.gz"))
    for ext in (".mha", ".nrrd"):
        sitk.WriteImage(img, str(tmp_path / f"a{ext}"))
        vol = io.read_volume(tmp_path / f"a{ext}")
        assert np.array_equal(vol.array, arr)
        assert vol.spacing == pytest.approx((2.0, 3.0, 4.0))
        np.testing.assert_allclose(vol.affine, io.read_volume(tmp_path / "a.nii.gz").affine, atol=1e-6)


def test_read_volume_dicom_series(tmp_path):
    import SimpleITK as sitk

    arr = (np.arange(6 * 5 * 4).reshape(4, 5, 6) % 100).astype(np.int16)  # (z, y, x)
    folder = tmp_path / "dicom"
    folder.mkdir()
    for z in range(arr.shape[0]):
        sl = sitk.GetImageFromArray(arr[z])
        sl.SetSpacing((1.5, 1.5))
        sl.SetMetaData("0020|0013", str(z + 1))
        sl.SetMetaData("0020|0032", f"0\\0\\{z * 2.0}")
        sl.SetMetaData("0020|000e", "1.2.3.4")
        sl.SetMetaData("0008|0060", "CT")
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()  # keep one series UID for all slices
        writer.SetFileName(str(folder / f"s{z:03d}.dcm"))
        writer.Execute(sl)
    vol = io.read_volume(folder)
    assert vol.array.shape == (6, 5, 4)
    assert np.array_equal(vol.array, arr.transpose(2, 1, 0))


def test_read_labels_rejects_fractional(tmp_path):
    nib.save(nib.Nifti1Image(np.full((4, 4, 4), 1.5, np.float32), np.eye(4)), tmp_path / "l.nii.gz")
    with pytest.raises(ValueError, match="non-integer"):
        io.read_labels(tmp_path / "l.nii.gz")


@pytest.mark.parametrize("isal", [True, False])
def test_gzip_reads_with_and_without_isal_check_the_crc(tmp_path, monkeypatch, isal):
    """ISA-L when installed, Python's gzip otherwise: the same array, and a flipped CRC byte is refused."""
    import sys

    if isal:
        pytest.importorskip("isal")
    else:
        monkeypatch.setitem(sys.modules, "isal", None)  # import isal now raises ImportError
    disp = np.random.default_rng(0).normal(0, 2, (3, *SHAPE)).astype(np.float32)
    path = disp_files.write_disp(disp, tmp_path, "0001", "0002")[0]
    assert np.array_equal(disp_files.read_disp(path, SHAPE), disp)
    data = bytearray(path.read_bytes())
    data[-6] ^= 0xFF  # inside the CRC-32 of the trailer
    bad = tmp_path / "disp_0001_0000_0003_0000.nii.gz"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt gzip stream"):
        disp_files.read_disp(bad, SHAPE)


@pytest.mark.parametrize("isal", [True, False])
def test_nii_gz_is_one_standard_gzip_member_of_nibabels_own_bytes(tmp_path, disp, monkeypatch, isal):
    """The field file: exactly the bytes nib.save would store (header and data), in one standard gzip
    member that Python's gzip and zlib read; ISA-L's level 1 when installed, else zlib's; mtime 0."""
    import gzip
    import sys
    import zlib

    import nibabel as nib

    if isal:
        pytest.importorskip("isal")
    else:
        monkeypatch.setitem(sys.modules, "isal", None)
    path = disp_files.write_disp(disp, tmp_path, "0001", "0002")[0]
    nib.save(nib.Nifti1Image(np.ascontiguousarray(np.moveaxis(disp, 0, -1)), np.eye(4)), tmp_path / "ref.nii.gz")
    raw = gzip.decompress((tmp_path / "ref.nii.gz").read_bytes())
    stored = path.read_bytes()
    assert gzip.decompress(stored) == raw
    d = zlib.decompressobj(wbits=31)  # a single gzip member, nothing after it
    assert d.decompress(stored) == raw and d.eof and d.unused_data == b""
    assert stored[:4] == b"\x1f\x8b\x08\x00" and stored[4:8] == b"\x00\x00\x00\x00"  # deflate, no flags, mtime 0
    try:
        from isal import igzip
    except ImportError:
        assert stored == gzip.compress(raw, compresslevel=1, mtime=0)
    else:
        assert stored == igzip.compress(raw, compresslevel=1, mtime=0)
