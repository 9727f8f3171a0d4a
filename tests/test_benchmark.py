"""rnem_jax.benchmark: the CLI writes its JSON, and the FLOP count is the hand count."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from rnem_jax import benchmark
from rnem_jax import model as M

REQUIRED = ("train_step_s", "compile_s", "gflops_per_s", "matmul_gflops_per_s", "peak_rss_gb")


def test_cli_writes_json_with_the_required_keys(tmp_path, compile_cache):
  """(The step it compiles is test_synthetic_train_step's, which the shared compilation cache
  then holds.)"""
  out = tmp_path / "bench.json"
  proc = subprocess.run(
      [sys.executable, "-m", "rnem_jax.benchmark", "--model=rnem", "--batch=2", "--K=2", "--T=2",
       "--image_size=16", "--hidden=250", "--interaction_sizes=250,250,250,100", "--unroll=full",
       "--repeats=1", "--matmul_size=128", f"--json={out}"],
      capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "train_step_s" in proc.stdout  # the table header
  result = json.loads(out.read_text())
  for key in REQUIRED + ("forward_s", "eval_s", "train_gflop", "ratio_to_matmul", "variants"):
    assert key in result, key
  for key in REQUIRED:
    assert result[key] > 0, key
  assert (result["B"], result["K"], result["T"], result["image_size"]) == (2, 2, 2, 16)
  assert result["gflops_per_s"] == pytest.approx(result["train_gflop"] / result["train_step_s"])
  assert result["host_allocator"] in ("reuse", "system")
  assert result["train_page_faults_per_step"] >= 0


def test_jaxpr_flops_counts_convolutions_and_matmuls():
  def f(x, w, a, b):
    y = jax.lax.conv_general_dilated(x, w, (2, 2), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y.reshape(3, -1) @ a, jax.lax.scan(lambda c, _: (c @ b, None), a[:5, :5], None, 4)
  x, w = jnp.ones((3, 8, 8, 2)), jnp.ones((4, 4, 2, 5))
  a, b = jnp.ones((80, 7)), jnp.ones((5, 5))
  conv = 2 * 3 * 4 * 4 * 5 * (4 * 4 * 2)
  dense = 2 * 3 * 80 * 7
  scan = 4 * 2 * 5 * 5 * 5
  assert benchmark.jaxpr_flops(jax.make_jaxpr(f)(x, w, a, b).jaxpr) == conv + dense + scan


def test_network_flops_are_the_nominal_count():
  """RNN-EM at 16x16: the balls encoder/decoder convolutions and fcs, and the cell."""
  cfg = M.default_model_config(image_size=16, cell="rnn", hidden=8)
  net = M.build_network(cfg)
  params = M.init_params(net, jax.random.key(0))
  convs = (8 * 8 * 16 * 16 * 1 + 4 * 4 * 32 * 16 * 16 + 2 * 2 * 64 * 16 * 32     # encoder
           + 4 * 4 * 32 * 16 * 64 + 8 * 8 * 16 * 16 * 32 + 16 * 16 * 1 * 16 * 16)  # decoder
  dense = 2 * 2 * 64 * 512 + (8 + 512) * 8 + 8 * 512 + 512 * 2 * 2 * 64
  assert benchmark.network_step_flops(net, params, 1, 1) == 2 * (convs + dense)


def test_synthetic_train_step_is_the_documented_network_params_and_key(compile_cache):
  """Its first step's loss is the training loss of init_params(key 0) on its batch, with the
  training loop's per-sequence keys from key 2."""
  from rnem_jax import em
  B, K, T, size = 2, 2, 2, 16
  compiled, state, batch, key = benchmark.synthetic_train_step("rnem", B=B, K=K, T=T,
                                                               image_size=size)
  assert batch["features"].shape == (T + 1, B, size, size, 1)
  network = M.build_network(benchmark.model_config("rnem", size)[0])
  params = M.init_params(network, jax.random.key(0), K)
  loss = jax.jit(lambda p, x, k: em.training_loss(network, p, x, k, K=K, noise_prob=0.2)[0])
  expected = loss(params, batch["features"], em.sequence_keys(jax.random.key(2), 0, B))
  state, metrics = compiled(state, batch, key)
  assert int(state.step) == 1
  assert float(metrics["loss"]) == pytest.approx(float(expected), rel=1e-4)
