"""TFDS dataset folder 'bouncing_balls' (builder: bouncing_balls_dataset_builder.Builder; loaded by rnem_jax.data)."""
