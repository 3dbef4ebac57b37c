"""Fréchet Inception Distance as pytorch-fid computes it (docs/DESIGN.md §5, §D.5).

    variables = load_inception("weights/inception_fid.npz")  # see inception.CONVERT_COMMAND
    feats = extract_features(variables, images, batch_size=32, mesh=mesh)   # (N, 2048) f32
    mu, sigma = compute_statistics(feats)                                    # float64
    fid = frechet_distance(mu, sigma, *load_statistics("stats/cityscapes_val.npz"))

* `extract_features`: pool3 features of NHWC images in [-1, 1] (float) or uint8 [0, 255]
  (mapped to [-1, 1] as pytorch-fid does for its PNG inputs), given as one array or an
  iterable of batches of any size. Batches of `batch_size` go through one jitted function
  with the batch sharded on the `data` axis of `mesh`; the last partial batch is padded with
  zeros and the padding dropped, so one shape is compiled.
* Statistics: mean and `np.cov(rowvar=False)` in float64; `.npz` files with keys `mu`,
  `sigma` (pytorch-fid's `--save-stats` format, readable by it and from it).
* `frechet_distance`: ||mu1 - mu2||² + Tr(S1 + S2 - 2 sqrt(S1 S2)) in float64 with
  `scipy.linalg.sqrtm`; like pytorch-fid, a non-finite square root is retried with 1e-6 added
  to both diagonals and a complex one keeps its real part when the imaginary part of its
  diagonal is within 1e-3 of 0 (else ValueError).

Note for parity with published numbers: pytorch-fid reads saved 8-bit PNGs; quantise
generated images to uint8 the same way before calling `extract_features` to reproduce that.
Multi-process: `mesh` must be addressable by the calling process (default: its local devices);
each process extracts the features of the images it is given.
"""

from __future__ import annotations

import functools
import io
import os
import zipfile
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from etils import epath
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ecgan_jax.eval.inception import CONVERT_COMMAND, FEATURE_DIM, InceptionV3FID, load_inception
from ecgan_jax.sharding import DATA_AXIS, local_mesh

__all__ = [
    "compute_statistics",
    "extract_features",
    "fid_from_features",
    "frechet_distance",
    "load_inception",
    "load_statistics",
    "save_statistics",
    "statistics_from_images",
]

STATS_COMMAND = (
    "ecgan_jax.eval.fid: mu, sigma = compute_statistics(extract_features(load_inception(W), "
    "real_images, batch_size=...)); save_statistics(FILE, mu, sigma) — or pytorch-fid's "
    "`python -m pytorch_fid --save-stats IMAGE_DIR FILE.npz`; the Inception weights file W "
    f"comes from: {CONVERT_COMMAND}"
)


def default_mesh() -> Mesh:
    """A `data` mesh over every local device."""
    return local_mesh()


@functools.lru_cache(maxsize=8)
def _feature_fn(mesh: Mesh, resize_input: bool):
    model = InceptionV3FID(resize_input=resize_input)
    batch = NamedSharding(mesh, P(DATA_AXIS))

    def features(variables, images):
        if images.dtype == jnp.uint8:
            images = images.astype(jnp.float32) / 127.5 - 1.0
        return model.apply(variables, images)

    return jax.jit(features, in_shardings=(NamedSharding(mesh, P()), batch), out_shardings=batch)


def _batches(images, batch_size: int):
    """Yields arrays of exactly `batch_size` rows except possibly the last."""
    if isinstance(images, np.ndarray | jax.Array):
        for start in range(0, images.shape[0], batch_size):
            yield np.asarray(images[start : start + batch_size])
        return
    pending, count = [], 0
    for chunk in images:
        chunk = np.asarray(chunk)
        pending.append(chunk)
        count += chunk.shape[0]
        while count >= batch_size:
            merged = np.concatenate(pending) if len(pending) > 1 else pending[0]
            yield merged[:batch_size]
            rest = merged[batch_size:]
            pending, count = ([rest] if rest.shape[0] else []), rest.shape[0]
    if count:
        yield np.concatenate(pending)


