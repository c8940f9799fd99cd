"""Tests for advi_jax.data: bundled sets, CSV/NPZ loaders and their errors, the data-file search."""

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from advi_jax import data

from conftest import SHARED_DATA

DATASETS_DIR = Path(data.__file__).parent / "datasets"


def _readme_hashes():
    text = (DATASETS_DIR / "README.md").read_text()
    out = {}
    for line in text.splitlines():
        cells = [c.strip().strip("`") for c in line.split("|")]
        if len(cells) > 6 and cells[2].endswith(".npz"):
            out[cells[2]] = cells[6]
    return out


def test_bundled_files_match_readme_sha256():
    hashes = _readme_hashes()
    assert set(hashes) == {"breast_cancer.npz", "randhie.npz"}
    for name, digest in hashes.items():
        assert hashlib.sha256((DATASETS_DIR / name).read_bytes()).hexdigest() == digest
    total = sum((DATASETS_DIR / n).stat().st_size for n in hashes)
    assert total < 300_000


def test_load_bundled():
    x, y, names = data.load_dataset("breast_cancer")
    assert x.shape == (569, 30) and y.shape == (569,) and len(names) == 30
    assert x.dtype == np.float64 and y.sum() == 212 and set(np.unique(y)) == {0.0, 1.0}
    np.testing.assert_allclose(x.sum(), 1056474.4596356)
    x, y, names = data.load_dataset("randhie")
    assert x.shape == (20190, 9) and names[0] == "lncoins"
    assert y.sum() == 57752 and np.all(y >= 0)
    with pytest.raises(ValueError, match="breast_cancer"):
        data.load_dataset("iris")


