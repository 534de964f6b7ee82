"""Synthetic benchmark scenes with exact object masks and boxes.

Every scene is a real-texture background (scikit-image photos, cropped, rescaled and
recoloured) with procedural clutter (lines, irregular blobs) and one or two objects.
Object classes differ by silhouette only; colour, scale, rotation, shading and position
are random per scene, and some objects are partly hidden by a clutter blob (the hidden
pixels are then not part of the object's mask).

A scene is a pure function of ``(split, index, seed, size)``: its random stream is
``numpy.random.default_rng([seed, split_id, index])``, so scenes are identical on every
machine and independent of the order they are generated in.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["SyntheticScenes", "Scene", "CLASSES", "SPLITS", "SCENE_TAG", "is_scene_file"]

#: the PNG text key :meth:`SyntheticScenes.save` writes: "split=test seed=0 index=3 classes=cross"
SCENE_TAG = "fgcam-scene"

CLASSES: list[str] = ["disk", "square", "triangle", "star", "cross", "ring", "heart", "arrow"]

#: split name -> (split id used in the random stream, objects per scene)
SPLITS: dict[str, tuple[int, int]] = {
    "train": (0, 1),
    "test": (1, 1),
    "pairs": (2, 2),
    "loc": (3, 1),
    "train_pairs": (4, 2),
    "val": (5, 1),
}

_TEXTURE_NAMES = ("grass", "gravel", "brick", "rough_wall", "camera", "moon", "page", "text")
_TEXTURES: list[np.ndarray] | None = None


def _load_textures() -> list[np.ndarray]:
    """Grey-level textures from ``skimage.data`` (those shipped offline), each H x W float32 in [0, 1].

    Loaded once per process and cached. Falls back to a procedural texture if none loads.
    """
    global _TEXTURES
    if _TEXTURES is None:
        import warnings

        from skimage import data as skdata

        found: list[np.ndarray] = []
        for name in _TEXTURE_NAMES:
            fn = getattr(skdata, name, None)
            if fn is None:
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    img = np.asarray(fn())
            except Exception:  # noqa: BLE001 - texture needs a download: skip it
                continue
            if img.ndim == 3:
                img = img[..., :3].mean(-1)
            img = img.astype(np.float32)
            lo, hi = float(img.min()), float(img.max())
            found.append((img - lo) / max(hi - lo, 1e-6))
        if not found:
            rng = np.random.default_rng(12345)
            found.append(rng.random((256, 256), dtype=np.float32))
        _TEXTURES = found
    return _TEXTURES


# ---------------------------------------------------------------- shapes ------------
# Each shape is a boolean function of object-frame coordinates (u, v), unit radius ~1.

def _polygon(points: np.ndarray) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Even-odd point-in-polygon test for a P x 2 vertex array, vectorised over pixels."""

    def inside(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        out = np.zeros(u.shape, dtype=bool)
        n = len(points)
        for i in range(n):
            x0, y0 = points[i]
            x1, y1 = points[(i + 1) % n]
            crosses = (y0 > v) != (y1 > v)
            xint = x0 + (v - y0) * (x1 - x0) / (y1 - y0 + 1e-12)
            out ^= crosses & (u < xint)
        return out

    return inside


def _regular(n: int, r: float, phase: float = -np.pi / 2) -> np.ndarray:
    t = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _star_points() -> np.ndarray:
    t = -np.pi / 2 + np.pi * np.arange(10) / 5
    r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


_ARROW = np.array([[-1.0, -0.22], [0.1, -0.22], [0.1, -0.6], [1.0, 0.0], [0.1, 0.6], [0.1, 0.22], [-1.0, 0.22]])
_TRIANGLE = _polygon(_regular(3, 1.0))
_STAR = _polygon(_star_points())
_ARROW_IN = _polygon(_ARROW)


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    x, y = u * 1.25, -(v * 1.25 - 0.15)
    return (x * x + y * y - 1.0) ** 3 - x * x * y ** 3 <= 0


SHAPES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "disk": lambda u, v: u * u + v * v <= 0.85,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.75,
    "triangle": _TRIANGLE,
    "star": _STAR,
    "cross": lambda u, v: ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.95)),
    "ring": lambda u, v: (u * u + v * v <= 0.95) & (u * u + v * v >= 0.3),
    "heart": _heart,
    "arrow": _ARROW_IN,
}


