"""egds: content-addressed, versioned datasets of text-chunk embeddings."""

__version__ = "0.1.0"

from .errors import EgdsError  # noqa: E402
from .repo import Repository  # noqa: E402

__all__ = ["EgdsError", "Repository", "__version__"]