def _write_csv(tmp_path, text, name="t.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_load_csv_ok(tmp_path):
    p = _write_csv(tmp_path, "a,b,y\n1,2.5,0\n3,-1,1\n0.5,0,1\n")
    x, y, names = data.load_csv(p, target="y", kind="logistic")
    assert names == ("a", "b")
    np.testing.assert_array_equal(x, [[1, 2.5], [3, -1], [0.5, 0]])
    np.testing.assert_array_equal(y, [0, 1, 1])
    x, y, names = data.load_csv(p, target="a", features=["b"])
    assert names == ("b",) and x.shape == (3, 1)


@pytest.mark.parametrize(
    "text, kwargs, match",
    [
        ("a,y\n1,0\n2,1\n", {"target": "z"}, r"target column 'z' not found; available columns: \['a', 'y'\]"),
        ("a,c,y\n1,x,0\n2,u,1\n", {"target": "y"}, r"non-numeric columns \['c'\]"),
        ("a,y\n1,0\n,1\n", {"target": "y"}, r"missing values .* in 1 of 2 rows: 'a' in rows 1 .*dropna=True"),
        ("a,y\n1,0\ninf,1\n", {"target": "y"}, r"column 'a' has an infinite value at row 1"),
        ("a;b;y\n1;2;0\n2;3;1\n", {"target": "y"}, r"looks ';'-separated: pass delimiter=';'.*--delimiter ';'"),
        ("a,y\n1,0\n2,1\n", {"target": "y", "delimiter": "::"}, r"delimiter must be one character"),
        ("a,y\n1,0\n2,2\n", {"target": "y", "kind": "logistic"}, r"must be 0 or 1.*row 1 is 2"),
        ("a,y\n1,0\n2,1.5\n", {"target": "y", "kind": "poisson"}, r"non-negative integer.*row 1 is 1.5"),
        ("a,y\n1,0\n2,-1\n", {"target": "y", "kind": "poisson"}, r"non-negative integer.*row 1 is -1"),
        ("a,y\n1,0\n", {"target": "y"}, r"too few rows: 1"),
        ("a,y\n1,0\n2\n", {"target": "y"}, r"data row 1 .* has 1 fields"),
        ("a,y\n1,0\n2,1\n", {"target": "y", "features": ["q"]}, r"feature columns \['q'\] not found"),
    ],
)
def test_load_csv_errors(tmp_path, text, kwargs, match):
    p = _write_csv(tmp_path, text)
    with pytest.raises(ValueError, match=match):
        data.load_csv(p, **kwargs)


def test_load_csv_ignores_unselected_string_columns(tmp_path):
    p = _write_csv(tmp_path, "id,a,city,y\nA1,1,Oslo,0\nB2,2,Rome,1\nC3,3.5,Lima,1\n")
    x, y, names = data.load_csv(p, target="y", features=["a"], kind="logistic")
    assert names == ("a",)
    np.testing.assert_array_equal(x[:, 0], [1, 2, 3.5])
    with pytest.raises(ValueError, match=r"non-numeric columns \['id', 'city'\]"):
        data.load_csv(p, target="y")  # all columns selected by default: the strings are named


def test_load_csv_missing_values_named_and_dropped(tmp_path):
    p = _write_csv(tmp_path, "a,b,note,y\n1,2,,0\nNA,3,x,1\n2,,y,1\n4,5,,0\n5,1,,1\n")
    with pytest.raises(ValueError, match=r"in 2 of 5 rows: 'a' in rows 1; 'b' in rows 2"):
        data.load_csv(p, target="y", features=["a", "b"])
    with pytest.warns(data.MissingValuesWarning, match=r"dropped 2 of 5 rows .* 3 rows remain"):
        x, y, names = data.load_csv(p, target="y", features=["a", "b"], dropna=True)
    np.testing.assert_array_equal(x, [[1, 2], [4, 5], [5, 1]])
    np.testing.assert_array_equal(y, [0, 0, 1])


def test_load_csv_other_delimiters(tmp_path):
    p = _write_csv(tmp_path, "a;b;y\n1,5;2;0\n2;3;1\n")
    with pytest.raises(ValueError, match="non-numeric"):  # "1,5": a decimal comma stays an error
        data.load_csv(p, target="y", delimiter=";")
    p = _write_csv(tmp_path, "a\tb\ty\n1\t2\t0\n2\t3\t1\n")
    with pytest.raises(ValueError, match="tab-separated"):
        data.load_csv(p, target="y")
    x, y, names = data.load_csv(p, target="y", delimiter="tab")
    assert names == ("a", "b") and x.shape == (2, 2)


def test_truncated_npz_names_the_file(tmp_path):
    p = tmp_path / "full.npz"
    np.savez_compressed(p, a=np.arange(2000.0), y=np.arange(2000) % 2)
    blob = p.read_bytes()
    for cut, name in ((len(blob) // 2, "half.npz"), (len(blob) - 30, "tail.npz")):
        q = tmp_path / name
        q.write_bytes(blob[:cut])
        with pytest.raises(ValueError, match=rf"{name}: not a readable .npz file \(truncated or corrupt"):
            data.load_npz(q, target="y")


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="data file not found"):
        data.load_csv(tmp_path / "nope.csv", target="y")
    with pytest.raises(ValueError, match="data file not found"):
        data.load_npz(tmp_path / "nope.npz", target="y")


def test_load_npz(tmp_path):
    p = tmp_path / "t.npz"
    np.savez(p, dist=np.array([1.0, 2.0, 3.0]), switched=np.array([0, 1, 1], np.uint8),
             block=np.arange(6.0).reshape(3, 2))
    x, y, names = data.load_npz(p, target="switched", kind="logistic")
    assert names == ("dist", "block_0", "block_1")
    np.testing.assert_array_equal(x[:, 2], [1, 3, 5])
    with pytest.raises(ValueError, match=r"available columns: \['dist', 'switched', 'block_0', 'block_1'\]"):
        data.load_npz(p, target="y")
    q = tmp_path / "s.npz"
    np.savez(q, a=np.array([1.0, 2.0]), s=np.array(["u", "v"]), y=np.array([0, 1]))
    with pytest.raises(ValueError, match=r"non-numeric arrays \['s'\]"):
        data.load_npz(q, target="y")
    r = tmp_path / "n.npz"
    np.savez(r, a=np.array([1.0, np.nan, 2.0]), y=np.array([0, 1, 1]))
    with pytest.raises(ValueError, match=r"missing values .*'a' in rows 1"):
        data.load_npz(r, target="y")
    u = tmp_path / "u.npz"
    np.savez(u, a=np.array([1.0, 2.0, 3.0]), y=np.array([0, 1]))
    with pytest.raises(ValueError, match="different numbers of rows"):
        data.load_npz(u, target="y")


def test_find_data_file_search_order_and_hash(tmp_path, monkeypatch):
    first, cache = tmp_path / "first", tmp_path / "cache"
    first.mkdir()
    (cache / "advi_jax").mkdir(parents=True)
    payload = b"hello"
    digest = hashlib.sha256(payload).hexdigest()
    (cache / "advi_jax" / "f.bin").write_bytes(payload)
    monkeypatch.setenv("ADVI_JAX_DATA", str(first))
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    assert data.find_data_file("f.bin", digest) == cache / "advi_jax" / "f.bin"
    (first / "f.bin").write_bytes(b"corrupt")
    # the env folder is searched first, but its copy has the wrong hash: the cache copy wins
    assert data.find_data_file("f.bin", digest) == cache / "advi_jax" / "f.bin"
    assert data.find_data_file("f.bin", "") == first / "f.bin"
    with pytest.raises(ValueError, match=r"'g.bin' not found; searched: \[.*first.*cache.*\]"):
        data.find_data_file("g.bin", digest)
    (cache / "advi_jax" / "f.bin").unlink()
    with pytest.raises(ValueError, match="wrong sha256"):
        data.find_data_file("f.bin", digest)


def test_load_mnist_from_shared(monkeypatch):
    assert os.path.isdir(SHARED_DATA), f"the shared datasets folder {SHARED_DATA} must sit beside the checkout"
    monkeypatch.setenv("ADVI_JAX_DATA", SHARED_DATA)
    x, y = data.load_mnist("mnist", "test")
    assert x.shape == (10000, 784) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    np.testing.assert_array_equal(np.bincount(y), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    with pytest.raises(ValueError, match="split"):
        data.load_mnist("mnist", "valid")
