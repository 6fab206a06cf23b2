"""Data of the center-loss example: scikit-learn digits, or MNIST / Fashion-MNIST from local files.

Everything is returned as NumPy arrays ``(images NCHW float32 in [0, 1], labels int64)``;
the training loop does the batching itself so that the batch order depends only on
``--seed`` and the epoch (which is what makes ``--resume`` exact).

Nothing here downloads anything. gluon's ``MNIST`` reader downloads a file when it is
missing *or* when its SHA-1 differs from the official one, so :func:`load_mnist_like`
checks the files first and hands gluon hashes it cannot disagree with.
"""
import hashlib
import os

import numpy as np

from examples import common

NUM_CLASSES = 10

# File names gluon's MNIST / FashionMNIST readers look for, with the official SHA-1s.
MNIST_FILES = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "6c95f4b05d2bf285e1bfb0e7960c31bd3b3f8a7d",
        "train-labels-idx1-ubyte.gz": "2a80914081dc54586dbdf242f9805a6b8d2a15fc",
        "t10k-images-idx3-ubyte.gz": "c3a25af1f52dad7f726cce8cacb138654b760d48",
        "t10k-labels-idx1-ubyte.gz": "763e7fa3757d93b0cdec073cef058b2004252c17",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "0cf37b0d40ed5169c6b3aba31069a9770ac9043d",
        "train-labels-idx1-ubyte.gz": "236021d52f1e40852b06a4c3008d8de8aef1e40b",
        "t10k-images-idx3-ubyte.gz": "626ed6a7c06dd17c0eec72fa3be1740f146a2863",
        "t10k-labels-idx1-ubyte.gz": "17f9ab60e7257a1620f4ad76bbbaf857c3920701",
    },
}
SOURCES = {
    "mnist": "http://yann.lecun.com/exdb/mnist/ (or any MNIST mirror)",
    "fashion-mnist": "https://github.com/zalandoresearch/fashion-mnist (data/fashion/)",
}
CLASS_NAMES = {
    "digits": [str(i) for i in range(10)],
    "mnist": [str(i) for i in range(10)],
    "fashion-mnist": ["T-shirt", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Boot"],
}


class DataError(RuntimeError):
    """The requested data set is not where it should be (message says what to do)."""


def _sha1(path):
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resize(images, size):
    """Bilinear resize of ``(N, 1, h, w)`` float images to ``(N, 1, size, size)``."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images.astype(np.float32)
    import mxnet as mx
    out = mx.nd.contrib.BilinearResize2D(mx.nd.array(images, dtype="float32"),
                                         height=size, width=size)
    return np.clip(out.asnumpy(), 0.0, 1.0)


def load_digits(size, test_fraction=0.25, split_seed=0):
    """scikit-learn's 8x8 digits (1797 images, shipped with scikit-learn), upscaled.

    The train/test split is stratified and fixed (``split_seed``), independent of
    the training seed, so every run is evaluated on the same 450 test images.
    """
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split
    bunch = sk_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None]   # pixel values are 0..16
    labels = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(images, labels, test_size=test_fraction,
                                              stratify=labels, random_state=split_seed)
    return (resize(x_tr, size), y_tr), (resize(x_te, size), y_te)


def check_mnist_files(name, data_dir):
    """Return ``{file: sha1_matches}``; raise :class:`DataError` naming missing files."""
    files = MNIST_FILES[name]
    if not data_dir:
        raise DataError(
            "--dataset %s needs --data-dir DIR pointing at a folder holding %s (from %s). "
            "Nothing is downloaded." % (name, ", ".join(files), SOURCES[name]))
    missing = [f for f in files if not os.path.isfile(os.path.join(data_dir, f))]
    if missing:
        present = sorted(os.listdir(data_dir)) if os.path.isdir(data_dir) else None
        unzipped = [f for f in missing if os.path.isfile(os.path.join(data_dir, f[:-3]))]
        hint = ""
        if unzipped:
            hint = " Found uncompressed %s: gzip them (gzip -k FILE)." % ", ".join(
                f[:-3] for f in unzipped)
        raise DataError(
            "--dataset %s: missing %s in %s (folder %s). Put the four files %s there, "
            "as published at %s. Nothing is downloaded.%s"
            % (name, ", ".join(missing), os.path.abspath(data_dir),
               "does not exist" if present is None else "holds %s" % (present or "nothing"),
               ", ".join(files), SOURCES[name], hint))
    return {f: _sha1(os.path.join(data_dir, f)) == sha for f, sha in files.items()}


def _gluon_reader(name):
    """gluon's MNIST / FashionMNIST reader, told the SHA-1s of the files on disk.

    ``mxnet.gluon.utils.download`` fetches a file that is missing or whose SHA-1
    differs from the expected one; with the files checked present and the expected
    hashes set to the actual ones, it never goes to the network.
    """
    from mxnet.gluon.data.vision import MNIST, FashionMNIST
    base = MNIST if name == "mnist" else FashionMNIST

    class LocalOnly(base):
        def _get_data(self):
            for attr in ("_train_data", "_train_label", "_test_data", "_test_label"):
                fname, _ = getattr(self, attr)
                setattr(self, attr, (fname, _sha1(os.path.join(self._root, fname))))
            super()._get_data()

    return LocalOnly


def load_mnist_like(name, data_dir, size, log=None):
    """MNIST or Fashion-MNIST from ``data_dir`` via gluon's readers, resized to ``size``."""
    matches = check_mnist_files(name, data_dir)
    differing = [f for f, ok in matches.items() if not ok]
    if differing and log is not None:
        log("note: %s differ from the official files (SHA-1); reading them anyway"
            % ", ".join(differing))
    reader = _gluon_reader(name)
    out = []
    for train in (True, False):
        dataset = reader(root=data_dir, train=train)
        images = dataset._data.asnumpy().astype(np.float32).transpose(0, 3, 1, 2) / 255.0
        labels = np.asarray(dataset._label).astype(np.int64)
        out.append((resize(images, size), labels))
    return tuple(out)


def load(name, data_dir=None, size=16, log=None):
    """``((x_train, y_train), (x_test, y_test))`` for ``digits``, ``mnist`` or ``fashion-mnist``."""
    if name == "digits":
        return load_digits(size)
    if name in MNIST_FILES:
        return load_mnist_like(name, data_dir, size, log=log)
    raise ValueError("unknown dataset %r" % name)


def subsample_imbalanced(labels, ratio, minority, seed=0):
    """Indices keeping every sample of the majority classes and ``1/ratio`` of the others.

    ``minority`` lists the classes to shrink; each keeps ``max(1, round(n / ratio))`` of its
    ``n`` samples, chosen with a fixed ``seed`` so the subset is the same in every run.
    """
    if ratio <= 1:
        return np.arange(len(labels))
    rng = np.random.RandomState(seed)
    keep = []
    for cls in range(int(labels.max()) + 1):
        idx = np.flatnonzero(labels == cls)
        if cls in minority:
            idx = np.sort(rng.choice(idx, max(1, int(round(len(idx) / ratio))), replace=False))
        keep.append(idx)
    return np.sort(np.concatenate(keep))


def batches(n, batch_size, seed, index):
    """Shuffled index batches of epoch ``index`` (counted from 0), the last one smaller
    when ``batch_size`` does not divide ``n``; see ``common.shuffled_batches``."""
    return common.shuffled_batches(n, batch_size, seed, index)
