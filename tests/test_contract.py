import numpy as np
import pytest
import torch

from l2r_submit.core import contract


def test_grid_round_trip_and_identity():
    disp = torch.randn(2, 3, 5, 6, 7, dtype=torch.float64)
    back = contract.grid_to_disp(contract.disp_to_grid(disp))
    assert torch.allclose(back, disp, atol=1e-12)
    zero_grid = contract.disp_to_grid(torch.zeros(1, 3, 5, 6, 7))
    assert zero_grid[0, 0, 0, 0].tolist() == [-1.0, -1.0, -1.0]
    assert zero_grid[0, -1, -1, -1].tolist() == [1.0, 1.0, 1.0]


def test_grid_last_dim_is_reversed_axes():
    disp = torch.zeros(1, 3, 5, 6, 7)
    disp[:, 0] = 1.0  # one voxel along axis i only
    grid = contract.disp_to_grid(disp)
    # grid[..., 2] is axis i: shifted by 2/(5-1); the others unchanged
    assert torch.allclose(grid[0, 0, 0, 0], torch.tensor([-1.0, -1.0, -1.0 + 0.5]))


@pytest.mark.parametrize("bad, msg", [
    (np.zeros((2, 4, 4, 4), np.float32), "expected \\(3, 4, 4, 4\\)"),
    (np.zeros((3, 4, 4, 5), np.float32), "shape \\(3, 4, 4, 5\\) received"),
    (np.zeros((3, 4, 4, 4), np.int32), "dtype int32"),
    (np.full((3, 4, 4, 4), np.nan, np.float32), "non-finite"),
])
def test_check_disp_array_messages(bad, msg):
    with pytest.raises(ValueError, match=msg):
        contract.check_disp_array(bad, (4, 4, 4))


def test_check_disp_tensor_rejects_channel_last():
    with pytest.raises(ValueError, match="expected \\(B, 3, I, J, K\\)"):
        contract.check_disp_tensor(torch.zeros(1, 4, 4, 4, 3))
