"""Every figure and animation renders from a tiny trained checkpoint's outputs."""

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import load_config
from rnem_jax import data, em, evaluate, train, visualize
from rnem_jax.model import build_network, init_params

N_SIM = 3  # simulated rollout steps (5 real + 3): enough to see both kinds, quick to compile


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir, compile_cache):
  config = load_config("balls", "tiny", data_dir=data_dir, **{"rollout.num_sim_steps": N_SIM})
  workdir = str(tmp_path_factory.mktemp("viz_run"))
  train.train_and_evaluate(config, workdir)
  evaluate.evaluate(config, workdir)
  evaluate.rollout(config, workdir)
  return config, workdir


def _png_size(path):
  with Image.open(path) as im:
    assert im.format == "PNG"
    return im.size


def _gif(path):
  with Image.open(path) as im:
    assert im.format == "GIF"
    return im.n_frames, im.size


def test_render_run_writes_every_figure_and_animation(run, tmp_path):
  config, workdir = run
  out = str(tmp_path / "figs")
  samples = evaluate.sample_outputs(config, workdir, num_sequences=2)
  assert samples["panel"][1].shape[:2] == (config.em.T + 1, 2)
  assert samples["rollout"][1].shape[:2] == (5 + N_SIM + 1, 2)
  with open(os.path.join(workdir, "rollout.json")) as f:
    record = json.load(f)
  paths = visualize.render_run(samples, out, name=config.name, attention=True,
                               rollout_record=record)
  assert set(paths) == {"panel", "panel_compact", "panel_foreground", "rollout", "rollout_bce",
                        "prediction_gif", "grouping_gif", "rollout_gif"}
  T, K = config.em.T, config.em.K
  # Figure 2 panel: truth, prediction, gamma, K components, input rows; T columns of 0.5 in.
  w, h = _png_size(paths["panel"])
  assert h == round(100 * (0.9 + (3 + K + 1) * 0.5)) and w == 550
  w, h = _png_size(paths["panel_compact"])
  assert h == round(100 * (0.9 + 3 * 0.5))
  assert _png_size(paths["panel_foreground"]) == (w, h)
  # Figure 4 strips: 2 sequences x (truth, model), 5 real + N_SIM simulated columns.
  assert _png_size(paths["rollout"]) == (round(100 * (1.6 + (5 + N_SIM) * 0.5)),
                                         round(100 * (0.9 + 4 * 0.5)))
  # BCE, balls kept and position error per step (a balls dataset)
  assert _png_size(paths["rollout_bce"]) == (3 * 550, 2 * 360)   # two rows of panels
  # GIFs: one frame per step; 32 px tiles scaled x4 with 2 px gaps.
  assert _gif(paths["prediction_gif"]) == (T, (3 * 128 + 2 * 2, 128))
  assert _gif(paths["grouping_gif"]) == (T, ((1 + K) * 128 + K * 2, 128))
  assert _gif(paths["rollout_gif"]) == (5 + N_SIM, (2 * 128 + 2, 128))


def test_gamma_on_frame_row_is_gamma_on_the_on_pixels():
  T, K, S = 2, 3, 6
  rng = np.random.default_rng(0)
  gamma = rng.dirichlet(np.ones(K), size=(T, S, S)).transpose(0, 3, 1, 2)[..., None]
  truth = (rng.random((T, S, S, 1)) < 0.4).astype(np.float32)
  seq = visualize.SequenceView(inputs=truth, psi=rng.random((T, K, S, S, 1)), gamma=gamma,
                               alpha=np.zeros((T, K, K)), truth=truth)
  fig = visualize.panel_figure(seq, rows=("gamma_on_frame",))
  want = visualize.colour_gamma(gamma[1], visualize.component_colours(K)) * truth[1]
  got = fig.axes[0].images[0].get_array()[:S, S + 1:2 * S + 1]   # tile of step 1 (1 px gaps)
  np.testing.assert_allclose(np.asarray(got, np.float32) / (255 if got.dtype == np.uint8 else 1),
                             want, atol=1 / 255 + 1e-6)
  with pytest.raises(ValueError, match="unknown panel rows"):
    visualize.panel_figure(seq, rows=("gamma_on_background",))


