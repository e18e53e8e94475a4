"""clipcap.export: trace ClipCap's graphs to ONNX, verify them against PyTorch, write a bundle.

Arrives with the export issue.
"""
