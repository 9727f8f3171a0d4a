"""Figures and animations of trained models (paper Figures 2-6): functions that only draw.

Everything here is a pure function of arrays or of the JSON records evaluation wrote
(returning a matplotlib ``Figure`` or a uint8 array); ``render_run`` and ``write_gif`` write
files. Nothing here restores or runs a model: ``rnem_jax.evaluate.sample_outputs`` does, and
``python -m rnem_jax.main --mode=visualize --workdir=DIR`` draws a run's figures into
``DIR/figures``: ``panel.png`` (Figure 2 layout), ``panel_compact.png`` (Figures 5/6:
truth, prediction, grouping), ``panel_foreground.png``, ``rollout.png`` (Figure 4 left:
truth vs 5 real + 10 simulated steps), ``rollout_bce.png`` (Figure 4 right, with the object
curves on balls data) and ``prediction.gif``, ``grouping.gif``, ``rollout.gif``. Seed-averaged
figures of several runs come from ``rnem_jax.summarize``.

Figures are built without pyplot (Agg canvas), so importing this module never changes the
caller's matplotlib backend.
"""

from __future__ import annotations

import logging
import os
from typing import NamedTuple, Optional, Sequence

import numpy as np
from matplotlib import colors as mcolors
from matplotlib import ticker as mticker
from matplotlib.figure import Figure

from rnem_jax.config import ROLLOUT_REFERENCES, check_same, in_report_order, is_mixture, label

log = logging.getLogger(__name__)

REAL_COLOUR = (0.2, 0.6, 0.2)   # frame border of real (observed) rollout steps
SIM_COLOUR = (0.85, 0.1, 0.1)   # ... and of simulated ones


class SequenceView(NamedTuple):
  """One sequence of an EM rollout, as numpy arrays (leading axis = step t).

  Step t reads the noisy frame ``inputs[t]`` and predicts frame t+1, whose
  clean version is ``truth[t]``.
  """

  inputs: np.ndarray   # [T, H, W, C] noisy frames fed to the network
  psi: np.ndarray      # [T, K, H, W, C] per-component predictions of frame t+1
  gamma: np.ndarray    # [T, K, H, W, 1] soft assignments (E-step on frame t+1)
  alpha: np.ndarray    # [T, K, K] attention alpha_{k,i} of component k on i
  truth: np.ndarray    # [T, H, W, C] clean frame t+1

  @property
  def prediction(self) -> np.ndarray:
    """Total prediction sum_k gamma_k psi_k: [T, H, W, C]."""
    return np.sum(self.gamma * self.psi, axis=1)


def sequence_view(rollout, features, b: int = 0) -> SequenceView:
  """Sequence ``b`` of an ``em.rollout(..., keep_outputs=True)`` result.

  Args:
    rollout: an ``em.Rollout`` with psi/gamma/alpha/inputs kept.
    features: [T+1, B, H, W, C] the clean frames the rollout ran on.
  """
  if rollout.psi is None:
    raise ValueError("the rollout has no per-step outputs: run em.rollout(keep_outputs=True)")
  features = np.asarray(features)
  T = rollout.psi.shape[0]
  if features.ndim != 5 or features.shape[0] != T + 1:
    raise ValueError(f"features must be [T+1={T + 1}, B, H, W, C]; got {features.shape}")
  if not 0 <= b < features.shape[1]:
    raise ValueError(f"sequence index {b} out of range for batch of {features.shape[1]}")
  take = lambda a: np.asarray(a[:, b], np.float32)
  return SequenceView(inputs=take(rollout.inputs), psi=take(rollout.psi),
                      gamma=take(rollout.gamma), alpha=take(rollout.alpha),
                      truth=np.asarray(features[1:, b], np.float32))


# ---------------------------------------------------------------------------
# Images as arrays: [H, W, 3] floats in [0, 1].


def component_colours(K: int) -> np.ndarray:
  """[K, 3] RGB colours, component k drawn in colour k everywhere (tab10, then hsv)."""
  if K < 1:
    raise ValueError(f"K must be >= 1, got {K}")
  base = [mcolors.to_rgb(c) for c in mcolors.TABLEAU_COLORS.values()]
  if K > len(base):
    base = [mcolors.hsv_to_rgb((k / K, 0.8, 0.9)) for k in range(K)]
  return np.asarray(base[:K], np.float32)


