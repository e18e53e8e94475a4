"""clipcap.data: captioned image sets and CLIP embedding sets.

``datasets`` reads COCO, Conceptual Captions and folders (torch-free); ``embeddings`` writes and
reads the embedding sets that ``clipcap embed`` makes (torch-free); ``embed`` computes them with a
CLIP encoder (torch).
"""
