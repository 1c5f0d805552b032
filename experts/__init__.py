"""Vision experts: each turns a decoded image and a few arguments into a structured result.

Experts never import the router. The router sees only :mod:`experts.registry`,
:mod:`experts.schema` and :mod:`experts.images`.
"""

from experts.base import PACKAGE_VERSION as __version__
from experts.base import Expert
from experts.errors import ExpertError, ImageError, VisionRouterError
from experts.images import DecodedImage, decode_image, load_image_file
from experts.schema import BBox, ExpertResult, ImageAnalysis, Style, TextLine

__all__ = [
    "__version__",
    "BBox",
    "DecodedImage",
    "Expert",
    "ExpertError",
    "ExpertResult",
    "ImageAnalysis",
    "ImageError",
    "Style",
    "TextLine",
    "VisionRouterError",
    "decode_image",
    "load_image_file",
]
