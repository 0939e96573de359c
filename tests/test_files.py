"""Files written whole or not at all: a failure while writing leaves the old file and no temporary."""

import csv
import json
import os

import pytest

from tfvae.utils import files


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    files.write_json(path, {"auroc": 0.9})
    with pytest.raises(RuntimeError):
        with files.open_whole(path) as f:
            f.write('{"auroc": 0.')  # half written, then the writer fails
            raise RuntimeError("disk full")
    assert json.loads(path.read_text()) == {"auroc": 0.9}
    assert os.listdir(tmp_path) == ["results.json"]


def test_temporary_names_keep_the_suffix_writers_choose_formats_by(tmp_path):
    import nibabel as nib
    import numpy as np

    path = tmp_path / "scan_tfvae_score.nii.gz"
    with files.written_whole(path) as tmp:
        assert tmp.endswith("scan_tfvae_score.nii.gz") and os.path.dirname(tmp) == str(tmp_path)
        nib.save(nib.Nifti1Image(np.ones((2, 2, 2), np.float32), np.eye(4)), tmp)
    assert nib.load(path).get_fdata().sum() == 8 and os.listdir(tmp_path) == [path.name]
    with open(path, "rb") as f:
        assert f.read(2) == b"\x1f\x8b"  # gzip, as the final name asks


def test_text_json_and_csv_round_trip(tmp_path):
    files.write_text(tmp_path / "a.md", "# title")
    assert (tmp_path / "a.md").read_text() == "# title\n"
    files.write_csv(tmp_path / "rows.csv", [{"id": 1, "ml": 2.5}, {"id": 2}], header=["id", "ml"])
    with open(tmp_path / "rows.csv", newline="") as f:
        assert list(csv.reader(f)) == [["id", "ml"], ["1", "2.5"], ["2", ""]]
    files.write_csv(tmp_path / "plain.csv", [[1, 2]], header=["a", "b"])
    assert (tmp_path / "plain.csv").read_text().splitlines() == ["a,b", "1,2"]
    with pytest.raises(ValueError, match="not a write mode"):
        with files.open_whole(tmp_path / "a.md", "a"):
            pass


# --- issue 31: operating-system errors as one line naming the file and what to do ---------------------
def test_os_errors_name_the_file_what_happened_and_what_to_do(tmp_path):
    import errno

    out = tmp_path / "eval" / "results.json"
    full = files.os_error(OSError(errno.ENOSPC, "No space left on device", str(out)),
                          elsewhere="evaluate into another folder (--out DIR)")
    assert full.startswith(f"{out}: no space left on device (") and " free there)" in full
    assert full.endswith("; free space on that disk, or evaluate into another folder (--out DIR)")
    # a writer that names no file (gzip, h5py, nibabel): the file being written is named instead
    nameless = files.os_error(OSError(errno.ENOSPC, "No space left on device"), str(out))
    assert nameless.startswith(f"{out}: no space left on device (")
    assert files.os_error(OSError(errno.EROFS, "Read-only file system", "/mnt/ro/x")) == \
        "/mnt/ro/x: read-only file system; write to a folder on a writable disk"
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    assert files.os_error(OSError(errno.ENOTDIR, "Not a directory", f"{a_file}/tfds/downloads")) == \
        f"{a_file}/tfds/downloads: {a_file} is a file, not a folder; name a folder"
    assert files.os_error(OSError(errno.EACCES, "Permission denied", "/data")) == \
        "/data: permission denied; give yourself access to it, or write somewhere else"


def test_the_os_error_behind_another_libraries_exception_is_found():
    """TensorFlow's file writers report a full disk as ``ResourceExhaustedError: <path>; No space left on
    device``, which TFDS wraps in a RuntimeError; a BadInputError raised ``from None`` hides its cause."""
    import errno

    import tensorflow as tf

    try:
        try:
            raise tf.errors.ResourceExhaustedError(None, None, "/data/tfds/x/incomplete/train.tfrecord-00000; No "
                                                               "space left on device")
        except tf.errors.OpError as inner:
            raise RuntimeError(f'ResourceExhaustedError: Failed to finalize writing of split "train": {inner}') \
                from inner
    except RuntimeError as e:
        found = files.as_os_error(e)
    assert found.errno == errno.ENOSPC and found.filename == "/data/tfds/x/incomplete/train.tfrecord-00000"
    try:
        try:
            raise PermissionError(errno.EACCES, "Permission denied", "/x")
        except PermissionError:
            raise ValueError("/x: cannot be read (permission denied)") from None
    except ValueError as e:
        assert files.as_os_error(e) is None  # said by its own message, not turned into a disk problem
    assert files.as_os_error(ValueError("a value")) is None


def test_an_error_while_writing_whole_names_the_file_not_its_temporary_name(tmp_path):
    import errno

    path = tmp_path / "thresholds.json"
    for named in (None, "temporary"):  # a writer that names no file (gzip, h5py), one that names what it wrote
        with pytest.raises(OSError) as e:
            with files.written_whole(path) as tmp:
                with open(tmp, "w") as f:
                    f.write("{")
                raise OSError(errno.ENOSPC, "No space left on device", *([tmp] if named else []))
        assert e.value.filename == str(path) and not os.listdir(tmp_path)
    with pytest.raises(OSError) as e:  # an error about another file keeps its name
        with files.written_whole(path):
            raise OSError(errno.ENOENT, "No such file or directory", "/elsewhere")
    assert e.value.filename == "/elsewhere"
