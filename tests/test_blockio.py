"""blockio: arrays on disk a block at a time, and the in-place solve the coordinator and an HE party
build on it. Each helper is checked bit for bit against the whole-array computation it replaces."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from collabedit_secure import blockio
from collabedit_secure.kernels import pack_upper, regularized_solve, unpack_upper

pytest.importorskip("collabedit_secure.coordinator.server")

from collabedit_secure.bench import memory  # noqa: E402


def test_c0_is_read_one_module_at_a_time_with_the_same_values_and_fingerprint(tmp_path):
    from collabedit_secure.party.engine import c0_files, load_c0_dir, load_hparams
    from collabedit_secure.protocol import fingerprints

    data = memory.write_data(tmp_path, 70, 9, 1, [0, 1, 2])
    hparams = load_hparams(str(data["hparams"]))
    lazy, whole = blockio.LazyC0(c0_files(str(data["c0"]), hparams)), load_c0_dir(str(data["c0"]), hparams)
    assert sorted(lazy) == sorted(whole) and len(lazy) == 3
    for module in whole:
        assert torch.equal(lazy[module], whole[module]), module  # bit for bit
        out = np.full((70, 70), np.nan)
        assert np.array_equal(blockio.c0_into(lazy, module, out), whole[module].numpy())
        assert np.array_equal(blockio.c0_into(whole, module, np.empty((70, 70))), whole[module].numpy())
    assert fingerprints.c0_fingerprint(lazy) == fingerprints.c0_fingerprint(whole)
    first, second = sorted(whole)[:2]
    assert lazy[first].data_ptr() == lazy[second].data_ptr()  # one buffer, whatever the layers
    with pytest.raises(ValueError, match="70 x 70 float64"):
        lazy.read_into(first, np.empty((70, 71)))


def test_dropping_pages_touches_only_read_only_mappings(tmp_path):
    values = np.arange(1 << 16, dtype=np.float64)
    np.save(tmp_path / "v.npy", values)
    mapped = np.load(tmp_path / "v.npy", mmap_mode="r")
    for start in range(0, mapped.size, 4096):
        assert mapped[start:start + 4096].sum() >= 0
        blockio.drop_pages(mapped[start:start + 4096])
    np.testing.assert_array_equal(mapped, values)  # read again from the file after every drop
    owned = values.copy()
    blockio.drop_pages(owned)  # anonymous memory: left alone (madvise would have zeroed it)
    np.testing.assert_array_equal(owned, values)


def test_npz_written_a_block_at_a_time_reads_back_with_numpy(tmp_path):
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((300, 70)), rng.standard_normal((300, 70))
    small = np.arange(5, dtype=np.int32)
    path = blockio.write_npz(tmp_path / "x.npz", {"sum": blockio.RowSum(a, b), "a": a, "small": small,
                                                  "name": np.array("fp")})
    with np.load(path) as loaded:
        assert np.array_equal(loaded["sum"], a + b) and np.array_equal(loaded["a"], a)
        assert np.array_equal(loaded["small"], small) and str(loaded["name"]) == "fp"
    mapped = blockio.memmap_npz(path, min_bytes=0)
    assert isinstance(mapped["a"], np.memmap) and np.array_equal(mapped["a"], a)
    with pytest.raises(ValueError, match="bytes written"):
        blockio.write_npz(tmp_path / "bad.npz", {"x": blockio.BlockArray((10,), np.float64, [np.zeros(9)])})


@pytest.mark.parametrize("layout", ["packed", "full", "packed file", "full file"])
def test_upper_rows_of_every_layout_give_the_packed_triangle(tmp_path, layout):
    d = 301
    rng = np.random.default_rng(2)
    full = unpack_upper(pack_upper(rng.standard_normal((d, d))), d)
    source = pack_upper(full) if layout.startswith("packed") else full
    if layout.endswith("file"):
        source.astype("<f8").tofile(tmp_path / "m")
        source = tmp_path / "m"
    assert np.array_equal(np.concatenate(list(blockio.packed_blocks(source, d))), pack_upper(full))
    system = rng.standard_normal((d, d))
    expected = system.copy()
    for i in range(d):
        expected[i, i:] = 0.25 * expected[i, i:] + full[i, i:]
    blockio.add_upper(system, source, scale=0.25)
    assert np.array_equal(system, expected)


def test_a_file_of_the_wrong_size_is_refused(tmp_path):
    np.zeros(17).tofile(tmp_path / "m")
    with pytest.raises(ValueError, match="a 5 x 5 symmetric matrix has 15 .packed. or 25"):
        list(blockio.upper_rows(tmp_path / "m", 5))


def test_the_solve_in_place_is_bit_identical_to_the_solve_that_copies():
    """What the coordinator and an HE party do: C0 read into the system buffer, lambda C0 + C_acc
    assembled there, then the kernel adds S_KK, factors and solves in place."""
    d, d_out = 257, 33
    rng = np.random.default_rng(4)
    x = rng.standard_normal((d, 4 * d))
    c0, k = x @ x.T / x.shape[1], rng.standard_normal((d, 40))
    s_kk, c_acc, s_rk = pack_upper(k @ k.T), pack_upper(0.3 * k[:, :10] @ k[:, :10].T), rng.standard_normal((d_out, d))
    expected = regularized_solve(c0, 1.7, s_kk, s_rk, c_acc=c_acc)
    system, rhs = c0.copy(), s_rk.copy()
    blockio.add_upper(system, c_acc, scale=1.7)
    delta = regularized_solve(system, 1.0, s_kk, rhs, overwrite=True)
    assert delta is rhs and np.array_equal(delta, expected)
    with pytest.raises(ValueError, match="overwrite=True needs s_rk"):
        regularized_solve(c0.copy(), 1.7, s_kk, s_rk.astype(np.float32), overwrite=True)
    frozen = c0.copy()
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="overwrite=True needs c0"):
        regularized_solve(frozen, 1.7, s_kk, s_rk.copy(), overwrite=True)

