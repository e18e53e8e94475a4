"""clipcap.models: the PyTorch side of ClipCap (needs the ``[export]`` extra).

GPT-2 with its KV cache (``gpt2``), the mapping networks (``mapper``), ``ClipCapModel`` (``model``),
every checkpoint format (``checkpoints``), the CLIP image encoders (``clip``) and the PyTorch
reference decoder (``generate``). Importing this package imports nothing; each module imports torch.
"""
