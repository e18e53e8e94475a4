"""clipcap.runtime: caption images from an exported bundle with ONNX Runtime alone.

Needs onnxruntime, numpy, Pillow and tokenizers; never torch. So far it holds the torch-free
pieces the captioner is built from: image loading, CLIP preprocessing and the tokenizer.
"""

from clipcap.runtime.images import ImageError, load_image
from clipcap.tokenizer import load_tokenizer

# clipcap.runtime.preprocess is a module; its function of the same name is not re-exported here,
# where it would hide the module.
__all__ = ["ImageError", "load_image", "load_tokenizer"]
