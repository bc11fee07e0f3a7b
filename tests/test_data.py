"""scratchnet.data: reading, normalization, refusals, extraction, download and batching."""

import hashlib
import io
import os
import pickle
import tarfile
import urllib.error

import numpy as np
import pytest
import torchvision.transforms as transforms
from PIL import Image

from cifar_fakes import MarkerPayload, batch_bytes, tar_folder, tar_with_member, write_fake_cifar
from scratchnet import backends, data, download, files, safe_pickle


@pytest.fixture
def fake_root(tmp_path):
    written = write_fake_cifar(tmp_path)
    return tmp_path, written


def test_split_is_one_normalized_nchw_float32_array(fake_root):
    root, written = fake_root
    train = data.CIFAR10(root, train=True)
    images = np.concatenate([written[name][0] for name in download.TRAIN_FILES])
    labels = np.concatenate([written[name][1] for name in download.TRAIN_FILES])
    assert train.data.shape == (len(images), 3, 32, 32) and train.data.dtype == np.float32
    assert train.data.flags.c_contiguous
    np.testing.assert_array_equal(train.targets, labels)
    assert train.targets.dtype == np.int64
    np.testing.assert_array_equal(train.data, (images.astype(np.float32) / 255 - 0.5) / 0.5)
    test = data.CIFAR10(root, train=False)
    np.testing.assert_array_equal(test.targets, written["test_batch"][1])


def test_normalization_equals_torchvision_to_tensor_then_normalize(fake_root):
    root, written = fake_root
    test = data.CIFAR10(root, train=False)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    for index, image in enumerate(written["test_batch"][0]):
        expected = transform(Image.fromarray(image.transpose(1, 2, 0))).numpy()
        np.testing.assert_array_equal(test.data[index], expected)  # bit for bit


def test_limit_keeps_the_first_images_across_files(fake_root):
    root, written = fake_root
    limited = data.CIFAR10(root, train=True, limit=8)  # 6 from data_batch_1, 2 from data_batch_2
    first = np.concatenate([written["data_batch_1"][1], written["data_batch_2"][1]])[:8]
    np.testing.assert_array_equal(limited.targets, first)
    assert len(data.CIFAR10(root, train=True, limit=10**6)) == 30
    with pytest.raises(ValueError, match="limit must be a positive"):
        data.CIFAR10(root, limit=0)


def test_py2_style_bytes_keys_load_too(tmp_path):
    write_fake_cifar(tmp_path)
    images = np.zeros((2, 3, 32, 32), np.uint8)
    with open(tmp_path / download.FOLDER / "test_batch", "wb") as file:
        file.write(batch_bytes(images, [3, 4], bytes_keys=True))
    np.testing.assert_array_equal(data.CIFAR10(tmp_path, train=False).targets, [3, 4])


def test_unofficial_files_load_with_one_notice(fake_root, capsys, monkeypatch, tmp_path):
    root, _ = fake_root
    monkeypatch.setenv(files.CACHE_ENV, str(tmp_path / "cache"))
    data.CIFAR10(root, train=False)
    data.CIFAR10(root, train=True)
    notices = [line for line in capsys.readouterr().err.splitlines() if "not the official CIFAR-10 release" in line]
    assert len(notices) == 1 and str(root) in notices[0]


def test_the_notice_is_said_once_for_the_user_not_once_per_command(fake_root, capsys, monkeypatch, tmp_path):
    root, _ = fake_root
    monkeypatch.setenv(files.CACHE_ENV, str(tmp_path / "cache"))

    def notices_of_a_new_command():
        monkeypatch.setattr(download, "_noticed_folders", set())  # what a new process starts with
        data.CIFAR10(root, train=False)
        return [line for line in capsys.readouterr().err.splitlines() if "not the official" in line]

    assert len(notices_of_a_new_command()) == 1
    assert notices_of_a_new_command() == []
    changed = os.path.join(root, download.FOLDER, "test_batch")
    os.utime(changed, ns=(0, 0))  # files that changed since are checked, and said, again
    assert len(notices_of_a_new_command()) == 1


def test_missing_data_says_where_and_which_flag(tmp_path):
    with pytest.raises(download.DataError) as error:
        data.CIFAR10(tmp_path / "nowhere")
    message = str(error.value)
    assert download.FOLDER in message and download.ARCHIVE in message and "--download" in message


