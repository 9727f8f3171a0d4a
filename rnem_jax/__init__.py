"""rnem_jax: Relational Neural Expectation Maximization in JAX/Flax.

Public library modules: :mod:`rnem_jax.interaction` (the relational function
Upsilon), :mod:`rnem_jax.em` (E-step, loss, scanned EM rollout) and
:mod:`rnem_jax.metrics` (ARI and the BCE family).
"""

__version__ = "0.1.0"
