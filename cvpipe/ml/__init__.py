"""Keras building blocks: models, variants, arrays, callbacks, device, weights, metrics."""
