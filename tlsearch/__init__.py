"""tlsearch: find the transfer-learning strategy that works for your images.

Importing this package never imports TensorFlow; the heavy modules import it
lazily, so `tlsearch --help` stays instant.
"""

from tlsearch import native

native.configure()  # before anything can import TensorFlow

from tlsearch.strategy import Strategy  # noqa: E402

__version__ = "0.1.0"

__all__ = ["Strategy", "__version__"]
