"""CPU latency of a deployable model: batch 1, every op on the CPU, median of repeats.

`--max-latency-ms` promises a CPU figure, so latency is measured on the CPU device
even where a GPU is visible. It depends on the architecture, not the trained values:
a trial's model is measured once per architecture in a process (`model_latency_ms`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from tlsearch.strategy import Strategy

__all__ = ["cpu_inference_fn", "measure_latency_ms", "model_latency_ms"]

_LATENCY_MEMO: dict[tuple, float] = {}


def cpu_inference_fn(model: Any) -> Any:
    """`model(x, training=False)` traced with every op placed on the CPU.

    Where a GPU is visible, the model is first cloned under the CPU device (fresh
    weights: latency depends on the architecture, not the values), so that no call
    reads variables across the bus.
    """
    import keras
    import tensorflow as tf

    with tf.device("/CPU:0"):
        if tf.config.list_logical_devices("GPU"):
            model = keras.models.clone_model(model)

        @tf.function
        def fn(x):
            with tf.device("/CPU:0"):
                return model(x, training=False)

    return fn


def model_latency_ms(model: Any, strategy: Strategy, repeats: int = 10) -> float:
    """Median batch-1 CPU latency of a trial's deployable model, after one warm-up call.

    Measured on the CPU device explicitly (`cpu_inference_fn`), so a machine with a
    GPU reports what `--max-latency-ms` promises. Latency depends on the architecture,
    not the trained values, so it is measured once per (backbone, size, head shape) in
    a process.
    """
    key = (strategy.backbone, strategy.image_size, strategy.head_hidden_units,
           strategy.augmentation, model.count_params())
    if key in _LATENCY_MEMO:
        return _LATENCY_MEMO[key]

    _LATENCY_MEMO[key] = measure_latency_ms(model, strategy.image_size, repeats)
    return _LATENCY_MEMO[key]


def measure_latency_ms(model: Any, size: int, repeats: int = 10) -> float:
    """Median batch-1 CPU latency of `model` on (1, size, size, 3), after a warm-up call."""
    import tensorflow as tf

    fn = cpu_inference_fn(model)
    with tf.device("/CPU:0"):
        x = tf.zeros((1, size, size, 3))
        fn(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)
