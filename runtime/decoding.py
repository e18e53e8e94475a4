"""Decoding strategies on numpy logits, driving a KV-cached decoder through a small interface.

The same semantics as the PyTorch reference (``clipcap/models/generate.py``, whose docstring states them),
written once more on numpy so the runtime needs no torch: greedy, top-k and top-p sampling, beam
search with a length-penalty ranker. Shaped like whisper's decoding.py: a selector per strategy, a
beam-search decoder, one function assembling them. The model side is the ``Inference`` protocol:
it owns the KV cache and can drop or reorder its rows, so a batch stops paying for the captions
that are finished and beams move with their cache.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from clipcap.options import DecodingOptions


class Inference(Protocol):
    """A decoder with a KV cache whose rows line up with the rows of the logits it returns."""

    def prefill(self, prefix_embeds: np.ndarray) -> np.ndarray:
        """Start a new cache from prefix embeddings [B, P, E]; logits [B, V] of the last position."""

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """Append one token per cache row ([N] ids); logits [N, V]."""

    def select(self, rows: np.ndarray) -> None:
        """Keep these cache rows, in this order (drop finished rows, follow beams)."""


@dataclass(frozen=True)
class Generation:
    tokens: list[int]  # the new tokens, the stop token included when one ended the sequence
    score: float  # sum of log-probs; for beam search the ranking score


def decode(inference: Inference, prefix_embeds: np.ndarray, options: DecodingOptions) -> list[Generation]:
    """One caption per row of ``prefix_embeds`` [B, P, E]."""
    if options.strategy == "beam":
        return BeamSearch(options).run(inference, prefix_embeds)
    return _decode_one_path(inference, prefix_embeds, options)


def log_probs(logits: np.ndarray, options: DecodingOptions, step: int) -> np.ndarray:
    """[N, V] logits -> float32 log-probs, with the temperature and the min_new_tokens suppression."""
    x = logits.astype(np.float32) / np.float32(options.temperature)
    x = x - x.max(axis=-1, keepdims=True)
    out = x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
    if step < options.min_new_tokens and options.stop_token_ids:
        out[:, list(options.stop_token_ids)] = -np.inf
    return out


def top_n(logprobs: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The n largest values per row, best first (ties: lower token id first), and their ids."""
    n = min(n, logprobs.shape[-1])
    idx = np.argpartition(-logprobs, n - 1, axis=-1)[:, :n]
    vals = np.take_along_axis(logprobs, idx, axis=-1)
    order = np.lexsort((idx, -vals), axis=-1)
    return np.take_along_axis(vals, order, axis=-1), np.take_along_axis(idx, order, axis=-1)


Selector = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (log-probs [N, V], image index [N]) -> ids


def _selector(options: DecodingOptions, batch: int, first: int = 0) -> Selector:
    if options.strategy == "greedy":
        return lambda logprobs, _: logprobs.argmax(axis=-1)  # the first maximum on ties
    # One generator per image, so a caption does not depend on what else is in the batch.
    seeds = range(first, first + batch)
    rngs = [np.random.default_rng(None if options.seed is None else [options.seed, b]) for b in seeds]

    def sample(logprobs: np.ndarray, images: np.ndarray) -> np.ndarray:
        if options.strategy == "top_k":
            values, ids = top_n(logprobs, options.top_k)
            probs = np.exp(values - values.max(axis=-1, keepdims=True))
        else:
            ids = np.argsort(-logprobs, axis=-1, kind="stable")
            probs = np.exp(np.take_along_axis(logprobs, ids, axis=-1))
            before = np.cumsum(probs, axis=-1) - probs  # probability ranked above each token
            probs = np.where(before >= options.top_p, 0.0, probs)  # the top token always stays
        probs = probs / probs.sum(axis=-1, keepdims=True)
        picks = [rngs[b].choice(len(p), p=p) for b, p in zip(images, probs, strict=True)]
        return ids[np.arange(len(ids)), picks]

    return sample


def selector(options: DecodingOptions, batch: int, first: int = 0) -> Selector:
    """The token picker ``decode`` uses for greedy and sampling, for ``batch`` images with one
    generator per image (seeded ``[seed, first + b]``; ``decode`` itself starts at 0). Public so
    that ``clipcap.serve``, which decodes a request's rows inside a shared batch, picks exactly the
    tokens ``decode`` would, and a dataset job, whose images are one-image requests, can give
    image i of a ``Captioner.caption(..., batch_size=B)`` call its generator ``[seed, i % B]``."""
    return _selector(options, batch, first)


