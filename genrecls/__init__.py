"""genrecls: predict movie genres from poster images (Keras 3 on TensorFlow).

Importing the package is cheap: TensorFlow is imported only by the modules
that need it (pipeline, backbones, training, ...).
"""

from genrecls.errors import GenreclsError

__version__ = "0.1.0"
__all__ = ["GenreclsError", "__version__"]
