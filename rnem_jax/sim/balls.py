"""Bouncing balls with real rigid-body physics (pymunk), rendered to binary frames.

This is the generator behind the ``bouncing_balls`` and ``curtain`` TFDS builders
(paper §4 and appendix A.1; our choices in docs/design.md#bouncing-balls): elastic,
frictionless balls without gravity in a box whose walls are the frame border, two ball
types (light: radius r, mass 1; heavy: radius 1.25·r, mass 6), non-overlapping random
starts, random directions.

Coordinates. A position is ``(x, y)`` in pixels: ``x`` runs along image columns,
``y`` along image rows, and pixel ``[row, col]`` covers ``[col, col+1) × [row,
row+1)``, so its centre is ``(col + 0.5, row + 0.5)``. Time is measured in
frames: a velocity of ``(2, 0)`` moves a ball 2 px to the right per frame.

Per example (``T+1`` frames, ``n`` balls, ``H = W = image_size``):
  features    (T+1, H, W, 1) uint8 in {0, 1}: a pixel is 1 iff a visible ball covers it.
  groups      (T+1, H, W, 1) uint8: ball index + 1 where exactly one ball covers the
              pixel; 0 on background, on pixels covered by several balls, and
              (curtain) under the occluder.
  collisions  (T+1, H, W, 1) uint8: 1 on the pixels (in frame t or t+1) of balls that
              touch another ball at some sub-step between frame t and t+1, so
              ``collisions[t]`` masks the loss that predicts frame t+1; the last
              frame is all 0. Wall bounces are not collisions.
  positions   (T+1, n, 2) float32, velocities (T+1, n, 2) float32 (px / frame),
  masses (n,) float32, radii (n,) float32.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import pymunk

LIGHT_MASS = 1.0
HEAVY_MASS = 6.0
HEAVY_RADIUS_RATIO = 1.25
# Contact tolerance (px) when deciding that two balls touch at a sub-step.
_CONTACT_TOLERANCE = 0.05


def default_light_radius(image_size: int) -> float:
  """Light-ball radius: 4 px at 64×64, 2.5 px at 32×32 (linear in between/beyond).

    Below 64 px the radius shrinks more slowly than the image so that balls
    stay a few pixels wide (a 2 px disc is barely a blob).
    """
  return 4.0 if image_size >= 64 else 4.0 - 1.5 * (64 - image_size) / 32.0


@dataclasses.dataclass(frozen=True)
class BallsConfig:
  """What one sequence looks like. All lengths are in pixels of this image size.

    Attributes:
      image_size: frame height = width.
      num_frames: T+1 frames per sequence.
      min_balls, max_balls: number of balls, uniform in [min_balls, max_balls].
      light_radius: radius of a light ball; heavy balls are 1.25× larger.
        ``None`` = :func:`default_light_radius`.
      heavy_probability: probability that a ball is heavy (0 = all light, equal mass).
      speed: mean initial speed (px / frame); each ball draws its speed uniformly
        in ``speed · [1 - speed_jitter, 1 + speed_jitter]`` and a uniform direction.
      substeps: physics sub-steps per frame (>= 5 conserve kinetic energy; see
        docs/design.md#measured-choices).
      curtain_size: side (px) of the invisible square occluder, or ``None``.
    """

  image_size: int = 64
  num_frames: int = 51
  min_balls: int = 4
  max_balls: int = 4
  light_radius: Optional[float] = None
  heavy_probability: float = 0.5
  speed: float = 2.0
  speed_jitter: float = 0.25
  substeps: int = 10
  curtain_size: Optional[float] = None

  def __post_init__(self):
    if self.image_size < 8:
      raise ValueError(f"image_size must be >= 8, got {self.image_size}")
    if self.num_frames < 2:
      raise ValueError(f"num_frames must be >= 2, got {self.num_frames}")
    if not 1 <= self.min_balls <= self.max_balls:
      raise ValueError(f"need 1 <= min_balls <= max_balls, got "
                       f"{self.min_balls}, {self.max_balls}")
    if self.substeps < 5:
      raise ValueError(f"substeps must be >= 5 for energy conservation, got {self.substeps}")

  @property
  def radius(self) -> float:
    return self.light_radius if self.light_radius is not None else default_light_radius(
        self.image_size)


def simulate(positions: np.ndarray,
             velocities: np.ndarray,
             masses: np.ndarray,
             radii: np.ndarray,
             *,
             image_size: int,
             num_frames: int,
             substeps: int = 10) -> dict[str, np.ndarray]:
  """Runs the physics from a given initial state.

    Args:
      positions: [n, 2] initial centres (x, y); balls must lie inside the frame.
      velocities: [n, 2] initial velocities, px / frame.
      masses, radii: [n].
      image_size: the box is [0, image_size]²; its walls are the frame border.
      num_frames: T+1 states are returned (the initial one included).
      substeps: pymunk steps of 1/substeps frame each.

    Returns:
      dict with ``positions``, ``velocities`` [T+1, n, 2] float32 and ``contacts``
      [T, n] bool: ball i touched another ball between frame t and t+1.
    """
  positions = np.asarray(positions, np.float64)
  velocities = np.asarray(velocities, np.float64)
  n = positions.shape[0]
  space = pymunk.Space()
  space.gravity = (0.0, 0.0)
  space.damping = 1.0
  space.collision_slop = 0.01  # allowed overlap (px) before position correction
  size = float(image_size)
  corners = [(0.0, 0.0), (size, 0.0), (size, size), (0.0, size)]
  for a, b in zip(corners, corners[1:] + corners[:1]):
    wall = pymunk.Segment(space.static_body, a, b, 0.0)
    wall.elasticity = 1.0
    wall.friction = 0.0
    space.add(wall)
  bodies = []
  for i in range(n):
    # Infinite moment: frictionless balls never spin, so no energy goes into rotation.
    body = pymunk.Body(float(masses[i]), float("inf"))
    body.position = tuple(positions[i])
    body.velocity = tuple(velocities[i])
    shape = pymunk.Circle(body, float(radii[i]))
    shape.elasticity = 1.0
    shape.friction = 0.0
    space.add(body, shape)
    bodies.append(body)

  touch_dist = radii[:, None] + radii[None, :] + _CONTACT_TOLERANCE
  off_diagonal = ~np.eye(n, dtype=bool)
  out_pos = np.zeros((num_frames, n, 2), np.float64)
  out_vel = np.zeros((num_frames, n, 2), np.float64)
  contacts = np.zeros((num_frames - 1, n), bool)
  out_pos[0], out_vel[0] = positions, velocities
  dt = 1.0 / substeps
  for t in range(1, num_frames):
    for _ in range(substeps):
      space.step(dt)
      pos = np.array([b.position for b in bodies])
      dist = np.linalg.norm(pos[:, None] - pos[None, :], axis=-1)
      contacts[t - 1] |= ((dist <= touch_dist) & off_diagonal).any(axis=1)
    out_pos[t] = [tuple(b.position) for b in bodies]
    out_vel[t] = [tuple(b.velocity) for b in bodies]
  return {
      "positions": out_pos.astype(np.float32),
      "velocities": out_vel.astype(np.float32),
      "contacts": contacts
  }


def disc_masks(positions: np.ndarray, radii: np.ndarray, image_size: int) -> np.ndarray:
  """[T, n, H, W] bool: pixel centre strictly within radius of the ball centre."""
  centres = np.arange(image_size, dtype=np.float32) + 0.5
  dx = centres[None, None, None, :] - positions[:, :, 0, None, None]
  dy = centres[None, None, :, None] - positions[:, :, 1, None, None]
  return dx * dx + dy * dy < (np.asarray(radii, np.float32)**2)[None, :, None, None]


def curtain_mask(curtain: np.ndarray, image_size: int) -> np.ndarray:
  """[H, W] bool: pixels whose centre lies in the rectangle (x0, y0, x1, y1)."""
  centres = np.arange(image_size, dtype=np.float32) + 0.5
  x0, y0, x1, y1 = curtain
  in_x = (centres >= x0) & (centres < x1)
  in_y = (centres >= y0) & (centres < y1)
  return in_y[:, None] & in_x[None, :]


def render(positions: np.ndarray,
           radii: np.ndarray,
           contacts: np.ndarray,
           image_size: int,
           curtain: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
  """Renders binary frames, groups and collision masks (see module docstring).

    Args:
      positions: [T+1, n, 2]; radii: [n]; contacts: [T, n] bool.
      curtain: optional (x0, y0, x1, y1) occluder; everything under it is 0.
    """
  discs = disc_masks(positions, radii, image_size)  # [T+1, n, H, W]
  if curtain is not None:
    discs &= ~curtain_mask(curtain, image_size)[None, None]
  coverage = discs.sum(axis=1)
  features = coverage > 0
  ball_id = np.argmax(discs, axis=1) + 1
  groups = np.where(coverage == 1, ball_id, 0)
  # A ball in contact between t and t+1 flags its pixels in both frames.
  colliding = np.zeros(discs.shape[:2], bool)
  colliding[:-1] = contacts
  collisions = np.zeros_like(features)
  collisions[:-1] = (discs[:-1] & colliding[:-1, :, None, None]).any(axis=1)
  collisions[:-1] |= (discs[1:] & colliding[:-1, :, None, None]).any(axis=1)
  return {
      name: arr.astype(np.uint8)[..., None]
      for name, arr in (("features", features), ("groups", groups), ("collisions", collisions))
  }


def occlusion_masks(positions: np.ndarray, radii: np.ndarray, curtain: np.ndarray,
                    image_size: int) -> dict[str, np.ndarray]:
  """What the curtain hides, per frame (for object-permanence metrics).

    Only balls already seen (visible in an earlier frame) count: nothing can know of a
    ball that was never shown.

    Args:
      positions: [T, n, 2]; radii: [n]; curtain: (x0, y0, x1, y1).

    Returns:
      ``[T, H, W, 1]`` uint8 videos:
      ``hidden_partial``: pixels under the curtain of balls partly visible in the frame
      (0 in the frame; a model that completes the disc draws them);
      ``hidden_full``: pixels of balls entirely under the curtain in the frame and seen
      before (0 in the frame; only a model that keeps the ball draws them);
      ``reappearing``: in frame t, the visible pixels of every ball that was entirely
      hidden in frame t-1 and seen before that (a model that kept the ball can predict
      them; one that lost it cannot);
      ``empty_curtain``: curtain pixels covered by no ball (the control for ``hidden_*``).
    """
  discs = disc_masks(positions, radii, image_size)  # [T, n, H, W]
  cm = curtain_mask(curtain, image_size)
  visible = discs & ~cm
  shown = visible.any(axis=(2, 3))  # [T, n]
  seen_before = np.zeros_like(shown)  # visible in some frame < t
  seen_before[1:] = np.logical_or.accumulate(shown, axis=0)[:-1]
  back = np.zeros_like(shown)  # hidden in t-1, seen before t-1, visible in t
  back[1:] = ~shown[:-1] & seen_before[:-1] & shown[1:]
  masks = {
      "hidden_partial": (discs & cm & shown[:, :, None, None]).any(axis=1),
      "hidden_full": (discs & (~shown & seen_before)[:, :, None, None]).any(axis=1),
      "reappearing": (visible & back[:, :, None, None]).any(axis=1),
      "empty_curtain": cm[None] & ~discs.any(axis=1),
  }
  return {k: v.astype(np.uint8)[..., None] for k, v in masks.items()}


def sample_initial_state(
    config: BallsConfig,
    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Random types, non-overlapping positions and velocities: (pos, vel, masses, radii)."""
  n = int(rng.integers(config.min_balls, config.max_balls + 1))
  heavy = rng.random(n) < config.heavy_probability
  radii = np.where(heavy, config.radius * HEAVY_RADIUS_RATIO, config.radius)
  masses = np.where(heavy, HEAVY_MASS, LIGHT_MASS)
  gap = 0.5  # start strictly apart from walls and each other
  positions = np.zeros((n, 2))
  for i in range(n):
    for _ in range(10_000):
      low, high = radii[i] + gap, config.image_size - radii[i] - gap
      candidate = rng.uniform(low, high, size=2)
      dist = np.linalg.norm(positions[:i] - candidate, axis=-1)
      if np.all(dist > radii[:i] + radii[i] + gap):
        positions[i] = candidate
        break
    else:
      raise ValueError(f"cannot place {n} balls of radius <= {radii.max():.2f} "
                       f"in a {config.image_size}px frame")
  angle = rng.uniform(0.0, 2.0 * np.pi, size=n)
  speed = config.speed * rng.uniform(1 - config.speed_jitter, 1 + config.speed_jitter, size=n)
  velocities = np.stack([np.cos(angle), np.sin(angle)], axis=-1) * speed[:, None]
  return positions, velocities, masses.astype(np.float32), radii.astype(np.float32)


def sample_curtain(config: BallsConfig, rng: np.random.Generator) -> np.ndarray:
  """(x0, y0, x1, y1) float32 of a curtain_size square fully inside the frame."""
  side = float(config.curtain_size)
  x0, y0 = rng.uniform(0.0, config.image_size - side, size=2)
  return np.array([x0, y0, x0 + side, y0 + side], np.float32)


def generate_sequence(config: BallsConfig,
                      seed: np.random.SeedSequence | int) -> dict[str, np.ndarray]:
  """One example, a pure function of (config, seed). See the module docstring."""
  rng = np.random.default_rng(seed)
  pos, vel, masses, radii = sample_initial_state(config, rng)
  curtain = sample_curtain(config, rng) if config.curtain_size else None
  traj = simulate(pos,
                  vel,
                  masses,
                  radii,
                  image_size=config.image_size,
                  num_frames=config.num_frames,
                  substeps=config.substeps)
  example = render(traj["positions"], radii, traj["contacts"], config.image_size, curtain)
  example.update(positions=traj["positions"],
                 velocities=traj["velocities"],
                 masses=masses,
                 radii=radii)
  if curtain is not None:
    example["curtain"] = curtain
  return example


def example_seed(base_seed: int, split_index: int, index: int) -> np.random.SeedSequence:
  """Seed of example ``index`` of a split: independent of worker count and order."""
  return np.random.SeedSequence([base_seed, split_index, index])