def test_curtain_panel_is_the_same_function(run, tmp_path, data_dir):
  """Figure 5: the compact panel on curtain sequences (the balls model takes 32x32 frames too)."""
  config, workdir = run
  curtain = load_config("curtain", "tiny", data_dir=data_dir)
  network = build_network(config.model)
  params, _ = evaluate.restore_params(config, workdir, network, train.make_mesh())
  batch = evaluate.sample_batch(curtain, 1, curtain.em.T + 1)
  r = evaluate.model_outputs(curtain, network, params, batch, seed=0)
  seq = visualize.sequence_view(r, batch["features"])
  fig = visualize.panel_figure(seq, rows=visualize.COMPACT_ROWS, steps=[0, 2, 4])
  fig.savefig(tmp_path / "figure5.png")
  assert _png_size(tmp_path / "figure5.png") == (550, 240)


def test_space_invaders_panel_at_84px_with_actions(tmp_path):
  """Figure 6 layout on the Atari network (84x84, K=4, actions), untrained: shapes only."""
  config = load_config("atari", "tiny")
  network = build_network(config.model)
  params = init_params(network, jax.random.key(0))
  rng = np.random.default_rng(0)
  T, K = 3, config.em.K
  x = (rng.random((T + 1, 1, 84, 84, 1)) < 0.1).astype(np.float32)
  actions = rng.integers(0, 6, (T + 1, 1)).astype(np.int32)
  r = em.rollout(network, params, x, jax.random.key(1), K=K, actions=actions,
                 keep_outputs=True)
  seq = visualize.sequence_view(r, x)
  visualize.panel_figure(seq, rows=visualize.COMPACT_ROWS).savefig(tmp_path / "fig6.png")
  assert _png_size(tmp_path / "fig6.png") == (550, 345)
  frames = visualize.grouping_frames(seq)
  assert frames.shape == (T, 84, (1 + K) * 84 + 2 * K, 3) and frames.dtype == np.uint8


def test_attention_overlay_colours_the_attended_component():
  K, colours = 3, visualize.component_colours(3)
  psi = np.zeros((K, 4, 4, 1), np.float32)
  psi[1, 0, 0] = 1.0                                   # component 2 predicts one pixel
  alpha = np.zeros((K, K), np.float32)
  alpha[0, 1] = 1.0                                    # component 1 attends to component 2
  img = visualize.attention_overlay(psi, alpha, 0, colours)
  np.testing.assert_allclose(img[0, 0], colours[1], atol=1e-6)
  np.testing.assert_allclose(img[1:], 0.0)
  np.testing.assert_allclose(visualize.attention_overlay(psi, alpha, 2, colours), 0.0)
  uniform = np.full((K, 2, 2, 1), 1.0 / K, np.float32)   # gamma: each pixel mixes all colours
  np.testing.assert_allclose(visualize.colour_gamma(uniform, colours)[0, 0], colours.mean(0),
                             atol=1e-6)


def test_rollout_curves_refuse_different_horizons():
  rec = {"model": "m", "dataset": "d", "K": 5, "num_real_steps": 5, "num_sim_steps": 10,
         "num_sequences": 4, "bce_per_step": [1.0] * 15, "baseline_bce_per_step": [2.0] * 15}
  other = dict(rec, num_sim_steps=20, bce_per_step=[1.0] * 25)
  with pytest.raises(ValueError, match="num_sim_steps"):
    visualize.rollout_bce_figure({"a": rec, "b": other})


def test_rollout_figure_draws_every_object_curve_a_record_has():
  """Balls kept, mass, position error and swaps: one panel each beside the BCE; a record from
  before a curve existed (no swap_rate_per_step here) leaves that panel without its line."""
  rec = {"model": "m", "dataset": "d", "K": 5, "num_real_steps": 2, "num_sim_steps": 2,
         "num_sequences": 4, "bce_per_step": [1.0, 2.0, 3.0, 4.0],
         "balls_kept_per_step": [1.0, 1.0, 0.5, 0.0], "ball_mass_per_step": [0.9, 0.8, 0.4, 0.1],
         "position_error_px_per_step": [0.5, 0.6, 1.0, None],
         "swap_rate_per_step": [None, 0.0, 0.25, None]}
  old = {k: v for k, v in rec.items() if k != "swap_rate_per_step"}
  fig = visualize.rollout_bce_figure({"a": rec, "b": old})
  assert [ax.get_ylabel() for ax in fig.axes][1:] == [t for _, t in visualize.OBJECT_PANELS]
  lines = {ax.get_ylabel(): [ln.get_label() for ln in ax.get_lines()
                             if not ln.get_label().startswith("_")]   # the simulated-step mark
           for ax in fig.axes}
  assert lines["identity swaps (share of tracked balls)"] == ["a"]
  assert lines["mass on the true discs"] == ["a", "b"]
  np.testing.assert_array_equal(fig.axes[4].get_lines()[0].get_ydata()[2], 0.25)


