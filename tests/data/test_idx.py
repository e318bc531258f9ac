"""Reading IDX files (:mod:`cnnbench.data.idx`), plain or gzipped, finding the data, and damaged files named."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

from cnnbench.data import find_data_root
from cnnbench.data.idx import candidate_roots, load_mini, load_splits, read_split
from cnnbench.errors import DataError
from tests.helpers import corrupt, dataset_cfg, gzip_dataset, write_fake_dataset, write_idx


def test_reads_the_four_files(fake_data, no_data_env):
    train, test = load_splits(dataset_cfg(fake_data))
    assert train.images.shape == (256, 28, 28) and train.images.dtype == torch.uint8
    assert test.labels.shape == (128,) and test.labels.dtype == torch.int64
    assert set(train.labels.tolist()) == set(range(10))


def test_search_order_root_then_env_then_local(fake_data, no_data_env, monkeypatch):
    assert find_data_root("FashionMNIST", str(fake_data)) == fake_data / "FashionMNIST" / "raw"
    assert find_data_root("FashionMNIST", None) is None
    monkeypatch.setenv("CNNBENCH_DATA", str(fake_data))
    assert find_data_root("FashionMNIST", None) == fake_data / "FashionMNIST" / "raw"
    # the four files directly in the given folder also work
    assert find_data_root("FashionMNIST", str(fake_data / "FashionMNIST" / "raw")) is not None


def _raw(base: Path) -> Path:
    """Where torchvision's layout puts the four IDX files under a data root (absolute, for comparisons)."""
    return (base / "FashionMNIST" / "raw").resolve()


def _found() -> Path | None:
    found = find_data_root("FashionMNIST", None)
    return None if found is None else found.resolve()  # ./data is returned relative to the cwd


def test_local_data_folder_is_found(no_data_env, monkeypatch):
    # no_data_env: cwd = tmp, HOME = tmp/home, no $CNNBENCH_DATA
    write_fake_dataset(no_data_env / "data", n_train=10, n_test=10)
    assert _found() == _raw(no_data_env / "data")
    monkeypatch.chdir(no_data_env / "data" / "FashionMNIST")  # ./data is relative to the cwd, not fixed
    assert _found() is None


def test_user_cache_is_found(no_data_env):
    cache = no_data_env / "home" / ".cache" / "cnnbench" / "data"  # ~/.cache/cnnbench/data
    write_fake_dataset(cache, n_train=10, n_test=10)
    assert _found() == _raw(cache)


def test_search_order_root_env_local_cache(no_data_env, monkeypatch):
    """Four copies of the data: each source wins over every source after it in the search order."""
    cache, local, env, root = (no_data_env / "home" / ".cache" / "cnnbench" / "data", no_data_env / "data",
                               no_data_env / "env", no_data_env / "root")
    for base in (cache, local, env, root):
        write_fake_dataset(base, n_train=10, n_test=10)
    assert _found() == _raw(local)  # ./data before the user cache
    monkeypatch.setenv("CNNBENCH_DATA", str(env))
    assert _found() == _raw(env)  # $CNNBENCH_DATA before ./data
    assert find_data_root("FashionMNIST", str(root)).resolve() == _raw(root)  # dataset.root first
    assert candidate_roots(str(root)) == [root, env, Path("data"), cache]


def test_offline_error_names_folders_files_and_the_fix(no_data_env):
    with pytest.raises(DataError) as err:
        load_splits(dataset_cfg(no_data_env / "nowhere"))
    msg = str(err.value)
    assert str(no_data_env / "nowhere" / "FashionMNIST" / "raw") in msg
    assert "train-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg
    assert "CNNBENCH_DATA" in msg and "dataset.root" in msg and "cnnbench train experiment=quickstart" in msg


def test_packaged_mini_dataset_is_stratified():
    train, test = load_mini()
    assert train.images.shape == (6000, 28, 28) and test.images.shape == (1000, 28, 28)
    assert torch.bincount(train.labels).tolist() == [600] * 10
    assert torch.bincount(test.labels).tolist() == [100] * 10
    assert 0.25 < train.images.float().mean().item() / 255 < 0.33  # Fashion-MNIST's mean is 0.286


# ------------------------------------------------------------------------------------------ gzipped files


def _raw_files(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "FashionMNIST" / "raw").iterdir())


def test_gzipped_copy_reads_identically(fake_data, no_data_env, tmp_path):
    gz = gzip_dataset(fake_data, tmp_path / "gz")
    assert all(name.endswith("-ubyte.gz") for name in _raw_files(gz)) and len(_raw_files(gz)) == 4
    for plain, zipped in zip(load_splits(dataset_cfg(fake_data)), load_splits(dataset_cfg(gz)), strict=True):
        assert zipped.images.dtype == plain.images.dtype and zipped.labels.dtype == plain.labels.dtype
        assert torch.equal(zipped.images, plain.images) and torch.equal(zipped.labels, plain.labels)


