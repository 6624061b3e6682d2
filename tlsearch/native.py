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

__all__ = ["DEFAULTS", "configure", "import_tensorflow_quietly"]

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


#: Lines TensorFlow's C++ side prints at start-up, before its own log level applies
#: (absl writes everything to stderr until it is initialised): noise, not news.
_STARTUP_NOISE = ("All log messages before absl::InitializeLog()", "cudart_stub.cc",
                  "cuda_platform.cc", "cuda_executor.cc", "cpu_feature_guard.cc",
                  "port.cc:", "To enable the following instructions", "rebuild TensorFlow",
                  "Unable to register cu", "computation placer already registered",
                  "TF-TRT Warning")


def import_tensorflow_quietly():
    """Import TensorFlow and start its runtime with the start-up noise filtered out.

    The C++ start-up lines go to file descriptor 2 before any Python logging exists, so
    the descriptor itself is pointed at a temporary file for the import; every line that
    is not known noise is written back to stderr afterwards. Returns the module.
    """
    import sys
    import tempfile

    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    configure()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # the device scan prints its lines now
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines()
                    if line.strip() and not any(n in line for n in _STARTUP_NOISE)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
    return tf