def grey(x: np.ndarray) -> np.ndarray:
  """[..., H, W, C] intensities (C = 1 or 3) -> [..., H, W, 3]."""
  x = np.clip(np.asarray(x, np.float32), 0.0, 1.0)
  return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def colour_gamma(gamma: np.ndarray, colours: np.ndarray) -> np.ndarray:
  """Soft assignments [..., K, H, W, 1] -> [..., H, W, 3]: each pixel mixes the K colours."""
  return np.einsum("...khwc,kd->...hwd", np.asarray(gamma, np.float32), colours)


def attention_overlay(psi: np.ndarray, alpha: np.ndarray, k: int,
                      colours: np.ndarray) -> np.ndarray:
  """Component k's prediction with alpha_{k,i} * psi_i drawn on it in colour i (paper §4, Fig. 2).

  Args:
    psi: [K, H, W, C] predictions of one step; alpha: [K, K] attention.
  Returns:
    [H, W, 3].
  """
  K = psi.shape[0]
  if alpha.shape != (K, K):
    raise ValueError(f"alpha must be [K, K] = [{K}, {K}]; got {alpha.shape}")
  base = grey(psi[k])
  weights = np.asarray(alpha[k], np.float32).copy()
  weights[k] = 0.0
  lum = np.mean(grey(psi), axis=-1, keepdims=True) * weights[:, None, None, None]  # [K, H, W, 1]
  strength = np.clip(np.sum(lum, axis=0), 0.0, 1.0)
  tint = np.einsum("khwc,kd->hwd", lum, colours) / np.maximum(np.sum(lum, axis=0), 1e-6)
  return base * (1.0 - strength) + tint * strength


def framed(img: np.ndarray, colour, width: int = 1) -> np.ndarray:
  """[H, W, 3] with a ``width``-pixel border of ``colour`` (drawn inside)."""
  out = np.array(img, np.float32)
  out[:width], out[-width:], out[:, :width], out[:, -width:] = colour, colour, colour, colour
  return out


def tile(rows: Sequence[Sequence[np.ndarray]], pad: int = 1, pad_value: float = 1.0,
         scale: int = 1) -> np.ndarray:
  """Grid of equally sized [H, W, 3] images -> one [R*(sH+pad)-pad, N*(sW+pad)-pad, 3] image."""
  rows = [[np.kron(np.asarray(im, np.float32), np.ones((scale, scale, 1), np.float32))
           for im in row] for row in rows]
  h, w = rows[0][0].shape[:2]
  n = max(len(r) for r in rows)
  out = np.full((len(rows) * (h + pad) - pad, n * (w + pad) - pad, 3), pad_value, np.float32)
  for r, row in enumerate(rows):
    for c, im in enumerate(row):
      if im.shape[:2] != (h, w):
        raise ValueError(f"tile {r},{c} is {im.shape[:2]}, expected {(h, w)}")
      out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = im
  return out


def to_uint8(img: np.ndarray) -> np.ndarray:
  return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# ---------------------------------------------------------------------------
# Figures.

ROWS = ("truth", "prediction", "gamma", "gamma_on_frame", "components", "input")  # drawn order
PANEL_ROWS = ("truth", "prediction", "gamma", "components", "input")             # Figure 2
COMPACT_ROWS = ("truth", "prediction", "gamma")                                  # Figures 5/6
# gamma on the on-pixels of frame t+1 only: which component holds which object, readable
# where the even mixture on the background fills the gamma row (Space Invaders).
FOREGROUND_ROWS = ("truth", "prediction", "gamma_on_frame")