# ---------------------------------------------------------------- scenes ------------
@dataclass
class Scene:
    """One rendered scene (numpy, for inspection and tests).

    image: H x W x 3 float32 in [0, 1]; background: same, before objects and occluders;
    masks: N x H x W bool (visible object pixels); classes: N int; occluder: H x W bool.
    """

    image: np.ndarray
    background: np.ndarray
    masks: np.ndarray
    classes: np.ndarray
    occluder: np.ndarray


def _window(size: int, cy: float, cx: float, reach: float) -> tuple[slice, slice]:
    """Row and column slices of the pixels within ``reach`` of (cy, cx), clipped to the image."""
    y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 2, size)
    x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 2, size)
    return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))


def _blob(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    """Irregular smooth blob (radius r modulated by a few random harmonics), H x W bool."""
    amps = rng.uniform(0.08, 0.22, 3)
    phases = rng.uniform(0, 2 * np.pi, 3)
    out = np.zeros(yy.shape, dtype=bool)
    win = _window(yy.shape[0], cy, cx, r * (1 + amps.sum()))
    dy, dx = yy[win] - cy, xx[win] - cx
    theta = np.arctan2(dy, dx)
    rad = np.ones_like(theta)
    for k, a, ph in zip((2, 3, 5), amps, phases):
        rad = rad + a * np.cos(k * theta + ph)
    out[win] = dx * dx + dy * dy <= (r * rad) ** 2
    return out


def _line(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, size: int) -> np.ndarray:
    """Random straight segment of width 1-3 px, H x W bool."""
    y0, x0, y1, x1 = rng.uniform(0, size, 4)
    width = rng.uniform(0.6, 1.6)
    dy, dx = y1 - y0, x1 - x0
    length2 = dy * dy + dx * dx + 1e-6
    t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / length2, 0, 1)
    d2 = (yy - y0 - t * dy) ** 2 + (xx - x0 - t * dx) ** 2
    return d2 <= width * width


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Random crop of a real texture, rescaled to size x size and recoloured: H x W x 3."""
    textures = _load_textures()
    tex = textures[int(rng.integers(len(textures)))]
    h, w = tex.shape
    side = rng.uniform(0.25, 1.0) * min(h, w)
    side = max(side, min(size, h, w) * 0.5)
    y0 = rng.uniform(0, h - side)
    x0 = rng.uniform(0, w - side)
    idx = (np.arange(size) + 0.5) * side / size
    rows = np.clip((y0 + idx).astype(np.int64), 0, h - 1)
    cols = np.clip((x0 + idx).astype(np.int64), 0, w - 1)
    g = tex[rows][:, cols]
    if rng.random() < 0.5:
        g = g[:, ::-1]
    if rng.random() < 0.5:
        g = g.T
    c0, c1 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    contrast = rng.uniform(0.3, 0.8)
    g = (g - 0.5) * contrast + 0.5
    return (c0[None, None] * (1 - g[..., None]) + c1[None, None] * g[..., None]).astype(np.float32)


def _object_colour(rng: np.random.Generator, bg_mean: np.ndarray) -> np.ndarray:
    """Random RGB colour at least 0.35 away from the background mean (a few tries)."""
    best, best_d = rng.uniform(0, 1, 3), -1.0
    for _ in range(12):
        c = rng.uniform(0, 1, 3)
        d = float(np.linalg.norm(c - bg_mean))
        if d > best_d:
            best, best_d = c, d
        if d >= 0.45:
            break
    return best


class SyntheticScenes(Dataset):
    """Deterministic synthetic scenes with exact masks and boxes.

    Args:
        split: "train", "test" (one object), "pairs" (two objects of different classes,
            label = first object's class), "loc" (one object, box <= 50% of the image),
            "train_pairs" (two objects, for training), "val" (one object).
        n: number of scenes.
        seed: base seed of the random streams.
        size: image side in pixels (default 96, the bundled model's input size).
        occlusion: probability that an object is partly hidden by a clutter blob.

    ``ds[i]`` is a dict: image 3 x H x W float32 in [0, 1], label int, classes LongTensor N,
    boxes N x 4 float (x0, y0, x1, y1; pixel bounds of the mask, end exclusive),
    masks N x H x W bool, index int.
    """

    CLASSES: list[str] = CLASSES

    def __init__(self, split: str = "test", n: int = 500, seed: int = 0, size: int = 96,
                 occlusion: float = 0.3) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {sorted(SPLITS)}")
        self.split, self.n, self.seed, self.size, self.occlusion = split, int(n), int(seed), int(size), occlusion
        self.split_id, self.n_objects = SPLITS[split]
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
        self._yy, self._xx = ys + 0.5, xs + 0.5

    def __len__(self) -> int:
        return self.n

    # -- rendering ----------------------------------------------------------------------
    def _place(self, rng: np.random.Generator, n_obj: int) -> list[tuple[float, float, float]]:
        """Centres and radii (cy, cx, r) for n_obj objects; r = half the object side."""
        size = self.size
        lo, hi = (0.10, 0.225) if n_obj == 1 else (0.10, 0.17)
        placed: list[tuple[float, float, float]] = []
        for _ in range(n_obj):
            for attempt in range(50):
                r = rng.uniform(lo, hi) * size * (0.97 ** (attempt // 10))
                margin = 0.8 * r
                cy, cx = rng.uniform(margin, size - margin, 2)
                if all((cy - py) ** 2 + (cx - px) ** 2 >= (0.95 * (r + pr)) ** 2 for py, px, pr in placed):
                    break
            placed.append((cy, cx, r))
        return placed

    def render(self, index: int) -> Scene:
        """Render scene ``index`` as numpy arrays (see :class:`Scene`)."""
        if not 0 <= index < self.n:
            raise IndexError(index)
        size, yy, xx = self.size, self._yy, self._xx
        rng = np.random.default_rng([self.seed, self.split_id, index])
        n_cls = len(CLASSES)
        if self.n_objects == 1:
            classes = np.array([rng.integers(n_cls)])
        else:
            classes = rng.choice(n_cls, size=self.n_objects, replace=False)
        img = _background(rng, size)
        # clutter below the objects: lines and irregular blobs, belonging to no class
        for _ in range(int(rng.integers(1, 5))):
            img[_line(rng, yy, xx, size)] = rng.uniform(0, 1, 3)
        for _ in range(int(rng.integers(0, 3))):
            r = rng.uniform(0.03, 0.08) * size
            img[_blob(rng, yy, xx, *rng.uniform(0, size, 2), r)] = rng.uniform(0, 1, 3)
        noise = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(0.02)
        background = np.clip(img + noise, 0, 1)
        bg_mean = img.reshape(-1, 3).mean(0)

        masks = np.zeros((len(classes), size, size), dtype=bool)
        occluder = np.zeros((size, size), dtype=bool)
        for k, ((cy, cx, r), c) in enumerate(zip(self._place(rng, len(classes)), classes)):
            angle = rng.uniform(0, 2 * np.pi)
            aspect = rng.uniform(0.85, 1.15)
            ca, sa = np.cos(angle), np.sin(angle)
            win = _window(size, cy, cx, 1.2 * r)
            dy, dx = (yy[win] - cy) / r, (xx[win] - cx) / r
            u = (ca * dx + sa * dy) * aspect
            v = (-sa * dx + ca * dy) / aspect
            mw = SHAPES[CLASSES[int(c)]](u, v)
            colour = _object_colour(rng, bg_mean)
            gy, gx = rng.uniform(-0.15, 0.15, 2)
            shade = 1.0 + gy * v + gx * u
            obj = np.clip(colour[None, None] * shade[..., None], 0, 1).astype(np.float32)
            img_w = img[win]
            img_w[mw] = obj[mw]
            m = np.zeros((size, size), dtype=bool)
            m[win] = mw
            masks[:k][:, m] = False  # a later object hides an earlier one
            masks[k] = m
            if rng.random() < self.occlusion:
                t = rng.uniform(0, 2 * np.pi)
                oy, ox = cy + 0.8 * r * np.sin(t), cx + 0.8 * r * np.cos(t)
                blob = _blob(rng, yy, xx, oy, ox, rng.uniform(0.25, 0.4) * r)
                img[blob] = rng.uniform(0, 1, 3)
                masks[:, blob] = False
                occluder |= blob
        image = np.clip(img + noise, 0, 1).astype(np.float32)
        return Scene(image=image, background=background, masks=masks, classes=classes.astype(np.int64),
                     occluder=occluder)

    def __getitem__(self, index: int) -> dict:
        s = self.render(int(index))
        masks = torch.from_numpy(s.masks)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(s.image.transpose(2, 0, 1))),
            "label": int(s.classes[0]),
            "classes": torch.from_numpy(s.classes),
            "boxes": masks_to_boxes(masks),
            "masks": masks,
            "index": int(index),
        }

    def save(self, folder: str | Path, indices: Sequence[int] | None = None) -> list[Path]:
        """Write scenes as PNG files ``<split>_<index>_<class>.png`` in ``folder`` (created if missing),
        each tagged (PNG text :data:`SCENE_TAG`) so ``fgcam explain`` knows them for benchmark scenes.

        Example:
            >>> SyntheticScenes("test", 4).save("scenes")[0].name
            'test_0000_cross.png'
        """
        from PIL import Image, PngImagePlugin

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for i in range(self.n) if indices is None else indices:
            s = self.render(int(i))
            names = "+".join(CLASSES[int(c)] for c in s.classes)
            info = PngImagePlugin.PngInfo()
            info.add_text(SCENE_TAG, f"split={self.split} seed={self.seed} index={int(i)} classes={names}")
            path = out / f"{self.split}_{int(i):04d}_{names}.png"
            Image.fromarray((s.image * 255).round().astype(np.uint8)).save(path, pnginfo=info)
            written.append(path)
        return written

    def to_tensors(self, start: int = 0, stop: int | None = None, progress: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Materialise scenes [start, stop) for training.

        Returns:
            images: B x 3 x H x W uint8; classes: B x N long (N objects per scene).
        """
        stop = self.n if stop is None else min(stop, self.n)
        count = max(stop - start, 0)
        images = np.empty((count, self.size, self.size, 3), dtype=np.uint8)
        classes = np.empty((count, self.n_objects), dtype=np.int64)
        it = range(start, stop)
        if progress:
            from tqdm import tqdm

            it = tqdm(it, desc=f"scenes[{self.split}]", mininterval=5)
        for j, i in enumerate(it):
            s = self.render(i)
            np.rint(s.image * 255, out=s.image)
            images[j] = s.image
            classes[j] = s.classes
        out = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        return out, torch.from_numpy(classes)


def is_scene_file(path: str | Path) -> bool:
    """Whether ``path`` is a benchmark scene written by :meth:`SyntheticScenes.save` (its PNG tag);
    False for any other file, a missing or an unreadable one."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return SCENE_TAG in getattr(im, "text", {})
    except (OSError, ValueError):
        return False


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Bounding boxes of N x H x W bool masks -> N x 4 float (x0, y0, x1, y1), end exclusive.

    An empty mask gives the box (0, 0, 0, 0).
    """
    n = masks.shape[0]
    boxes = torch.zeros((n, 4), dtype=torch.float32)
    for k in range(n):
        rows = torch.nonzero(masks[k].any(1)).flatten()
        cols = torch.nonzero(masks[k].any(0)).flatten()
        if len(rows):
            boxes[k] = torch.tensor([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=torch.float32)
    return boxes
