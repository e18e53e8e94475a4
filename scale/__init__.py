"""Captioning at scale: whole datasets through a bundle, streamed, pipelined and resumable on one
machine (``clipcap.scale.dataset``), and on a Ray cluster beyond it (the ``[ray]`` extra)."""
