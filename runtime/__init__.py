"""clipcap.runtime: caption images from an exported bundle with ONNX Runtime alone.

Needs onnxruntime, numpy, Pillow and tokenizers; never torch.

    from clipcap.runtime import Captioner
    print(Captioner("my-bundle").caption("photo.jpg").text)
"""

from clipcap.runtime.bundle import BundleError
from clipcap.runtime.captioner import Caption, Captioner
from clipcap.runtime.images import ImageError, load_image

from clipcap.options import DecodingOptions
from clipcap.tokenizer import load_tokenizer

# clipcap.runtime.preprocess is a module; its function of the same name is not re-exported here,
# where it would hide the module.
__all__ = [
    "BundleError",
    "Caption",
    "Captioner",
    "DecodingOptions",
    "ImageError",
    "load_image",
    "load_tokenizer",
]
