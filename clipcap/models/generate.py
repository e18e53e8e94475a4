"""PyTorch reference generation: the captions export and runtime are checked against.

Shaped like whisper's decoding.py: one options dataclass (clipcap.options.DecodingOptions), small
token selectors (greedy, top-k, top-p), a beam-search decoder and a length-penalty ranker, all
driving ``ClipCapModel.step`` with its KV cache. Plus the source projects' own loops, which
re-run the whole sequence every step, as they behave (for benchmarks and parity checks).

Semantics every implementation must share (the ONNX runtime reimplements them on numpy):
- log-probs are ``log_softmax(logits / temperature)``; a sequence's score is their sum (float64);
- until ``min_new_tokens`` tokens exist the stop tokens get log-prob -inf;
- a stop token ends a sequence and is part of its tokens;
- beam search keeps ``beam_size`` live sequences per image: every live one proposes its
  ``beam_size + len(stop_token_ids)`` best tokens, candidates are taken best first (ties in
  beam, then rank order), a candidate ending in a stop token is finished (while the image has
  fewer than beam_size finished), others fill the live set; an image is done with beam_size
  finished sequences; at the length limit its live ones join the finished. The winner has the
  highest ``score / length ** length_penalty`` (first one on ties).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clipcap.models.gpt2 import KVCache
from clipcap.models.model import ClipCapModel
from clipcap.options import GPT2_EOS, GPT2_PERIOD, DecodingOptions


@dataclass(frozen=True)
class Generation:
    tokens: list[int]  # the new tokens, the stop token included when one ended the sequence
    score: float  # sum of log-probs; for beam search the ranking score


@torch.no_grad()
def generate(
    model: ClipCapModel,
    clip_embeds: torch.Tensor | None = None,
    options: DecodingOptions | None = None,
    *,
    prefix_embeds: torch.Tensor | None = None,
) -> list[Generation]:
    """Generate one caption per row of ``clip_embeds`` [B, D] (or of ``prefix_embeds`` [B, P, E])."""
    options = options or model.config.generation
    if (clip_embeds is None) == (prefix_embeds is None):
        raise ValueError("give exactly one of clip_embeds and prefix_embeds")
    prefix = model.prefix(clip_embeds) if prefix_embeds is None else prefix_embeds
    options.check_context(prefix.size(1), model.config.gpt2.n_positions)
    vocab = model.config.gpt2.vocab_size
    if options.strategy == "beam":
        if options.beam_size + len(set(options.stop_token_ids)) > vocab:
            raise ValueError(f"beam_size {options.beam_size} is too large for a vocabulary of {vocab}")
        return BeamSearch(model, options).run(prefix)
    select = {"greedy": select_greedy, "top_k": TopK(options), "top_p": TopP(options)}[options.strategy]
    return _decode_one_path(model, prefix, options, select)


def log_probs(logits: torch.Tensor, options: DecodingOptions, step: int) -> torch.Tensor:
    """[N, V] logits -> log-probs with the temperature and the min_new_tokens stop suppression."""
    out = F.log_softmax(logits.float() / options.temperature, dim=-1)
    if step < options.min_new_tokens and options.stop_token_ids:
        out[:, list(options.stop_token_ids)] = -torch.inf
    return out


def select_greedy(logprobs: torch.Tensor) -> torch.Tensor:
    return logprobs.argmax(dim=-1)  # the first maximum on ties


class TopK:
    """Sample among the k most likely tokens."""

    def __init__(self, options: DecodingOptions) -> None:
        self.k = options.top_k
        self.generator = _generator(options.seed)

    def __call__(self, logprobs: torch.Tensor) -> torch.Tensor:
        values, indices = logprobs.topk(min(self.k, logprobs.size(-1)), dim=-1)
        choice = torch.multinomial(values.softmax(-1), 1, generator=self.generator)
        return indices.gather(-1, choice).squeeze(-1)


class TopP:
    """Sample from the smallest set of most likely tokens whose probability reaches p."""

    def __init__(self, options: DecodingOptions) -> None:
        self.p = options.top_p
        self.generator = _generator(options.seed)

    def __call__(self, logprobs: torch.Tensor) -> torch.Tensor:
        probs, indices = logprobs.exp().sort(dim=-1, descending=True)
        before = probs.cumsum(-1) - probs  # probability of the tokens ranked above each one
        probs = probs.masked_fill(before >= self.p, 0.0)  # the top token always stays (before = 0)
        choice = torch.multinomial(probs, 1, generator=self.generator)
        return indices.gather(-1, choice).squeeze(-1)


def _generator(seed: int | None) -> torch.Generator:
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


def _decode_one_path(
    model: ClipCapModel, prefix: torch.Tensor, options: DecodingOptions, select
) -> list[Generation]:
    B = prefix.size(0)
    stops = torch.tensor(options.stop_token_ids, dtype=torch.long)
    logits, cache = model.step(prefix)  # prefill: [B, V]
    tokens: list[list[int]] = [[] for _ in range(B)]
    scores = torch.zeros(B, dtype=torch.float64)
    done = torch.zeros(B, dtype=torch.bool)
    for step in range(options.max_new_tokens):
        logprobs = log_probs(logits, options, step)
        next_tokens = select(logprobs)  # [B]
        chosen = logprobs.gather(-1, next_tokens[:, None]).squeeze(-1).double()
        scores += torch.where(done, 0.0, chosen)
        for b in (~done).nonzero().flatten().tolist():
            tokens[b].append(int(next_tokens[b]))
        done |= torch.isin(next_tokens, stops)
        if done.all() or step + 1 == options.max_new_tokens:
            break
        # Finished rows keep stepping here; the reference favours plainness over speed.
        logits, cache = model.step(model.gpt.embed_tokens(next_tokens[:, None]), None, cache)
    return [Generation(t, float(s)) for t, s in zip(tokens, scores, strict=True)]


class BeamSearch:
    """Beam search over B images x beam_size rows, reordering the KV cache as beams move."""

    def __init__(self, model: ClipCapModel, options: DecodingOptions) -> None:
        self.model = model
        self.options = options
        self.K = options.beam_size
        self.stops = set(options.stop_token_ids)
        self.n_candidates = self.K + len(self.stops)

    def run(self, prefix: torch.Tensor) -> list[Generation]:
        B, K = prefix.size(0), self.K
        logits, cache = self.model.step(prefix)  # prefill once per image, then copy per beam
        logits = logits.repeat_interleave(K, dim=0)  # [B*K, V]
        cache = _reorder(cache, torch.arange(B).repeat_interleave(K))
        # Only the first beam of each image is live at the start, so no sequence appears twice.
        sum_logprobs = [0.0 if r % K == 0 else -float("inf") for r in range(B * K)]
        sequences: list[list[int]] = [[] for _ in range(B * K)]
        finished: list[dict[tuple[int, ...], float]] = [{} for _ in range(B)]

        for step in range(self.options.max_new_tokens):
            logprobs = log_probs(logits, self.options, step)
            top_lp, top_tok = logprobs.topk(self.n_candidates, dim=-1)  # [B*K, n], best first
            top_lp, top_tok = top_lp.double().tolist(), top_tok.tolist()
            sources, next_tokens, next_sums, next_seqs = [], [], [], []
            for b in range(B):
                candidates = [
                    (sum_logprobs[r] + lp, r, t)
                    for r in range(b * K, (b + 1) * K)
                    for lp, t in zip(top_lp[r], top_tok[r], strict=True)
                ]
                candidates.sort(key=lambda c: -c[0])  # stable: ties stay in beam, rank order
                live = 0
                for score, r, t in candidates:
                    if score == -float("inf"):
                        continue
                    if t in self.stops:
                        if len(finished[b]) < K:
                            finished[b].setdefault(tuple([*sequences[r], t]), score)
                        continue
                    sources.append(r)
                    next_tokens.append(t)
                    next_sums.append(score)
                    next_seqs.append([*sequences[r], t])
                    live += 1
                    if live == K:
                        break
                while live < K:  # cannot happen with n_candidates >= K + stops; kept for safety
                    sources.append(b * K)
                    next_tokens.append(0)
                    next_sums.append(-float("inf"))
                    next_seqs.append([*sequences[b * K], 0])
                    live += 1
            sequences, sum_logprobs = next_seqs, next_sums
            if all(len(f) >= K for f in finished) or step + 1 == self.options.max_new_tokens:
                break
            cache = _reorder(cache, torch.tensor(sources))
            ids = torch.tensor(next_tokens)[:, None]
            logits, cache = self.model.step(self.model.gpt.embed_tokens(ids), None, cache)

        results = []
        for b in range(B):
            pool = dict(finished[b])
            if len(pool) < K:  # the length limit came first: live sequences join, best first
                rows = sorted(range(b * K, (b + 1) * K), key=lambda r: -sum_logprobs[r])
                for r in rows:
                    if len(pool) >= K:
                        break
                    if sum_logprobs[r] > -float("inf"):
                        pool.setdefault(tuple(sequences[r]), sum_logprobs[r])
            results.append(rank(pool, self.options.length_penalty))
        return results


def rank(pool: dict[tuple[int, ...], float], length_penalty: float) -> Generation:
    """The sequence with the best ``score / length ** length_penalty`` (the first one on ties)."""
    best = max(pool, key=lambda seq: pool[seq] / max(len(seq), 1) ** length_penalty)
    return Generation(list(best), pool[best] / max(len(best), 1) ** length_penalty)


def _reorder(cache: KVCache, index: torch.Tensor) -> KVCache:
    return tuple((k.index_select(0, index), v.index_select(0, index)) for k, v in cache)


# --- The source projects' own loops: no KV cache, the whole sequence re-run every step ---------


@torch.no_grad()
def generate_nocache(
    model: ClipCapModel,
    clip_embeds: torch.Tensor,
    *,
    max_new_tokens: int,
    stop_token_id: int,
    keep_stop: bool,
    top_k: int | None = None,
    seed: int | None = None,
) -> list[list[int]]:
    """One image at a time, as the originals run: prefix + tokens so far through GPT-2 each step."""
    generator = _generator(seed)
    results = []
    for row in clip_embeds:
        embeds = model.prefix(row[None])  # [1, P, E]
        tokens: list[int] = []
        for _ in range(max_new_tokens):
            logits, _ = model.gpt(embeds)  # the cache is thrown away: this is the point
            if top_k is None:
                token = int(logits.argmax(-1))
            else:  # the seed's top_k_sampling: renormalised top-k probabilities
                probs, idx = logits.softmax(-1).topk(top_k, dim=-1)
                token = int(idx[0, torch.multinomial(probs[0] / probs[0].sum(), 1, generator=generator)])
            if token == stop_token_id and not keep_stop:
                break
            tokens.append(token)
            if token == stop_token_id:
                break
            embeds = torch.cat((embeds, model.gpt.embed_tokens(torch.tensor([[token]]))), dim=1)
        results.append(tokens)
    return results


def original_generate2(
    model: ClipCapModel, clip_embeds: torch.Tensor, max_new_tokens: int = 67
) -> list[list[int]]:
    """rmokady/CLIP_prefix_caption ``generate2``: greedy, stop at "." (kept), 67 tokens.

    Its top-p (0.8) filter runs before an argmax, which the filter never changes: plain argmax.
    """
    return generate_nocache(
        model, clip_embeds, max_new_tokens=max_new_tokens, stop_token_id=GPT2_PERIOD, keep_stop=True
    )


def seed_greedy_decoding(
    model: ClipCapModel, clip_embeds: torch.Tensor, max_new_tokens: int = 12
) -> list[list[int]]:
    """The seed's ``greedy_decoding``: greedy, stop at EOS (not kept), 12 tokens."""
    return generate_nocache(
        model, clip_embeds, max_new_tokens=max_new_tokens, stop_token_id=GPT2_EOS, keep_stop=False
    )


def seed_top_k_sampling(
    model: ClipCapModel,
    clip_embeds: torch.Tensor,
    max_new_tokens: int = 12,
    k: int = 3,
    seed: int | None = None,
) -> list[list[int]]:
    """The seed's ``top_k_sampling`` (k = 3), stop at EOS (not kept)."""
    return generate_nocache(
        model,
        clip_embeds,
        max_new_tokens=max_new_tokens,
        stop_token_id=GPT2_EOS,
        keep_stop=False,
        top_k=k,
        seed=seed,
    )
