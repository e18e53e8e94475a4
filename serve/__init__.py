"""clipcap.serve: an HTTP captioning service with continuous batching on the torch-free runtime.

Needs the ``[serve]`` extra (FastAPI, uvicorn, python-multipart, prometheus-client); never torch.
"""
