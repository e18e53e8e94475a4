"""clipcap.runtime: caption images from an exported bundle with ONNX Runtime alone.

Needs onnxruntime, numpy, Pillow and tokenizers; never torch. The captioner itself arrives with
the runtime issue; this package already holds the torch-free pieces it is built from.
"""

from clipcap.tokenizer import load_tokenizer

__all__ = ["load_tokenizer"]
