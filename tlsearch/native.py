"""Process-wide defaults for TensorFlow's native libraries, set before it is imported.

TensorFlow's oneDNN (MKL) kernels crash the process on AVX-512 CPUs such as AMD EPYC
Zen 4/5: `MklConvBwdFilterPrimitive` (the convolution's weight gradient) segfaults or
aborts in the traced train step of a fine-tuning trial. Measured on such a machine
(benchmarks/RESULTS-onednn.md): every oneDNN ISA level from AVX512_CORE up crashes,
AVX2 does not, the primitive cache and inter-op threading are not the trigger. With
oneDNN off TensorFlow uses its Eigen kernels, which never crash and were not slower on
the engine benchmark, so that is the default everywhere. A user who wants oneDNN sets
`TF_ENABLE_ONEDNN_OPTS=1` (and, on AVX-512 CPUs, `ONEDNN_MAX_CPU_ISA=AVX2`).
"""

from __future__ import annotations

import os

__all__ = ["DEFAULTS", "configure"]

#: Environment defaults; a value the user already set is never overridden.
DEFAULTS: dict[str, str] = {
    "TF_ENABLE_ONEDNN_OPTS": "0",
    # C++ log lines ("oneDNN custom operations are on", "Could not find cuda drivers")
    # before the first useful line; errors still print.
    "TF_CPP_MIN_LOG_LEVEL": "2",
}


def configure() -> None:
    """Apply `DEFAULTS` to `os.environ` (idempotent; called by `import tlsearch`)."""
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