def test_a_pickle_asking_for_code_is_refused_and_runs_nothing(fake_root):
    root, _ = fake_root
    marker = root / "code-ran"
    path = root / download.FOLDER / "test_batch"
    path.write_bytes(pickle.dumps({"data": MarkerPayload(str(marker)), "labels": []}, protocol=2))
    with pytest.raises(download.DataError, match="refused to load posix.mkdir|refused to load os.mkdir") as error:
        data.CIFAR10(root, train=False)
    assert str(path) in str(error.value)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "not a batch", "bad labels"])
def test_a_damaged_batch_names_the_file(fake_root, damage):
    root, _ = fake_root
    path = root / download.FOLDER / "data_batch_1"
    content = path.read_bytes()
    path.write_bytes({
        "truncated": content[: len(content) // 2],
        "garbage": b"\x00\x01not a pickle",
        "not a batch": pickle.dumps({"labels": [1]}, protocol=2),
        "bad labels": batch_bytes(np.zeros((2, 3, 32, 32), np.uint8), [0, 10]),
    }[damage])
    with pytest.raises(download.DataError, match=str(path)):
        data.CIFAR10(root, train=True)


def test_allow_list_unpickler_refuses_globals_and_persistent_ids():
    refused = pickle.dumps(np.float64, protocol=2)
    with pytest.raises(safe_pickle.UnsafePickleError, match="refused to load numpy.float64"):
        safe_pickle.load(io.BytesIO(refused), safe_pickle.NUMPY_ARRAYS, what="sample")

    class WithPersistentId(pickle.Pickler):
        def persistent_id(self, obj):
            return "ref" if obj == "outside" else None

    stream = io.BytesIO()
    WithPersistentId(stream, protocol=2).dump(["outside"])
    stream.seek(0)
    with pytest.raises(safe_pickle.UnsafePickleError, match="persistent reference"):
        safe_pickle.load(stream, {}, what="sample")
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    loaded = safe_pickle.load(io.BytesIO(pickle.dumps({"a": array}, protocol=2)), safe_pickle.NUMPY_ARRAYS, "sample")
    np.testing.assert_array_equal(loaded["a"], array)


# ---- archive and download ---------------------------------------------------------------------


def test_the_archive_is_extracted_when_the_folder_is_missing(tmp_path):
    source = tmp_path / "source"
    written = write_fake_cifar(source)
    root = tmp_path / "root"
    root.mkdir()
    tar_folder(source, root / download.ARCHIVE)
    test = data.CIFAR10(root, train=False)
    np.testing.assert_array_equal(test.targets, written["test_batch"][1])
    assert sorted(os.listdir(root)) == sorted([download.ARCHIVE, download.FOLDER])  # no staging left behind


@pytest.mark.parametrize("name, kind, link", [
    ("cifar-10-batches-py/../../escaped", tarfile.REGTYPE, ""),
    ("/tmp/absolute", tarfile.REGTYPE, ""),
    ("cifar-10-batches-py/link", tarfile.SYMTYPE, "/etc/passwd"),
    ("elsewhere/file", tarfile.REGTYPE, ""),
])
def test_unsafe_archive_members_are_refused(tmp_path, name, kind, link):
    root = tmp_path / "root"
    root.mkdir()
    tar_with_member(root / download.ARCHIVE, name, kind=kind, link=link)
    with pytest.raises(download.DataError, match="refused member"):
        data.CIFAR10(root)
    assert sorted(os.listdir(root)) == [download.ARCHIVE]
    assert not (tmp_path / "escaped").exists()


class _FakeResponse(io.BytesIO):
    def __init__(self, payload):
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))}


def test_download_verifies_md5_and_writes_atomically(tmp_path, monkeypatch):
    source = tmp_path / "source"
    written = write_fake_cifar(source)
    tar_folder(source, tmp_path / "served.tar.gz")
    payload = (tmp_path / "served.tar.gz").read_bytes()
    requested = []
    monkeypatch.setattr(download.urllib.request, "urlopen",
                        lambda url, timeout: requested.append(url) or _FakeResponse(payload))
    root = tmp_path / "root"
    archive = root / download.ARCHIVE

    with pytest.raises(download.DataError, match="MD5"):
        download.fetch(str(archive), md5="0" * 32)
    assert not root.exists() or os.listdir(root) == []  # nothing half-written is left

    download.fetch(str(archive), md5=hashlib.md5(payload).hexdigest())
    assert archive.read_bytes() == payload and requested == [download.URL, download.URL]
    np.testing.assert_array_equal(data.CIFAR10(root, train=False).targets, written["test_batch"][1])


