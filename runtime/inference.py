"""The decoder graph with its KV cache, behind decoding's ``Inference`` protocol.

``NumpyInference`` feeds numpy arrays and keeps the cache as the arrays ONNX Runtime returned: a
step passes them straight back as the next step's past (no copy on our side); rows are dropped or
reordered only when a caption finishes or beams move.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort


@dataclass(frozen=True)
class DecoderShape:
    n_layer: int
    n_head: int
    head_dim: int
    embed_dim: int
    kv_dtype: type  # np.float32, or np.float16 for fp16 bundles

    @property
    def past_names(self) -> list[str]:
        return [f"past_key_values.{i}.{k}" for i in range(self.n_layer) for k in ("key", "value")]

    def empty_past(self, batch: int) -> np.ndarray:
        return np.zeros((batch, self.n_head, 0, self.head_dim), dtype=self.kv_dtype)

    def prefill_inputs(self, prefix_embeds: np.ndarray) -> dict[str, np.ndarray]:
        B, P, _ = prefix_embeds.shape
        return {
            "prefix_embeds": prefix_embeds.astype(np.float32, copy=False),
            "input_ids": np.zeros((B, 0), dtype=np.int64),
            "attention_mask": np.ones((B, P), dtype=np.int64),
        }

    def step_inputs(self, tokens: np.ndarray, past_length: int) -> dict[str, np.ndarray]:
        N = tokens.shape[0]
        return {
            "prefix_embeds": np.zeros((N, 0, self.embed_dim), dtype=np.float32),
            "input_ids": tokens.astype(np.int64, copy=False)[:, None],
            "attention_mask": np.ones((N, past_length + 1), dtype=np.int64),
        }


class NumpyInference:
    """One decoding run: prefill, then steps; not shared between threads (make one per call)."""

    def __init__(self, session: ort.InferenceSession, shape: DecoderShape) -> None:
        self.session = session
        self.shape = shape
        self.past: list = []  # one array per past_key_values input, as the last run returned it
        self.length = 0  # positions in the cache

    def prefill(self, prefix_embeds: np.ndarray) -> np.ndarray:
        self.past = [self._empty(len(prefix_embeds))] * len(self.shape.past_names)
        return self._run(self.shape.prefill_inputs(prefix_embeds), prefix_embeds.shape[1])

    def step(self, tokens: np.ndarray) -> np.ndarray:
        return self._run(self.shape.step_inputs(tokens, self.length), self.length + 1)

    def select(self, rows: np.ndarray) -> None:
        self.past = [p[rows] for p in self.past]

    def _empty(self, batch: int):
        return self.shape.empty_past(batch)

    def _run(self, inputs: dict[str, np.ndarray], length: int) -> np.ndarray:
        feeds = {**inputs, **dict(zip(self.shape.past_names, self.past, strict=True))}
        logits, *self.past = self.session.run(None, feeds)
        self.length = length
        return logits


class IOBindingInference(NumpyInference):
    """The cache stays where the session computes (the GPU with CUDA): each step binds the previous
    step's ``present.*`` OrtValues as its ``past_key_values.*`` and only the logits come back to
    the host. Runs on the CPU provider too, so tests exercise it without a GPU.

    Dropping or reordering rows (a caption finished, beams moved) runs the bundle's
    ``cache_reorder`` graph on the same device; without one (bundles made before it existed) the
    cache goes through the host for that.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        shape: DecoderShape,
        device: str = "cpu",
        device_id: int = 0,
        reorder: ort.InferenceSession | None = None,
    ):
        super().__init__(session, shape)
        self.reorder = reorder
        self.device, self.device_id = device, device_id

    def _empty(self, batch: int) -> ort.OrtValue:
        return self._on_device(self.shape.empty_past(batch))

    def select(self, rows: np.ndarray) -> None:
        if self.reorder is None:
            self.past = [self._on_device(v.numpy()[rows]) for v in self.past]
            return
        binding = self.reorder.io_binding()
        binding.bind_ortvalue_input("beam_idx", self._on_device(np.asarray(rows, dtype=np.int64)))
        for name, value in zip(self.shape.past_names, self.past, strict=True):
            binding.bind_ortvalue_input(name, value)
            binding.bind_output(name.replace("past_key_values.", "reordered."), self.device, self.device_id)
        self.reorder.run_with_iobinding(binding)
        self.past = binding.get_outputs()

    def _on_device(self, array: np.ndarray) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, self.device_id)

    def _run(self, inputs: dict[str, np.ndarray], length: int) -> np.ndarray:
        binding = self.session.io_binding()
        for name, value in inputs.items():
            binding.bind_ortvalue_input(name, self._on_device(value))
        for name, value in zip(self.shape.past_names, self.past, strict=True):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")  # decoding reads them on the host
        for name in self.shape.past_names:
            binding.bind_output(name.replace("past_key_values.", "present."), self.device, self.device_id)
        self.session.run_with_iobinding(binding)
        logits, *self.past = binding.get_outputs()
        self.length = length
        return logits.numpy()
