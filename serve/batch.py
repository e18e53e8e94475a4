"""The running batch's KV cache: rows of different lengths in one array, left-padded.

Every row's real positions end at the cache's last column; a row that joined later has zeros in
front, masked out by ``attention_mask`` (0 over its padding). GPT-2 takes each position from the
mask's cumulative sum (``clipcap/models/gpt2.py``), so a padded row sees the same positions, keys
and values as it would alone: on the tiny bundle the fused decoder's logits with padding equal
the unpadded ones exactly (``tests/test_serve_engine.py`` checks it), and padding zeros never
reach a softmax.

The cache is kept as the arrays ONNX Runtime returned (as ``NumpyInference`` does); rows are
gathered only when some leave or beams move, and leading columns that are padding for every row
are cut off then, so the batch stops paying for rows that left.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from clipcap.runtime.inference import DecoderShape


class KVBatch:
    """The decoder's cache for all running rows, and the decoder runs on it (one thread only)."""

    def __init__(self, session: ort.InferenceSession, shape: DecoderShape) -> None:
        self.session = session
        self.shape = shape
        self.past: list[np.ndarray] = []
        self.pad = np.zeros(0, dtype=np.int64)  # leading padding columns of each row
        self.length = 0  # columns in the cache

    @property
    def rows(self) -> int:
        return len(self.pad)

    def clear(self) -> None:
        self.past, self.pad, self.length = [], np.zeros(0, dtype=np.int64), 0

    def prefill(self, prefix_embeds: np.ndarray) -> np.ndarray:
        """Run the prefixes [B, P, E] alone and append their rows, left-padded to the batch's length.

        Returns the new rows' logits [B, V]. The batch is never shorter than a prefix: every row
        holds its prefix_length positions and more.
        """
        B, P, _ = prefix_embeds.shape
        feeds = {
            **self.shape.prefill_inputs(prefix_embeds),
            **{name: self.shape.empty_past(B) for name in self.shape.past_names},
        }
        logits, *present = self.session.run(None, feeds)
        if not self.rows:
            self.past, self.pad, self.length = present, np.zeros(B, dtype=np.int64), P
            return logits
        extra = self.length - P
        widths = ((0, 0), (0, 0), (extra, 0), (0, 0))
        pairs = zip(self.past, present, strict=True)
        self.past = [np.concatenate([old, np.pad(new, widths)], axis=0) for old, new in pairs]
        self.pad = np.concatenate([self.pad, np.full(B, extra, dtype=np.int64)])
        return logits

    def select(self, rows: np.ndarray) -> None:
        """Keep these rows in this order; then drop the columns that are padding for all of them."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            self.clear()
            return
        cut = int(self.pad[rows].min())
        if cut == 0 and len(rows) == self.rows and np.array_equal(rows, np.arange(self.rows)):
            return  # nothing left, nothing moved: no copy
        # Advanced indexing on the batch axis with a slice on the time axis: one contiguous copy.
        self.past = [p[rows, :, cut:] for p in self.past]
        self.pad = self.pad[rows] - cut
        self.length -= cut

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """Append one token per row; logits [N, V]."""
        feeds = self.shape.step_inputs(tokens, self.length)
        if self.pad.any():
            columns = np.arange(self.length + 1)[None, :]
            feeds["attention_mask"] = (columns >= self.pad[:, None]).astype(np.int64)
        logits, *self.past = self.session.run(
            None, {**feeds, **dict(zip(self.shape.past_names, self.past, strict=True))}
        )
        self.length += 1
        return logits
