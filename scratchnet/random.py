"""Seeded randomness: one global numpy Generator, replaceable with ``manual_seed``."""

import numpy as np

_global = np.random.default_rng()


def manual_seed(seed):
    """Seed scratchnet's global generator (used for initialization when no seed is given)."""
    global _global
    _global = np.random.default_rng(seed)
    return _global


def default_generator(seed=None):
    """A Generator from an int seed, the Generator itself, or the global one for None."""
    if seed is None:
        return _global
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def get_state():
    """The global generator's state (a plain dict): what a checkpoint keeps so dropout masks continue after a resume."""
    return _global.bit_generator.state


def set_state(state):
    _global.bit_generator.state = state
