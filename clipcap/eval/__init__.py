"""clipcap.eval: ``clipcap eval`` — caption an embedding set (``evaluate``) and score it with the
COCO caption metrics (``metrics``, torch-free)."""