def test_rollout_ablation_and_reference_curves(run, data_dir):
  config, workdir = run
  rec = evaluate.rollout_ablation(config, workdir)
  assert json.loads(open(os.path.join(workdir, "rollout_ablation.json")).read()) == rec
  assert not [f for f in os.listdir(workdir) if f.startswith("rollout_") and "ablation" not in f]
  curves = {k: np.asarray(v) for k, v in rec["bce_per_step"].items()}
  assert set(curves) == set(evaluate.ROLLOUT_ABLATION)
  n = rec["num_real_steps"]
  for name in curves:   # same data, noise and gamma0: identical until the simulation starts
    np.testing.assert_allclose(curves[name][:n], curves["real"][:n], rtol=1e-6)
  assert not np.allclose(curves["simulated"][n + 1:], curves["real"][n + 1:])
  # "real" is an ordinary evaluation over the same steps, seed and sequences
  network = build_network(config.model)
  mesh = train.make_mesh()
  params, _ = evaluate.restore_params(config, workdir, network, mesh)
  plain, _ = evaluate.run_metrics(config, params, network, mesh, dataset=config.dataset,
                                  split="test", K=config.em.K, T=n + N_SIM,
                                  batch_size=config.rollout.batch_size, max_sequences=0,
                                  seed=config.rollout.seed)
  np.testing.assert_allclose(curves["real"], plain["bce"], rtol=1e-5)
  # reference curves by hand: every wrongly predicted pixel costs -log(1e-6) nats
  x = np.concatenate([b["features"] for b in data.iterate_batches(
      config.dataset, "test", 4, seed=0, num_frames=n + N_SIM + 1, shuffle=False, num_epochs=1,
      drop_remainder=False, data_dir=data_dir)], axis=1).astype(np.float64)
  nats = -np.log(1e-6)
  blank = x[1:].reshape(n + N_SIM, x.shape[1], -1).sum(-1).mean(-1) * nats
  np.testing.assert_allclose(rec["blank_bce_per_step"], blank, rtol=1e-4)
  held = np.abs(x[1:] - x[n - 1][None]).reshape(n + N_SIM, x.shape[1], -1).sum(-1).mean(-1)
  np.testing.assert_allclose(rec["held_bce_per_step"][n:], held[n:] * nats, rtol=1e-4)
  np.testing.assert_allclose(rec["held_bce_per_step"][:n], rec["baseline_bce_per_step"][:n],
                             rtol=1e-6)


def test_figure3_summary_shows_only_the_test_sets_it_has():
  stat = lambda v: {"mean": v, "std": 0.01, "seeds": 3}
  curtain = {"rnem_cpu": {"bce_last_rel": stat(0.12), "relational_bce_last_rel": stat(0.1),
                          "ari_last": stat(0.7)},
             "rnn_cpu": {"bce_last_rel": stat(0.16), "relational_bce_last_rel": stat(0.14)}}
  fig = visualize.figure3_summary(curtain, test_set="curtain (3 balls)")
  assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["curtain (3 balls)"]
  # R-NEM then RNN: one bar each on BCE, R-NEM alone on ARI (K=1 groups nothing)
  assert [p.get_height() for p in fig.axes[0].patches] == [0.12, 0.16]
  assert [p.get_height() for p in fig.axes[2].patches] == [0.7]
  balls = {n: {**m, "bce_last_rel_678": stat(0.2)} for n, m in curtain.items()}
  fig = visualize.figure3_summary(balls)
  assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["4 balls", "6-8 balls"]