def test_offline_download_says_what_to_do(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(download.urllib.request, "urlopen", offline)
    with pytest.raises(download.DataError) as error:
        data.CIFAR10(tmp_path, download=True)
    message = str(error.value)
    assert download.URL in message and "by hand" in message and "--data" in message
    assert "Name or service not known" in message  # the network's own reason, not the archive's name
    assert os.listdir(tmp_path) == []


# ---- batching -----------------------------------------------------------------------------


class _Split:
    def __init__(self, n):
        self.data = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
        self.targets = np.arange(n, dtype=np.int64)

    def __len__(self):
        return len(self.targets)


def test_loader_keeps_the_last_partial_batch_in_order():
    loader = data.DataLoader(_Split(10), batch_size=4)
    batches = list(loader)
    assert len(loader) == 3 and [len(y) for _, y in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), np.arange(10))
    np.testing.assert_array_equal(batches[2][0], _Split(10).data[8:])


def test_loader_reshuffles_each_epoch_in_the_documented_order():
    split = _Split(11)
    loader = data.DataLoader(split, batch_size=3, shuffle=True, seed=7)
    replay = np.random.default_rng(7)
    epochs = []
    for _ in range(3):
        order = np.concatenate([y for _, y in loader])
        np.testing.assert_array_equal(order, replay.permutation(11))
        epochs.append(order)
    assert not np.array_equal(epochs[0], epochs[1])
    for x, y in data.DataLoader(split, batch_size=3, shuffle=True, seed=7):
        np.testing.assert_array_equal(x, split.data[y])  # images travel with their labels


def test_every_backend_sees_the_same_batches(backend):
    split = _Split(9)
    reference = [(x, y) for x, y in data.DataLoader(split, 4, shuffle=True, seed=1)]
    for (x, y), (x_ref, y_ref) in zip(data.DataLoader(split, 4, shuffle=True, seed=1, backend=backend), reference):
        backend.check_array(x, "batch")  # the batch lives on the backend
        np.testing.assert_array_equal(backend.to_numpy(x), x_ref)
        np.testing.assert_array_equal(backend.to_numpy(y), y_ref)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5])
def test_loader_refuses_bad_batch_sizes(batch_size):
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        data.DataLoader(_Split(4), batch_size)


def test_loader_takes_a_backend_name():
    loader = data.DataLoader(_Split(4), 2, backend="numpy")
    assert loader.backend is backends.get("numpy")


@pytest.mark.parametrize("dtype", [None, np.float64])
def test_loader_normalizes_pixel_batches_bit_for_bit_on_every_backend(fake_root, backend, dtype):
    root, _ = fake_root
    train = data.CIFAR10(root, train=True)
    assert train.pixels.dtype == np.uint8  # the split stays pixels; the loader normalizes what it draws
    expected_dtype = np.float32 if dtype is None else dtype
    # The same batches as from the whole split normalized up front, in the same order.
    up_front = data.DataLoader(_Normalized(train), 7, shuffle=True, seed=3, dtype=dtype)
    for (x, y), (x_ref, y_ref) in zip(data.DataLoader(train, 7, shuffle=True, seed=3, backend=backend, dtype=dtype),
                                      up_front, strict=True):
        x = backend.to_numpy(x)
        assert x.dtype == expected_dtype and x.shape == (len(y_ref), 3, 32, 32)
        np.testing.assert_array_equal(x, x_ref)
        np.testing.assert_array_equal(backend.to_numpy(y), y_ref)


class _Normalized:
    """A split as normalized floats (``data``), not pixels."""

    def __init__(self, split):
        self.data, self.targets = split.data, split.targets

    def __len__(self):
        return len(self.targets)


@pytest.mark.parametrize("dtype", [None, np.float64])
def test_every_pixel_value_normalizes_as_torchvision_does_on_every_backend(backend, dtype):
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)  # HWC, every value once a channel
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    expected = transform(Image.fromarray(levels)).numpy().astype(dtype or np.float32)
    pixels = np.ascontiguousarray(levels.transpose(2, 0, 1))[None]
    on_backend = backend.normalize_pixels(backend.asarray(pixels), dtype)
    for got in (data.normalize(pixels, dtype), backend.to_numpy(on_backend)):
        assert got.dtype == expected.dtype and got.shape == (1,) + expected.shape
        np.testing.assert_array_equal(got[0], expected)  # bit for bit
