"""TFDS dataset folder 'curtain' (builder: curtain_dataset_builder.Builder; loaded by rnem_jax.data)."""