def test_search_finds_a_folder_with_only_gzipped_files(fake_data, no_data_env, monkeypatch, tmp_path):
    gz = gzip_dataset(fake_data, tmp_path / "gz")
    assert find_data_root("FashionMNIST", str(gz)) == gz / "FashionMNIST" / "raw"
    monkeypatch.setenv("CNNBENCH_DATA", str(gz))
    assert find_data_root("FashionMNIST", None) == gz / "FashionMNIST" / "raw"
    # each file on its own: two plain and two gzipped make a data set too
    mixed = gzip_dataset(fake_data, tmp_path / "mixed",
                         keep_plain=("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))
    assert find_data_root("FashionMNIST", str(mixed)) == mixed / "FashionMNIST" / "raw"
    assert torch.equal(load_splits(dataset_cfg(mixed))[0].images, load_splits(dataset_cfg(fake_data))[0].images)
    # but all four must be there, in one form or the other
    (gz / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    assert find_data_root("FashionMNIST", str(gz)) is None


def test_plain_file_is_preferred_to_its_gzipped_copy(no_data_env, tmp_path):
    """Both forms of every file, holding different images: the plain ones are read."""
    both = write_fake_dataset(tmp_path / "both", n_train=40, n_test=20, seed=0)
    plain_images = load_splits(dataset_cfg(both))[0].images
    other = write_fake_dataset(tmp_path / "other", n_train=40, n_test=20, seed=1)
    gzip_images = load_splits(dataset_cfg(other))[0].images
    assert not torch.equal(plain_images, gzip_images)
    gzip_dataset(other, both)  # the .gz files land beside the plain ones
    assert len(_raw_files(both)) == 8
    assert torch.equal(load_splits(dataset_cfg(both))[0].images, plain_images)
    (both / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").unlink()  # now the .gz one is read
    assert torch.equal(load_splits(dataset_cfg(both))[0].images, gzip_images)


def _regzip(mutate_idx=lambda b: b, mutate_gz=lambda b: b):
    """Mutate the IDX bytes, gzip them, then mutate the compressed bytes."""
    return lambda plain: mutate_gz(gzip.compress(mutate_idx(plain), mtime=0))


def _flip_middle(b: bytes) -> bytes:
    mid = len(b) // 2
    return b[:mid] + bytes(x ^ 0xFF for x in b[mid:mid + 16]) + b[mid + 16:]


@pytest.mark.parametrize("name,mutate,message", [
    ("train-images-idx3-ubyte", _regzip(mutate_gz=lambda b: b[: len(b) // 2]), "not a readable gzip file"),
    ("train-images-idx3-ubyte", _regzip(mutate_gz=_flip_middle), "not a readable gzip file"),
    ("train-labels-idx1-ubyte", _regzip(mutate_gz=lambda b: b[:-4]), "not a readable gzip file"),  # no length
    ("train-labels-idx1-ubyte", lambda plain: plain, "not a readable gzip file"),  # plain bytes named .gz
    ("train-images-idx3-ubyte", _regzip(lambda b: b[:-100]),
     "truncated: 200620 bytes, expected 200720 for dimensions (256, 28, 28) after decompression"),
    ("train-images-idx3-ubyte", _regzip(lambda b: b"\x00\x00\x08\x01" + b[4:]), "wrong magic number 0x00000801"),
    ("train-images-idx3-ubyte", _regzip(lambda b: b + b"\x00" * 10), "longer than its header says"),
    ("train-labels-idx1-ubyte", _regzip(lambda b: b[:8] + bytes([42]) + b[9:]), "1 labels outside 0..9"),
    ("train-labels-idx1-ubyte", _regzip(lambda b: b[:5]), "shorter than its 8-byte IDX header"),
    ("train-labels-idx1-ubyte", _regzip(lambda b: b[:4] + (250).to_bytes(4, "big") + b[8:258]),
     "holds 256 images but"),
])
def test_damaged_gzipped_files_are_refused_naming_the_file(tmp_path, name, mutate, message):
    """One DataError naming the .gz file and the problem, never a zlib/EOFError traceback."""
    raw = write_fake_dataset(tmp_path, n_train=256, n_test=32) / "FashionMNIST" / "raw"
    gz = raw / f"{name}.gz"
    gz.write_bytes(mutate((raw / name).read_bytes()))
    (raw / name).unlink()
    with pytest.raises(DataError) as err:
        read_split(raw, "train", 10)
    assert str(gz) in str(err.value) and message in str(err.value)
    assert "\n" not in str(err.value)


def test_gzipped_bytes_under_a_plain_name_get_a_hint(tmp_path):
    raw = write_fake_dataset(tmp_path, n_train=32, n_test=32) / "FashionMNIST" / "raw"
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(gzip.compress(path.read_bytes()))
    with pytest.raises(DataError, match="wrong magic number 0x1f8b.*it is gzip-compressed: name it "
                                         "train-images-idx3-ubyte.gz"):
        read_split(raw, "train", 10)


@pytest.mark.parametrize("name,mutate,message", [
    ("train-images-idx3-ubyte", lambda b: b[:-100], "truncated: 200620 bytes, expected 200720"),
    ("train-images-idx3-ubyte", lambda b: b"\x00\x00\x08\x01" + b[4:], "wrong magic number 0x00000801"),
    ("train-images-idx3-ubyte", lambda b: b + b"\x00" * 10, "longer than its header says"),
    ("train-labels-idx1-ubyte", lambda b: b[:8] + bytes([42]) + b[9:], "1 labels outside 0..9"),
    ("train-labels-idx1-ubyte", lambda b: b[:5], "shorter than its 8-byte IDX header"),
])
def test_corrupt_files_are_reported_with_file_and_problem(tmp_path, name, mutate, message):
    root = write_fake_dataset(tmp_path, n_train=256, n_test=32)
    path = corrupt(root, name, mutate)
    with pytest.raises(DataError) as err:
        read_split(path.parent, "train", 10)
    assert str(path) in str(err.value) and message in str(err.value)


def test_image_and_label_counts_must_agree(tmp_path):
    root = write_fake_dataset(tmp_path, n_train=64, n_test=32)
    write_idx(root / "FashionMNIST" / "raw" / "train-labels-idx1-ubyte", (torch.arange(60) % 10).numpy())
    with pytest.raises(DataError, match="holds 64 images but .* holds 60 labels"):
        read_split(root / "FashionMNIST" / "raw", "train", 10)