def _grid_figure(rows: list[tuple[str, tuple, list[np.ndarray]]], col_labels: Sequence[str],
                 title: str, xlabel: str, col_colours: Optional[Sequence] = None) -> Figure:
  """One image per (row, column), row labels on the left (in the row's colour)."""
  h, w = rows[0][2][0].shape[:2]
  grid = tile([r[2] for r in rows])
  tile_in = 0.5 if max(h, w) <= 48 else 0.85
  n = len(col_labels)
  left, bottom, top = 1.4, 0.45, 0.45
  width = max(left + n * tile_in + 0.2, 5.5)
  height = bottom + len(rows) * tile_in + top
  fig = Figure(figsize=(width, height), dpi=100)
  ax = fig.add_axes((left / width, bottom / height, n * tile_in / width,
                     len(rows) * tile_in / height))
  ax.imshow(grid, interpolation="nearest")
  ax.set_yticks([r * (h + 1) + h / 2 for r in range(len(rows))])
  ax.set_yticklabels([r[0] for r in rows], fontsize=8)
  for tick, (_, colour, _) in zip(ax.get_yticklabels(), rows):
    tick.set_color(colour)
  ax.set_xticks([c * (w + 1) + w / 2 for c in range(n)])
  ax.set_xticklabels(col_labels, fontsize=7)
  if col_colours is not None:
    for tick, colour in zip(ax.get_xticklabels(), col_colours):
      tick.set_color(colour)
  ax.tick_params(length=0)
  for side in ax.spines.values():
    side.set_visible(False)
  ax.set_xlabel(xlabel, fontsize=8)
  fig.suptitle(title, fontsize=9, y=1.0 - 0.08 / height)
  return fig


def panel_figure(seq: SequenceView, *, rows: Sequence[str] = PANEL_ROWS,
                 steps: Optional[Sequence[int]] = None, attention: bool = True,
                 title: str = "") -> Figure:
  """Paper Figure 2 (all rows) or Figures 5/6 (``rows=COMPACT_ROWS``) for one sequence.

  Rows (top to bottom, a subset of ``ROWS`` in that order): ground truth
  frame t+1, total prediction sum_k gamma_k psi_k, gamma coloured per component,
  the same on frame t+1's on-pixels only (``gamma_on_frame``; black elsewhere),
  psi_k for every k (with alpha_{k,i} psi_i overlaid in component i's colour if
  ``attention``), and the noisy input frame t. Columns: ``steps`` (default all).
  """
  T, K = seq.psi.shape[:2]
  unknown = set(rows) - set(ROWS)
  if unknown:
    raise ValueError(f"unknown panel rows {sorted(unknown)}; choose from {ROWS}")
  steps = list(range(T)) if steps is None else [int(t) for t in steps]
  if not steps or min(steps) < 0 or max(steps) >= T:
    raise ValueError(f"steps must be non-empty and within [0, {T}); got {steps}")
  colours = component_colours(K)
  black = (0.0, 0.0, 0.0)
  out = []
  if "truth" in rows:
    out.append(("ground truth", black, [grey(seq.truth[t]) for t in steps]))
  if "prediction" in rows:
    pred = seq.prediction
    out.append((r"$\Sigma_k\,\gamma_k\psi_k$", black, [grey(pred[t]) for t in steps]))
  if "gamma" in rows:
    out.append((r"$\gamma$", black, [colour_gamma(seq.gamma[t], colours) for t in steps]))
  if "gamma_on_frame" in rows:
    on = lambda t: (np.asarray(seq.truth[t])[..., :1] > 0.5).astype(np.float32)
    out.append((r"$\gamma$ on frame", black,
                [colour_gamma(seq.gamma[t], colours) * on(t) for t in steps]))
  if "components" in rows:
    for k in range(K):
      if attention:
        ims = [attention_overlay(seq.psi[t], seq.alpha[t], k, colours) for t in steps]
      else:
        ims = [grey(seq.psi[t, k]) for t in steps]
      out.append((rf"$\psi_{{{k + 1}}}$", tuple(colours[k]), ims))
  if "input" in rows:
    out.append(("noisy input", black, [grey(seq.inputs[t]) for t in steps]))
  return _grid_figure(out, [str(t) for t in steps], title or f"R-NEM, K={K}",
                      "EM step t (input: frame t; other rows: frame t+1)")


