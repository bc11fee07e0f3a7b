"""Where the CIFAR-10 files come from: the folder under a root, the official archive extracted safely or
downloaded with its MD5 verified, and a notice, once, when a copy is not the official release."""

import concurrent.futures
import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request

from tqdm import tqdm

from scratchnet.files import atomic_open, cache_folder, missing_folders, remove_empty_folders

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE = "cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
# MD5s of the official release's files (as torchvision lists them): a local copy
# that differs still loads, with a notice that it is not the official data.
OFFICIAL_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
class DataError(RuntimeError):
    """The data is missing, damaged or unreachable; the message says what to do."""


_noticed_folders = set()  # said in this process (also where the notice cannot be remembered on disk)


def locate(root, download=False):
    """The ``cifar-10-batches-py`` folder under ``root``: extracted from the archive or downloaded if need be."""
    folder = os.path.join(root, FOLDER)
    missing = _missing_batches(folder)
    if not missing:
        return folder
    archive = os.path.join(root, ARCHIVE)
    if not os.path.isfile(archive):
        if os.path.isdir(folder) and not download:
            raise DataError(f"{folder} is incomplete: {', '.join(missing)} missing; restore the files, "
                            f"put {ARCHIVE} beside it, or pass --download")
        if not download:
            raise DataError(
                f"CIFAR-10 not found: expected {folder}{os.sep} (the official python version) or {archive}; "
                f"put the data there, point --data at the folder that holds {FOLDER}, or pass --download"
            )
        created = missing_folders(root)
        try:
            fetch(archive)
        except DataError:
            remove_empty_folders(created)  # a failed download leaves no empty data folder behind
            raise
    extract(archive, root)
    if _missing_batches(folder):
        raise DataError(f"{archive} holds no complete {FOLDER}{os.sep} folder; delete it and pass --download")
    return folder


def _missing_batches(folder):
    return [name for name in TRAIN_FILES + TEST_FILES if not os.path.isfile(os.path.join(folder, name))]


class OfficialCheck:
    """Says once when a folder's files are not the official release (they still load).

    Once for the user, not once per command: a notice said is remembered (a marker file
    named by the folder and its files' sizes and times, so changed files are checked
    again), and a remembered folder is not hashed again either. The files are hashed on
    a second thread while they are read (hashing releases the GIL), and only until one
    differs: one hash is enough to say so.
    """

    def __init__(self, folder, names):
        self.folder, self._marker = folder, _notice_marker(folder)
        noticed = folder in _noticed_folders or os.path.exists(self._marker)
        self._pool = None if noticed else concurrent.futures.ThreadPoolExecutor(1)
        if self._pool is not None:
            _noticed_folders.add(folder)
            self._hashes = {name: self._pool.submit(md5sum, os.path.join(folder, name)) for name in names}

    def notice(self, read):
        if self._pool is None:
            return
        differing = next((name for name in read if self._hashes[name].result() != OFFICIAL_MD5[name]), None)
        if differing is not None:
            print(
                f"note: {self.folder} is not the official CIFAR-10 release (the MD5 sum of {differing} differs); "
                f"using it as is, so accuracies may differ slightly from published ones (said once)",
                file=sys.stderr,
            )
            try:
                os.makedirs(os.path.dirname(self._marker), exist_ok=True)
                open(self._marker, "w").close()
            except OSError:  # an unwritable cache: the notice comes again next time, nothing worse
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)  # the hashes still queued are not needed


def _notice_marker(folder):
    """The file whose existence says the notice about ``folder``'s files, as they are now, was given."""
    stats = [os.stat(os.path.join(folder, name)) for name in TRAIN_FILES + TEST_FILES]
    key = "\0".join([os.path.abspath(folder), *(f"{stat.st_size}:{stat.st_mtime_ns}" for stat in stats)])
    return os.path.join(cache_folder(), "notices", hashlib.sha256(key.encode()).hexdigest())


def md5sum(path, chunk=1 << 20):
    digest = hashlib.md5()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


# ---- download and extraction ----------------------------------------------------------------


def fetch(archive, url=URL, md5=ARCHIVE_MD5):
    """Download ``url`` to ``archive`` with a progress bar; verify its MD5, then move it into place atomically."""
    digest = hashlib.md5()
    try:
        with atomic_open(archive) as out, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=os.path.basename(archive)) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
            got = digest.hexdigest()
            if got != md5:  # raising here discards the partial file
                raise DataError(f"downloaded {url} but its MD5 is {got}, expected {md5}; try again")
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(
            f"could not download {url} ({getattr(exc, 'reason', exc)}); download it by hand and put it at {archive}, "
            f"or point --data at a folder that holds {FOLDER}"
        ) from None


def extract(archive, root):
    """Unpack the official archive into ``root``, refusing members that are not plain files inside ``FOLDER``."""
    try:
        staging = tempfile.mkdtemp(prefix=".extract-", dir=root)
    except OSError as exc:
        raise DataError(f"cannot extract {archive}: {root} is not writable ({exc.strerror}); extract it "
                        f"elsewhere and point --data there, or make {root} writable") from None
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = tar.getmembers()
                for member in members:
                    if not _safe_member(member):
                        raise DataError(
                            f"{archive}: refused member {member.name!r} (not a plain file inside {FOLDER}/)"
                        )
                # The "data" filter (Python >= 3.10.12) re-checks every member; the check above suffices without it.
                safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(staging, members=members, **safe)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DataError(f"{archive} is not a readable .tar.gz ({exc}); delete it and pass --download") from None
        target = os.path.join(root, FOLDER)
        if os.path.isdir(target):  # an incomplete earlier copy: replace it
            os.rename(target, os.path.join(staging, "previous"))
        os.replace(os.path.join(staging, FOLDER), target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _safe_member(member):
    parts = member.name.replace("\\", "/").split("/")
    inside = parts[0] == FOLDER and ".." not in parts and not os.path.isabs(member.name)
    return inside and (member.isfile() or member.isdir())