def extract_features(
    variables,
    images: np.ndarray | jax.Array | Iterable,
    *,
    batch_size: int,
    mesh: Mesh | None = None,
    resize_input: bool = True,
) -> np.ndarray:
    """(N, 2048) float32 pool3 features of (N, H, W, 3) images (float in [-1, 1] or uint8).

    `images`: one array or an iterable of (b, H, W, 3) arrays (any b). `batch_size` must be a
    multiple of the mesh's device count. `variables`: from `load_inception` (or
    `inception.init_inception` for tests).
    """
    mesh = default_mesh() if mesh is None else mesh
    n_dev = mesh.devices.size
    if batch_size <= 0 or batch_size % n_dev:
        raise ValueError(
            f"extract_features: batch_size={batch_size} must be a positive multiple of the "
            f"mesh's device count ({n_dev})"
        )
    fn = _feature_fn(mesh, resize_input)
    variables = jax.device_put(variables, NamedSharding(mesh, P()))
    outputs = []
    for batch in _batches(images, batch_size):
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(f"extract_features: images must be (B, H, W, 3), got {batch.shape}")
        if batch.dtype != np.uint8:
            batch = batch.astype(np.float32)
        n = batch.shape[0]
        if n < batch_size:  # pad: one compiled shape; padded rows are dropped below
            pad = np.zeros((batch_size - n, *batch.shape[1:]), batch.dtype)
            batch = np.concatenate([batch, pad])
        outputs.append((fn(variables, batch), n))
    if not outputs:
        return np.zeros((0, FEATURE_DIM), np.float32)
    return np.concatenate([np.asarray(out)[:n] for out, n in outputs])


def compute_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mu (D,), sigma (D, D)) in float64 of (N, D) features; N >= 2."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(
            f"compute_statistics: features must be (N, D) with N >= 2, got {features.shape}"
        )
    return features.mean(axis=0), np.cov(features, rowvar=False)


def statistics_from_images(variables, images, *, batch_size: int, mesh: Mesh | None = None):
    """`compute_statistics(extract_features(...))`."""
    feats = extract_features(variables, images, batch_size=batch_size, mesh=mesh)
    return compute_statistics(feats)


def frechet_distance(mu1, sigma1, mu2, sigma2, *, eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), float64, pytorch-fid's rules."""
    mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"frechet_distance: mean shapes differ: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
        raise ValueError(
            f"frechet_distance: covariances must both be {(mu1.shape[0],) * 2}, got "
            f"{sigma1.shape} and {sigma2.shape}"
        )
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(
                f"frechet_distance: sqrt(sigma1 sigma2) has an imaginary component of "
                f"{np.max(np.abs(covmean.imag)):.3g}"
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID between two (N, D) feature sets."""
    return frechet_distance(*compute_statistics(features1), *compute_statistics(features2))


def save_statistics(
    path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray, *, compress: bool = True
) -> None:
    """Writes pytorch-fid's statistics format: `.npz` with `mu` (D,), `sigma` (D, D), float64.

    `path` is a local path or any `etils.epath` location (gs://...); the file is written
    whole to a temporary name and then renamed, so a reader never sees half a file.
    `compress=False` skips zlib (seconds for a 2048² covariance, for little gain).
    """
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"save_statistics({path}): mu {mu.shape} / sigma {sigma.shape} mismatch")
    buffer = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buffer, mu=mu, sigma=sigma)
    write_atomic(path, buffer.getvalue())


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to a temporary sibling of `path` (local or epath), then renames it."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_bytes(data)
    tmp.replace(path)


def load_statistics(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) float64 from a statistics `.npz` (ours or pytorch-fid's; local or epath)."""
    path = epath.Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"FID statistics file not found: {path}. Nothing is downloaded; make it with "
            f"{STATS_COMMAND}"
        )
    try:
        with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as f:
            files = list(f.files)
            if "mu" in files and "sigma" in files:
                mu, sigma = np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64)
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as e:
        raise ValueError(
            f"cannot read FID statistics {path} ({type(e).__name__}: {e}); make it again with "
            f"{STATS_COMMAND}"
        ) from e
    missing = [k for k in ("mu", "sigma") if k not in files]
    if missing:
        raise ValueError(
            f"{path}: missing {missing}; a statistics file holds 'mu' and 'sigma' (found {files})"
        )
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not match")
    return mu, sigma
