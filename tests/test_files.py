"""Files written whole or not at all: a failure while writing leaves the old file and no temporary."""

import csv
import json
import os

import pytest

from tfvae import files


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
