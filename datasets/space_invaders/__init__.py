"""TFDS dataset folder 'space_invaders' (builder: space_invaders_dataset_builder.Builder; loaded by rnem_jax.data)."""