def _decode_one_path(inference: Inference, prefix: np.ndarray, options: DecodingOptions) -> list[Generation]:
    B = prefix.shape[0]
    select = _selector(options, B)
    stops = np.asarray(options.stop_token_ids, dtype=np.int64)
    tokens: list[list[int]] = [[] for _ in range(B)]
    scores = np.zeros(B, dtype=np.float64)
    alive = np.arange(B)  # the image of each cache row
    logits = inference.prefill(prefix)
    for step in range(options.max_new_tokens):
        logprobs = log_probs(logits, options, step)
        next_tokens = select(logprobs, alive)
        scores[alive] += logprobs[np.arange(len(alive)), next_tokens].astype(np.float64)
        for b, t in zip(alive, next_tokens, strict=True):
            tokens[b].append(int(t))
        finished = np.isin(next_tokens, stops)
        if finished.all() or step + 1 == options.max_new_tokens:
            break
        if finished.any():  # finished captions leave the batch and stop costing compute
            keep = np.flatnonzero(~finished)
            inference.select(keep)
            alive, next_tokens = alive[keep], next_tokens[keep]
        logits = inference.step(next_tokens)
    return [Generation(t, float(s)) for t, s in zip(tokens, scores, strict=True)]


class BeamSearch:
    """Beam search over the images still running x beam_size cache rows."""

    def __init__(self, options: DecodingOptions) -> None:
        self.options = options
        self.K = options.beam_size
        self.stops = set(options.stop_token_ids)
        self.n_candidates = self.K + len(self.stops)

    def run(self, inference: Inference, prefix: np.ndarray) -> list[Generation]:
        B, K = prefix.shape[0], self.K
        logits = inference.prefill(prefix)
        rows = np.repeat(np.arange(B), K)  # prefill once per image, then one cache row per beam
        inference.select(rows)
        logits = logits[rows]
        running = list(range(B))  # images still searching; image running[g] owns rows g*K..g*K+K-1
        # Only the first beam of each image is live at the start, so no sequence appears twice.
        sums = [0.0 if r % K == 0 else -np.inf for r in range(B * K)]
        sequences: list[list[int]] = [[] for _ in range(B * K)]
        finished: list[dict[tuple[int, ...], float]] = [{} for _ in range(B)]
        live: dict[int, list[tuple[list[int], float]]] = {}

        for step in range(self.options.max_new_tokens):
            top_lp, top_tok = top_n(log_probs(logits, self.options, step), self.n_candidates)
            top_lp = top_lp.astype(np.float64)
            sources, next_tokens, next_sums, next_seqs = [], [], [], []
            for g, b in enumerate(running):
                candidates = [
                    (sums[r] + float(lp), r, int(t))
                    for r in range(g * K, (g + 1) * K)
                    for lp, t in zip(top_lp[r], top_tok[r], strict=True)
                ]
                candidates.sort(key=lambda c: -c[0])  # stable: ties stay in beam, rank order
                kept = 0
                for score, r, t in candidates:
                    if score == -np.inf:
                        continue
                    if t in self.stops:
                        if len(finished[b]) < K:
                            finished[b].setdefault((*sequences[r], t), score)
                        continue
                    sources.append(r)
                    next_tokens.append(t)
                    next_sums.append(score)
                    next_seqs.append([*sequences[r], t])
                    kept += 1
                    if kept == K:
                        break
                while kept < K:  # cannot happen with n_candidates >= K + stops; kept for safety
                    sources.append(g * K)
                    next_tokens.append(0)
                    next_sums.append(-np.inf)
                    next_seqs.append([*sequences[g * K], 0])
                    kept += 1
            sequences, sums = next_seqs, next_sums
            last = step + 1 == self.options.max_new_tokens
            # Images with beam_size finished sequences are done: their rows leave the cache.
            still = [g for g, b in enumerate(running) if len(finished[b]) < K and not last]
            for g, b in enumerate(running):
                if g not in still:
                    live[b] = list(
                        zip(sequences[g * K : (g + 1) * K], sums[g * K : (g + 1) * K], strict=True)
                    )
            if not still:
                break
            keep = [g * K + j for g in still for j in range(K)]
            running = [running[g] for g in still]
            sequences = [sequences[i] for i in keep]
            sums = [sums[i] for i in keep]
            inference.select(np.asarray([sources[i] for i in keep]))
            logits = inference.step(np.asarray([next_tokens[i] for i in keep], dtype=np.int64))

        results = []
        for b in range(B):
            pool = dict(finished[b])
            if len(pool) < K:  # the length limit came first: live sequences join, best first
                for seq, score in sorted(live.get(b, []), key=lambda c: -c[1]):
                    if len(pool) >= K:
                        break
                    if score > -np.inf:
                        pool.setdefault(tuple(seq), score)
            results.append(rank(pool, self.options.length_penalty))
        return results


def rank(pool: dict[tuple[int, ...], float], length_penalty: float) -> Generation:
    """The sequence with the best ``score / length ** length_penalty`` (the first one on ties)."""
    best = max(pool, key=lambda seq: pool[seq] / max(len(seq), 1) ** length_penalty)
    return Generation(list(best), pool[best] / max(len(best), 1) ** length_penalty)
