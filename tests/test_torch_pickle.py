"""The torch-free reader of torch.save files (zip and legacy formats)."""

import os

import numpy as np
import pytest

from mindcv.utils.torch_pickle import TorchFileError, load_torch_file


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_reads_every_dtype_and_layout(fixtures_dir, fmt):
    state = load_torch_file(os.path.join(fixtures_dir, f"torch_tensors_{fmt}.pt"))
    expected = np.load(os.path.join(fixtures_dir, "torch_tensors_expected.npz"))
    assert list(state) == list(expected.files)
    for key in expected.files:
        got = state[key]
        if key == "bfloat16":
            got = got.astype(np.float32)
        assert got.dtype == expected[key].dtype, key
        np.testing.assert_array_equal(got, expected[key], err_msg=key)


def test_refuses_arbitrary_objects(fixtures_dir):
    with pytest.raises(TorchFileError, match="refusing to unpickle 'torch.nn.modules.activation.ReLU'"):
        load_torch_file(os.path.join(fixtures_dir, "torch_unsafe_object.pt"))


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_truncated_file_is_a_clear_error(fixtures_dir, tmp_path, fmt):
    src = os.path.join(fixtures_dir, f"torch_tensors_{fmt}.pt")
    dst = tmp_path / "cut.pt"
    data = open(src, "rb").read()
    dst.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(TorchFileError, match="cut.pt"):
        load_torch_file(str(dst))


def test_not_a_torch_file(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(os.urandom(256))
    with pytest.raises(TorchFileError, match="junk.pth"):
        load_torch_file(str(junk))