def rollout_figure(truths: Sequence[np.ndarray], models: dict[str, Sequence[np.ndarray]],
                   num_real_steps: int, title: str = "") -> Figure:
  """Paper Figure 4 (left): per sequence, ground truth then each model's rollout.

  Args:
    truths: per sequence [T, H, W, C], frame t+1 at step t.
    models: model name -> per sequence [T, H, W, C] the total prediction
      sum_k gamma psi of frame t+1 (steps >= num_real_steps are simulated).
  """
  rows = []
  T = truths[0].shape[0]
  for i, truth in enumerate(truths):
    rows.append((f"seq {i}: truth", (0.0, 0.0, 0.0), [grey(x) for x in truth]))
    for name, preds in models.items():
      if preds[i].shape != truth.shape:
        raise ValueError(f"{name} rollout {i} is {preds[i].shape}, truth {truth.shape}")
      rows.append((f"seq {i}: {name}", (0.0, 0.0, 0.0), [grey(x) for x in preds[i]]))
  col_colours = [REAL_COLOUR if t < num_real_steps else SIM_COLOUR for t in range(T)]
  return _grid_figure(rows, [str(t + 1) for t in range(T)],
                      title or f"{num_real_steps} real + {T - num_real_steps} simulated steps",
                      "predicted frame (green: observed input, red: simulated)", col_colours)


ROLLOUT_MATCH = ("dataset", "num_real_steps", "num_sim_steps", "num_sequences")


OBJECT_PANELS = (("balls_kept", "balls kept (share)"),
                 ("ball_mass", "mass on the true discs"),
                 ("position_error_px", "position error (px)"),
                 ("swap_rate", "identity swaps (share of tracked balls)"))
REFERENCE_LINESTYLES = (":", "-.", "--")   # config.ROLLOUT_REFERENCES, in order


def _rollout_axes(panel_size: tuple[float, float], with_objects: bool):
  """A figure of ``panel_size`` inches a panel and its axes: the BCE one, then (balls runs)
  one per ``OBJECT_PANELS`` entry, three to a row."""
  n = 1 + (len(OBJECT_PANELS) if with_objects else 0)
  cols = min(n, 3)
  rows = -(-n // cols)
  fig = Figure(figsize=(panel_size[0] * cols, panel_size[1] * rows), dpi=100)
  axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n)]
  labels = ["BCE (summed over pixels)"] + [text for _, text in OBJECT_PANELS]
  for ax, ylabel in zip(axes, labels):
    ax.set_xlabel("predicted frame")
    ax.set_ylabel(ylabel)
  return fig, axes


def _mark_simulated(axes, n_real: int) -> None:
  for ax in axes:
    ax.axvline(n_real + 0.5, color="k", ls="--", lw=0.8)
  axes[0].text(n_real + 0.6, axes[0].get_ylim()[1], " simulated", va="top", fontsize=8)


def _curve(values) -> np.ndarray:
  """A per-step list with None (nothing measured) as NaN (a gap in the plot)."""
  return np.asarray([np.nan if v is None else v for v in values], np.float64)


def rollout_bce_figure(records: dict[str, dict], title: str = "") -> Figure:
  """Paper Figure 4 (right): per-step rollout BCE of several models (``rollout.json`` records),
  with every data-only reference curve the records hold and, for balls datasets, the balls
  kept and their position error per step (``rnem_jax.objects``).

  Raises ValueError if the records were not made on the same test set with the
  same numbers of real and simulated steps.
  """
  check_same(records, ROLLOUT_MATCH, "rollout curves",
             "compare only runs rolled out the same way")
  first = next(iter(records.values()))
  n_real = first["num_real_steps"]
  with_objects = all("balls_kept_per_step" in r for r in records.values())
  fig, axes = _rollout_axes((5.5, 3.6), with_objects)
  for name, rec in records.items():
    y = rec["bce_per_step"]
    x = np.arange(1, len(y) + 1)
    axes[0].plot(x, y, marker="o", ms=3, label=name)
    for ax, (key, _) in zip(axes[1:], OBJECT_PANELS):
      if f"{key}_per_step" in rec:   # rollout.json from before the curve existed: no line
        ax.plot(x, _curve(rec[f"{key}_per_step"]), marker="o", ms=3, label=name)
  for (key, text), ls in zip(ROLLOUT_REFERENCES, REFERENCE_LINESTYLES):
    if key in first:
      axes[0].plot(np.arange(1, len(first[key]) + 1), first[key], ls=ls, color="grey", lw=1,
                   label=text)
  for ax, (key, _) in zip(axes[1:], OBJECT_PANELS):
    if f"held_{key}_per_step" in first:
      held = _curve(first[f"held_{key}_per_step"])
      ax.plot(np.arange(1, len(held) + 1), held, ls="-.", color="grey", lw=1,
              label="hold last observed frame")
  _mark_simulated(axes, n_real)
  axes[0].set_title(title or f"rollout on {first['dataset']} ({first['num_sequences']} "
                    "sequences)", fontsize=9)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  return fig


