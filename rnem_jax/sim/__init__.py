"""Simulators behind the datasets: pymunk bouncing balls and Space Invaders (ALE).

The TFDS builders in ``datasets/`` are thin wrappers around these modules.
"""
