"""Tests for advi_jax.data: bundled sets, CSV/NPZ loaders and their errors, the data-file search."""

import hashlib
from pathlib import Path

import numpy as np
import pytest

from advi_jax import data, data_files

from conftest import require_data_file
from fixtures.mnist_like import make_mnist_like

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
        ("a,y\n1,0\n2,1\n", {"target": "y", "features": ["a", "a"]}, r"feature columns \['a'\] are listed more than once"),
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


def test_load_mnist_real_file_honours_advi_jax_data(monkeypatch, tmp_path):
    """The real mnist.npz (skipped with the reason when absent), found through $ADVI_JAX_DATA."""
    path = require_data_file("mnist.npz")
    monkeypatch.setenv("ADVI_JAX_DATA", str(path.parent))
    monkeypatch.setattr(data_files, "_checkout_root", lambda: tmp_path / "elsewhere" / "repo")  # no shared/ fallback
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    x, y = data.load_mnist("mnist", "test")
    assert x.shape == (10000, 784) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    np.testing.assert_array_equal(np.bincount(y), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    mnist = data.load_mnist("mnist")
    assert mnist.x_train.shape == (60000, 784) and mnist.path == path
    np.testing.assert_allclose(mnist.x_train.mean(), 0.13066, atol=1e-4)
    with pytest.raises(ValueError, match="split"):
        data.load_mnist("mnist", "valid")


@pytest.fixture
def isolated_search(monkeypatch, tmp_path):
    """Only the folders a test names are searched: no cache copy, no shared/ beside the checkout."""
    monkeypatch.delenv("ADVI_JAX_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(data_files, "_checkout_root", lambda: tmp_path / "elsewhere" / "repo")
    return tmp_path


def test_load_mnist_accepts_users_own_arrays(isolated_search, mnist_like_dir, monkeypatch):
    """Any copy with the right keys, shapes, dtypes and ranges loads (content checked, not the hash)."""
    monkeypatch.setenv("ADVI_JAX_DATA", str(mnist_like_dir))
    raw = np.load(mnist_like_dir / "mnist.npz")
    mnist = data.load_mnist("mnist")
    assert isinstance(mnist, data.MNIST) and mnist.path == mnist_like_dir / "mnist.npz"
    assert mnist.x_train.shape == (300, 784) and mnist.x_test.shape == (100, 784) and not mnist.binarized
    np.testing.assert_array_equal(mnist.x_train, raw["x_train"].reshape(300, 784) / np.float32(255))
    np.testing.assert_array_equal(mnist.y_test, raw["y_test"]) and mnist.y_test.dtype == np.int32
    x, y = data.load_mnist("mnist", "test")
    np.testing.assert_array_equal(x, mnist.x_test)
    fashion = data.load_mnist("fashion_mnist")
    assert fashion.x_train.shape == (300, 784) and not np.array_equal(fashion.x_train, mnist.x_train)
    binarized = data.load_mnist("binarized_mnist")
    assert binarized.binarized and binarized.y_train is None and binarized.x_valid.shape == (100, 784)
    assert set(np.unique(binarized.x_train)) == {0.0, 1.0}
    # flattened (N, 784) images work as well as (N, 28, 28)
    arrays = {k: (v.reshape(len(v), 784) if k.startswith("x") else v) for k, v in raw.items()}
    np.savez(isolated_search / "mnist.npz", **arrays)
    np.testing.assert_array_equal(data.load_mnist("mnist", data_dir=isolated_search).x_train, mnist.x_train)


def _bad_copies():
    good = make_mnist_like(20, 10)
    yield "float", {**good, "x_train": good["x_train"] / 255.0}, r"x_train has dtype float64; expected uint8.*255"
    yield "shape", {**good, "x_test": good["x_test"][:, :27]}, r"x_test has shape \(10, 27, 28\)"
    yield "labels", {**good, "y_train": good["y_train"] + 5}, r"y_train has labels in \[5, 14\]"
    yield "count", {**good, "y_test": good["y_test"][:9]}, r"y_test has shape \(9,\); expected \(10,\)"
    yield "missing", {k: v for k, v in good.items() if k != "y_test"}, r"missing arrays \['y_test'\]"


@pytest.mark.parametrize("what, arrays, match", list(_bad_copies()), ids=[c[0] for c in _bad_copies()])
def test_load_mnist_names_the_bad_file_and_the_problem(isolated_search, what, arrays, match):
    np.savez(isolated_search / "mnist.npz", **arrays)
    with pytest.raises(data.DataFileNotFound, match=match) as info:
        data.load_mnist("mnist", data_dir=isolated_search)
    assert str(isolated_search / "mnist.npz") in str(info.value)


def test_truncated_npz_error_names_the_file(isolated_search, mnist_like_dir):
    blob = (mnist_like_dir / "mnist.npz").read_bytes()
    (isolated_search / "mnist.npz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(data.DataFileNotFound, match=r"mnist\.npz: not a readable \.npz file \(truncated") as info:
        data.load_mnist("mnist", data_dir=isolated_search)
    assert str(isolated_search / "mnist.npz") in str(info.value)


def test_bad_copy_is_skipped_with_a_warning(isolated_search, mnist_like_dir, monkeypatch):
    (isolated_search / "mnist.npz").write_bytes(b"not a zip file")
    monkeypatch.setenv("ADVI_JAX_DATA", str(mnist_like_dir))
    with pytest.warns(UserWarning, match=r"skipped unusable copies of mnist\.npz.*not a readable"):
        mnist = data.load_mnist("mnist", data_dir=isolated_search)
    assert mnist.path == mnist_like_dir / "mnist.npz"


@pytest.mark.parametrize("name", data.MNIST_NAMES)
def test_missing_mnist_says_where_to_get_it_and_the_format(isolated_search, name):
    with pytest.raises(FileNotFoundError) as info:
        data.load_mnist(name, data_dir=isolated_search / "mine")
    message = str(info.value)
    assert f"data file '{name}.npz' not found" in message and str(isolated_search / "mine") in message
    assert "ADVI_JAX_DATA" in message and "does not download" in message
    assert "uint8" in message and "28, 28)" in message and "np.savez_compressed" in message
    assert ("x_valid" in message) == (name == "binarized_mnist")
    assert "\n" not in message


def test_load_mnist_rejects_unknown_names(isolated_search):
    with pytest.raises(ValueError, match=r"name must be one of \['mnist', 'fashion_mnist', 'binarized_mnist'\]"):
        data.load_mnist("kmnist")
    with pytest.raises(ValueError, match=r"split for mnist must be None or one of"):
        data.load_mnist("mnist", "valid")


def test_shared_data_is_found_beside_a_worktrees_main_checkout(tmp_path):
    """A git worktree's `.git` file points into <main>/.git/worktrees/<name>: shared/ sits beside <main>."""
    main = tmp_path / "main"
    (main / ".git" / "worktrees" / "wt").mkdir(parents=True)
    (main / ".git" / "worktrees" / "wt" / "commondir").write_text("../..\n")
    (main / "advi_jax").mkdir()
    worktree = tmp_path / "trees" / "wt"
    (worktree / "advi_jax").mkdir(parents=True)
    (worktree / ".git").write_text(f"gitdir: {main / '.git' / 'worktrees' / 'wt'}\n")
    assert data_files._checkout_root(worktree / "advi_jax") == main
    assert data_files._checkout_root(main / "advi_jax") == main  # a plain clone: its own root
    assert data_files._checkout_root(tmp_path / "site" / "advi_jax") == tmp_path / "site"  # installed, no .git


def test_load_csv_reads_a_utf8_byte_order_mark(tmp_path):
    """Excel's "CSV UTF-8" starts the file with a byte order mark: the first column is still named 'a'."""
    p = tmp_path / "excel.csv"
    p.write_bytes("a,b,y\r\n1,2,0\r\n2,3,1\r\n3,1,0\r\n".encode("utf-8-sig"))
    x, y, names = data.load_csv(p, target="y", features=["a"])
    assert names == ("a",)
    np.testing.assert_array_equal(x[:, 0], [1, 2, 3])
    _, _, names = data.load_csv(p, target="y")
    assert names == ("a", "b")