# ---------------------------------------------------------------------------
# Seed summaries (rnem_jax.summarize): paper Figure 3 and Figure 4 right, mean ± std.


def figure3_summary(summary: dict, suffix: str = "last", test_set: str = "4 balls") -> Figure:
  """Paper Figure 3 from a seed summary (``rnem_jax.summarize``): mean bars, ±std whiskers.

  Panels: BCE / baseline, relational BCE / baseline, ARI (last step); in each,
  the test set (named ``test_set``) and, where the summary has it, the 6-8-ball
  set side by side, one bar per model.
  """

  names = in_report_order(summary)
  colours = component_colours(max(len(names), 1))
  panels = [(f"bce_{suffix}_rel", f"BCE / copy baseline ({suffix})"),
            (f"relational_bce_{suffix}_rel", f"relational BCE / baseline ({suffix})"),
            ("ari_last", "ARI (last step)")]
  sets = [("", test_set)]
  if any(f"bce_{suffix}_rel_678" in m for m in summary.values()):
    sets.append(("_678", "6-8 balls"))
  fig = Figure(figsize=(12, 3.8), dpi=100)
  axes = fig.subplots(1, 3)
  width = 0.8 / max(len(names), 1)
  for ax, (key, title) in zip(axes, panels):
    for j, name in enumerate(names):
      xs, ys, es = [], [], []
      for g, (suffix_set, _) in enumerate(sets):
        stat = summary[name].get(key + suffix_set)
        if stat is None or (key.startswith("ari") and not is_mixture(name)):
          continue
        xs.append(g + (j - (len(names) - 1) / 2) * width)
        ys.append(stat["mean"])
        es.append(stat["std"])
      ax.bar(xs, ys, width, yerr=es, capsize=2, color=colours[j], label=label(name))
    ax.set_xticks(range(len(sets)))
    ax.set_xticklabels([t for _, t in sets], fontsize=8)
    ax.set_title(title, fontsize=9)
    if "ari" in key:
      ax.set_ylim(0.0, 1.0)   # BCE ratios keep their own range: the models differ by little
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  return fig


def rollout_summary_figure(summary: dict, references: Optional[dict] = None) -> Figure:
  """Paper Figure 4 (right) from a seed summary: mean per-step rollout BCE, ±std bands, the
  data-only reference curves (``references``: rollout.json key -> curve; copy last frame, hold
  last observed frame, empty) and, where the runs have them, the balls kept and their position
  error per step."""

  names = [n for n in in_report_order(summary) if "rollout_bce" in summary[n]]
  if not names:
    raise ValueError("no run in the summary has a rollout")
  # object panels when any run has the curves (runs evaluated before them have BCE only)
  with_objects = any(f"rollout_{key}" in summary[n] for n in names for key, _ in OBJECT_PANELS)
  colours = component_colours(len(names))
  fig, axes = _rollout_axes((6, 3.8), with_objects)
  keys = ["rollout_bce"] + [f"rollout_{key}" for key, _ in OBJECT_PANELS[:len(axes) - 1]]
  for j, name in enumerate(names):
    for ax, key in zip(axes, keys):
      r = summary[name].get(key)
      if r is None:
        continue
      m, sd = _curve(r["mean"]), np.nan_to_num(_curve(r["std"]))
      x = np.arange(1, len(m) + 1)
      ax.plot(x, m, marker="o", ms=3, color=colours[j],
              label=f"{label(name)} ({r['seeds']} seed{'s' if r['seeds'] > 1 else ''})")
      ax.fill_between(x, m - sd, m + sd, color=colours[j], alpha=0.2, lw=0)
  refs = references or {}
  for (key, text), ls in zip(ROLLOUT_REFERENCES, REFERENCE_LINESTYLES):
    if key in refs:
      axes[0].plot(np.arange(1, len(refs[key]) + 1), refs[key], ls=ls, color="grey", lw=1,
                   label=text)
  for ax, (key, _) in zip(axes[1:], OBJECT_PANELS):
    held = refs.get(f"held_{key}_per_step")
    if held is not None:
      ax.plot(np.arange(1, len(held) + 1), _curve(held), ls="-.", color="grey", lw=1,
              label="hold last observed frame")
  _mark_simulated(axes, summary[names[0]]["rollout_bce"]["num_real_steps"])
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  return fig


