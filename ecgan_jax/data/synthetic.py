"""The embedded synthetic dataset: street-like scenes generated in code from (seed, index).

No files and no download: `scene(rng, (H, W))` paints a label map, an instance map and an RGB
image with vectorised numpy (about 1 ms for 64x128). The classes (label_nc = 8):

    0 sky         vertical blue gradient, lighter at the horizon
    1 road        dark grey with fine noise and white dashed lane marks (perspective trapezoid)
    2 sidewalk    beige paving tiles (grid of darker joints)
    3 building    brick pattern (staggered bricks, light mortar), a colour per building
    4 vegetation  noisy green at two scales (tree crowns)
    5 car         a saturated colour per car, dark windows, black wheels; one instance per car
    6 pole        thin dark grey vertical posts
    7 sign        a small coloured plate with a white rim on top of some poles

Instance ids follow the Cityscapes convention: 5000 + k for car k (k = 0, 1, ...), the class id
elsewhere, so instance boundaries hold car-car boundaries as well as class boundaries.
Colours, layout, sizes and counts vary per image, so a small model has a real mapping to learn.
`SyntheticSource` serves `synthetic_num_images` training scenes (stream 0) or
`synthetic_eval_images` eval scenes (stream 1) of one seed, deterministic from (seed, index).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

CLASS_NAMES = ("sky", "road", "sidewalk", "building", "vegetation", "car", "pole", "sign")
NUM_CLASSES = len(CLASS_NAMES)
SKY, ROAD, SIDEWALK, BUILDING, VEGETATION, CAR, POLE, SIGN = range(NUM_CLASSES)
CAR_INSTANCE_BASE = 5000
PALETTE = np.array(
    [
        [70, 130, 180],  # sky
        [128, 64, 128],  # road
        [244, 35, 232],  # sidewalk
        [70, 70, 70],  # building
        [107, 142, 35],  # vegetation
        [0, 0, 142],  # car
        [153, 153, 153],  # pole
        [220, 220, 0],  # sign
    ],
    np.uint8,
)


def _jitter(rng, colour, amount):
    return np.clip(np.asarray(colour, np.float32) + rng.uniform(-amount, amount, 3), 0, 255)


class _Grid(NamedTuple):
    """Pixel coordinates of an (H, W) scene: int row/column indices `yy`, `xx` and their
    float32 copies `yf`, `xf`, each (H, W)."""

    h: int
    w: int
    yy: np.ndarray
    xx: np.ndarray
    yf: np.ndarray
    xf: np.ndarray


def _grid(size: tuple[int, int]) -> _Grid:
    h, w = int(size[0]), int(size[1])
    yy, xx = np.mgrid[0:h, 0:w]
    return _Grid(h, w, yy, xx, yy.astype(np.float32), xx.astype(np.float32))


# --- the layout: each painter draws its shapes from `rng` and writes them into `label` ---
# The painters run in the order of `scene` (later ones occlude earlier ones) and each makes
# the same draws, in the same order, as the single function they were cut from did.


def _paint_buildings(rng, g: _Grid, label, below) -> tuple[np.ndarray, int]:
    """A run of blocks along the skyline with occasional gaps. Returns the (H, W) block index
    of every pixel and the number of blocks."""
    edges = [0]
    while edges[-1] < g.w:
        edges.append(edges[-1] + max(3, int(g.w * rng.uniform(0.1, 0.28))))
    n_b = len(edges) - 1
    tops = (g.h * rng.uniform(0.04, 0.32, n_b)).astype(np.int32)
    present = rng.random(n_b) > 0.2
    col_block = np.searchsorted(np.asarray(edges[1:]), g.xx[0], side="right")
    col_top = np.where(present[col_block], tops[col_block], g.h)
    building = (g.yy >= col_top[None, :]) & ~below
    label[building] = BUILDING
    return np.broadcast_to(col_block[None, :], (g.h, g.w)), n_b


def _paint_trees(rng, g: _Grid, label, horizon: int, below) -> None:
    """Tree crowns near the horizon, painted over the buildings."""
    veg = np.zeros((g.h, g.w), bool)
    for _ in range(rng.integers(1, 5)):
        cx, cy = rng.uniform(0, g.w), horizon - g.h * rng.uniform(0.05, 0.18)
        r = g.h * rng.uniform(0.08, 0.2)
        veg |= ((g.xf - cx) ** 2 + ((g.yf - cy) * 1.2) ** 2 < r * r) & ~below
    label[veg] = VEGETATION


def _paint_ground(rng, g: _Grid, label, horizon: int, below) -> tuple[float, np.ndarray]:
    """The road (a perspective trapezoid towards a vanishing point) and the sidewalks. Returns
    the vanishing point's column and the road's (H, W) half width."""
    vx = g.w * rng.uniform(0.35, 0.65)
    depth = np.clip((g.yf - horizon) / max(g.h - horizon, 1), 0, 1)
    half = depth * g.w * rng.uniform(0.3, 0.55) + 0.5
    road = below & (np.abs(g.xf - vx) < half)
    label[below] = SIDEWALK
    label[road] = ROAD
    return vx, half


def _paint_poles(rng, g: _Grid, label, horizon: int, vx: float) -> None:
    """Poles on the sidewalk, most with a sign on top."""
    h, w, yy, xf, yf = g.h, g.w, g.yy, g.xf, g.yf
    for _ in range(rng.integers(0, 4)):
        side = rng.choice([-1.0, 1.0])
        base = int(rng.uniform(horizon + 0.15 * (h - horizon), h))
        d = (base - horizon) / max(h - horizon, 1)
        px = vx + side * (d * w * 0.55 + 2 + rng.uniform(0, w * 0.1))
        if not 0 <= px < w - 1:
            continue
        length = int(h * (0.15 + 0.35 * d))
        pw = max(1.0, w / 160 * (0.5 + d))
        pole = (np.abs(xf - px) < pw) & (yy <= base) & (yy >= base - length)
        label[pole] = POLE
        if rng.random() < 0.7:
            s = max(2.0, h * 0.04 * (0.5 + d))
            top = base - length
            sign = (np.abs(xf - px) < s) & (yf >= top - s) & (yf < top + s)
            label[sign] = SIGN


def _paint_cars(rng, g: _Grid, label, instance, horizon: int, vx: float):
    """Cars on the road, far ones first so that near ones occlude them; car k gets instance id
    `CAR_INSTANCE_BASE + k`. Returns the cars' (H, W, 3) float32 body colours and their (H, W)
    bool window and wheel masks."""
    h, w, xf, yf = g.h, g.w, g.xf, g.yf
    n_cars = int(rng.integers(1, 5))
    bottoms = np.sort(rng.uniform(horizon + 0.25 * (h - horizon), h + 0.1 * h, n_cars))
    car_colour = np.zeros((h, w, 3), np.float32)
    window = np.zeros((h, w), bool)
    wheel = np.zeros((h, w), bool)
    for k, yb in enumerate(bottoms):
        d = np.clip((yb - horizon) / max(h - horizon, 1), 0.05, 1.2)
        cw = max(4.0, d * w * rng.uniform(0.18, 0.26))
        ch = cw * rng.uniform(0.45, 0.6)
        cx = vx + rng.uniform(-0.6, 0.6) * (d * w * 0.45)
        body = (np.abs(xf - cx) < cw / 2) & (yf < yb) & (yf >= yb - ch * 0.6)
        cabin_half = cw / 2 * (0.7 - 0.3 * np.clip((yb - ch * 0.6 - yf) / (ch * 0.4), 0, 1))
        cabin = (np.abs(xf - cx) < cabin_half) & (yf < yb - ch * 0.6) & (yf >= yb - ch)
        car = body | cabin
        if not car.any():
            continue
        label[car] = CAR
        instance[car] = CAR_INSTANCE_BASE + k
        car_colour[car] = rng.uniform(20, 235, 3)
        window[car] = (cabin & (np.abs(xf - cx) < cabin_half - max(1.0, cw * 0.06)))[car]
        wr = max(1.0, ch * 0.14)
        wheels = (
            ((np.abs(xf - (cx - cw * 0.3)) < wr) | (np.abs(xf - (cx + cw * 0.3)) < wr))
            & (yf >= yb - wr * 1.5)
            & (yf < yb)
        )
        wheel[car] = wheels[car]
    return car_colour, window, wheel


# --- the image: one (H, W, 3) texture per class, selected by the label map in `scene` ---


def _sky_texture(rng, g: _Grid, horizon: int) -> np.ndarray:
    """A vertical blue gradient, lighter at the horizon."""
    top_c, hor_c = _jitter(rng, (60, 110, 200), 25), _jitter(rng, (185, 210, 235), 20)
    t = np.clip(g.yf / max(horizon, 1), 0, 1)[..., None]
    return top_c * (1 - t) + hor_c * t


def _road_texture(rng, g: _Grid, noise, horizon: int, vx: float, half) -> np.ndarray:
    """Dark grey with fine noise and white dashed lane marks along the road's axis."""
    road_c = _jitter(rng, (85, 85, 90), 15)
    road_img = road_c + 6.0 * noise[..., None]
    dash = max(2, int(g.h / 16))
    lane = (np.abs(g.xf - vx) < np.maximum(0.6, half * 0.04)) & (
        ((g.yy - horizon) // dash) % 2 == 0
    )
    return np.where(lane[..., None], np.float32(235), road_img)


def _sidewalk_texture(rng, g: _Grid, noise) -> np.ndarray:
    """Beige paving tiles with darker joints."""
    side_c = _jitter(rng, (200, 185, 150), 20)
    tile = max(3, int(g.h / 12))
    joints = (g.yy % tile == 0) | ((g.xx + (g.yy // tile) * (tile // 2)) % (2 * tile) == 0)
    return side_c * np.where(joints, 0.7, 1.0)[..., None] + 4.0 * noise[..., None]


def _brick_texture(rng, g: _Grid, coarse, block_of, n_b: int) -> np.ndarray:
    """Staggered bricks in light mortar, one brick colour per building block."""
    brick_colours = np.stack([_jitter(rng, (150, 70, 50), 40) for _ in range(n_b)])
    bh = max(2, int(g.h / 20))
    bw = 2 * bh
    mortar = (g.yy % bh == 0) | ((g.xx + (g.yy // bh % 2) * bh) % bw == 0)
    brick_img = brick_colours[block_of] + 8.0 * coarse[..., None]
    return np.where(mortar[..., None], _jitter(rng, (190, 185, 175), 10), brick_img)


def _vegetation_texture(rng, coarse, noise) -> np.ndarray:
    """Green, noisy at two scales."""
    green = _jitter(rng, (60, 120, 45), 20)
    return green * (1.0 + 0.18 * coarse + 0.12 * noise)[..., None]


def _car_texture(g: _Grid, car_colour, window, wheel) -> np.ndarray:
    """The cars' body colours shaded towards the bottom, dark windows, black wheels."""
    shade = 1.0 - 0.25 * np.clip((g.yf - g.yf.min()) / max(g.h, 1), 0, 1)
    car_img = car_colour * shade[..., None]
    car_img = np.where(window[..., None], np.float32([40, 50, 65]), car_img)
    return np.where(wheel[..., None], np.float32(15), car_img)


def scene(rng: np.random.Generator, size: tuple[int, int]) -> dict:
    """One scene of (H, W): {'label': int32 (H, W), 'instance': int32 (H, W), 'image': uint8
    (H, W, 3)}. All randomness comes from `rng`."""
    g = _grid(size)
    h, w = g.h, g.w
    label = np.full((h, w), SKY, np.int32)
    instance = np.zeros((h, w), np.int32)
    horizon = int(h * rng.uniform(0.4, 0.55))
    below = g.yy >= horizon

    block_of, n_b = _paint_buildings(rng, g, label, below)
    _paint_trees(rng, g, label, horizon, below)
    vx, half = _paint_ground(rng, g, label, horizon, below)
    _paint_poles(rng, g, label, horizon, vx)
    car_colour, window, wheel = _paint_cars(rng, g, label, instance, horizon, vx)
    stuff = label != CAR
    instance[stuff] = label[stuff]

    noise = rng.normal(0.0, 1.0, (h, w)).astype(np.float32)
    coarse_shape = (max(1, h // 4 + 1), max(1, w // 4 + 1))
    coarse = np.kron(rng.normal(0.0, 1.0, coarse_shape), np.ones((4, 4)))[:h, :w]
    # Applied in this order because the textures draw from `rng` in this order (and the dtype
    # of `img` follows the chain of np.where).
    img = np.zeros((h, w, 3), np.float32)
    img = np.where((label == SKY)[..., None], _sky_texture(rng, g, horizon), img)
    img = np.where((label == ROAD)[..., None], _road_texture(rng, g, noise, horizon, vx, half), img)
    img = np.where((label == SIDEWALK)[..., None], _sidewalk_texture(rng, g, noise), img)
    bricks = _brick_texture(rng, g, coarse, block_of, n_b)
    img = np.where((label == BUILDING)[..., None], bricks, img)
    img = np.where((label == VEGETATION)[..., None], _vegetation_texture(rng, coarse, noise), img)
    img = np.where((label == CAR)[..., None], _car_texture(g, car_colour, window, wheel), img)
    img = np.where((label == POLE)[..., None], _jitter(rng, (60, 60, 60), 10), img)
    sign_c = np.float32([[200, 30, 30], [30, 70, 200], [230, 200, 20]])[rng.integers(0, 3)]
    img = np.where((label == SIGN)[..., None], sign_c, img)

    img = img * rng.uniform(0.85, 1.15)  # global exposure
    return {
        "label": label,
        "instance": instance,
        "image": np.clip(img + 0.5, 0, 255).astype(np.uint8),
    }


class SyntheticSource:
    """grain random-access source of synthetic scenes; records as the file sources give them.

    Stream 0 is the training set, stream 1 the eval set: the same index gives different scenes.
    """

    def __init__(self, num_images: int, size: tuple[int, int], *, seed: int, stream: int):
        if int(num_images) < 1:
            raise ValueError(
                f"config field 'dataset.synthetic_num_images'/'synthetic_eval_images' = "
                f"{num_images} is invalid; allowed: an integer >= 1"
            )
        self.num_images = int(num_images)
        self.size = (int(size[0]), int(size[1]))
        self.seed, self.stream = int(seed), int(stream)

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < self.num_images:
            raise IndexError(f"synthetic index {index} out of range [0, {self.num_images})")
        rng = np.random.default_rng([self.seed, self.stream, index])
        s = scene(rng, self.size)
        split = "train" if self.stream == 0 else "eval"
        return {"stem": f"synthetic_{split}_{index:06d}", "origin": {}, **s, "edge": None}

    def __repr__(self) -> str:
        return (
            f"SyntheticSource(num_images={self.num_images}, size={self.size}, "
            f"seed={self.seed}, stream={self.stream})"
        )