ABLATION_LABELS = {"simulated": "simulated (reference protocol)",
                   "true_gamma": "own input, gamma from the true frame",
                   "true_input": "true input, thresholded gamma",
                   "real": "no simulation (true input and gamma)"}


def rollout_ablation_figure(summary: dict) -> Figure:
  """One panel per model: rollout BCE with each half of the simulation switched on alone
  (``rnem_jax.evaluate.rollout_ablation``), mean over seeds."""

  names = [n for n in in_report_order(summary) if "rollout_ablation" in summary[n]]
  if not names:
    raise ValueError("no run in the summary has a rollout ablation")
  fig = Figure(figsize=(3.2 * len(names), 3.4), dpi=100)
  axes = np.atleast_1d(fig.subplots(1, len(names), sharey=True))
  colours = component_colours(len(ABLATION_LABELS))
  n_real = summary[names[0]]["rollout_bce"]["num_real_steps"]
  for ax, name in zip(axes, names):
    for j, (variant, text) in enumerate(ABLATION_LABELS.items()):
      r = summary[name]["rollout_ablation"].get(variant)
      if r is None:
        continue
      m, sd = np.asarray(r["mean"]), np.asarray(r["std"])
      x = np.arange(1, len(m) + 1)
      ax.plot(x, m, color=colours[j], label=text)
      ax.fill_between(x, m - sd, m + sd, color=colours[j], alpha=0.2, lw=0)
    ax.axvline(n_real + 0.5, color="k", ls="--", lw=0.8)
    seeds = next(iter(summary[name]['rollout_ablation'].values()))['seeds']
    ax.set_title(f"{label(name)} ({seeds} seed{'s' if seeds > 1 else ''})", fontsize=9)
    ax.set_xlabel("predicted frame")
  axes[0].set_ylabel("BCE")
  axes[0].legend(fontsize=6)
  fig.tight_layout()
  return fig


def validation_curves_figure(records: Sequence[dict]) -> Figure:
  """Validation loss against training step, one line per model and seed, with a marker at
  each evaluated checkpoint (``rnem_jax.summarize.budget_records``; copies of one run trained
  to different budgets share their history, so the longest one's curve is drawn)."""

  runs: dict[tuple, list[dict]] = {}
  for r in records:
    runs.setdefault((r["name"], r["seed"]), []).append(r)
  if not runs:
    raise ValueError("no runs to draw")
  fig = Figure(figsize=(6.0, 3.8), dpi=100)
  ax = fig.add_subplot()
  colours = component_colours(len(runs))
  for colour, ((name, seed), group) in zip(colours, runs.items()):
    longest = max(group, key=lambda r: len(r["valid_curve"]))
    if not longest["valid_curve"]:
      continue
    steps, losses = np.asarray(longest["valid_curve"], np.float64).T
    ax.plot(steps, losses, color=colour, label=f"{label(name)}, seed {seed}")
    marked = [(r["checkpoint_step"], r["valid_loss"]) for r in group
              if r["valid_loss"] is not None]
    if marked:
      ax.plot(*np.asarray(marked, np.float64).T, ls="", marker="o", ms=5, color=colour)
  ax.set_yscale("log")
  ax.yaxis.set_major_formatter(mticker.ScalarFormatter())
  ax.yaxis.set_minor_formatter(mticker.ScalarFormatter())
  ax.set_xlabel("training step")
  ax.set_ylabel("validation loss")
  ax.set_title("validation loss (dots: evaluated checkpoints)", fontsize=9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


# ---------------------------------------------------------------------------
# Animations: lists of uint8 [H', W', 3] frames, one per step.


def gif_scale(size: int, target: int = 128) -> int:
  return max(1, target // size)


def prediction_frames(seq: SequenceView) -> np.ndarray:
  """[T, H', W', 3] uint8: noisy input | total prediction | ground truth, per step."""
  s = gif_scale(seq.truth.shape[1])
  pred = seq.prediction
  return np.stack([to_uint8(tile([[grey(seq.inputs[t]), grey(pred[t]), grey(seq.truth[t])]],
                                 pad=2, scale=s)) for t in range(len(pred))])


def grouping_frames(seq: SequenceView, attention: bool = True) -> np.ndarray:
  """[T, H', W', 3] uint8: gamma coloured | psi_1 .. psi_K (with attention overlays)."""
  T, K = seq.psi.shape[:2]
  colours = component_colours(K)
  s = gif_scale(seq.truth.shape[1])
  frames = []
  for t in range(T):
    comps = [framed(attention_overlay(seq.psi[t], seq.alpha[t], k, colours) if attention
                    else grey(seq.psi[t, k]), colours[k]) for k in range(K)]
    frames.append(to_uint8(tile([[colour_gamma(seq.gamma[t], colours)] + comps], pad=2,
                                scale=s)))
  return np.stack(frames)


def rollout_frames(truth: np.ndarray, rollout: np.ndarray, num_real_steps: int) -> np.ndarray:
  """[T, H', W', 3] uint8: ground truth | rollout, framed green (observed) or red (simulated)."""
  s = gif_scale(truth.shape[1])
  frames = []
  for t in range(truth.shape[0]):
    colour = REAL_COLOUR if t < num_real_steps else SIM_COLOUR
    frames.append(to_uint8(tile([[framed(grey(truth[t]), (0.5, 0.5, 0.5)),
                                  framed(grey(rollout[t]), colour)]], pad=2, scale=s)))
  return np.stack(frames)


def write_gif(path: str, frames: np.ndarray, fps: float = 4.0) -> str:
  import imageio.v2 as imageio

  imageio.mimsave(path, list(frames), duration=1000.0 / fps, loop=0)
  return path


# ---------------------------------------------------------------------------
# A run's figures, from the outputs ``rnem_jax.evaluate.sample_outputs`` computed.


def render_run(samples: dict, out_dir: str, *, name: str, attention: bool,
               rollout_record: Optional[dict] = None) -> dict:
  """Writes every figure and animation of one run to ``out_dir``; returns {name: path}.

  Args:
    samples: ``rnem_jax.evaluate.sample_outputs`` of the run.
    out_dir: created if missing.
    name: the run's model name (titles, the legend of ``rollout_bce.png``).
    attention: overlay the attention of R-NEM's interaction function on the components.
    rollout_record: the run's ``rollout.json``; ``rollout_bce.png`` (paper Fig. 4 right, with
      the object curves where the dataset has balls) is drawn when it is given.
  """
  os.makedirs(out_dir, exist_ok=True)
  title = f"{name} (step {samples['step']}) on {samples['dataset']}"
  n_real = samples["num_real_steps"]
  paths = {}

  def save(key, fig):
    paths[key] = os.path.join(out_dir, f"{key}.png")
    fig.savefig(paths[key])

  seq = sequence_view(*samples["panel"], 0)
  save("panel", panel_figure(seq, attention=attention, title=title))
  save("panel_compact", panel_figure(seq, rows=COMPACT_ROWS, title=title))
  save("panel_foreground", panel_figure(seq, rows=FOREGROUND_ROWS, title=title))
  paths["prediction_gif"] = write_gif(os.path.join(out_dir, "prediction.gif"),
                                      prediction_frames(seq))
  paths["grouping_gif"] = write_gif(os.path.join(out_dir, "grouping.gif"),
                                    grouping_frames(seq, attention))
  outputs, features = samples["rollout"]
  views = [sequence_view(outputs, features, b) for b in range(features.shape[1])]
  n_sim = features.shape[0] - 1 - n_real
  save("rollout", rollout_figure([v.truth for v in views], {name: [v.prediction for v in views]},
                                 n_real, title=f"{title}: {n_real} real + {n_sim} simulated"))
  paths["rollout_gif"] = write_gif(os.path.join(out_dir, "rollout.gif"),
                                   rollout_frames(views[0].truth, views[0].prediction, n_real))
  if rollout_record is not None:
    save("rollout_bce", rollout_bce_figure({name: rollout_record}))
  log.info("wrote %s", ", ".join(sorted(paths.values())))
  return paths
