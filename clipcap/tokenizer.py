"""The GPT-2 tokenizer, offline: built from OpenAI's vocabulary files, shipped as package data.

This module is torch-free (only ``tokenizers`` and the standard library), because the ONNX
runtime decodes captions with it.

A ``tokenizers.Tokenizer`` already has everything a caller needs (``encode(text).ids``,
``decode(ids, skip_special_tokens=True)``, which also takes numpy arrays), so there are no
wrappers here: only ways to build and to find one.
"""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from clipcap.errors import ConfigError

EOS_TOKEN = "<|endoftext|>"
"""GPT-2's end-of-text token: its EOS, BOS and, by convention, PAD (id 50256)."""

TOKENIZER_FILE = "tokenizer.json"
# The Hugging Face "slow" format of a byte-level BPE: OpenAI's encoder.json and vocab.bpe, renamed.
VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"

_SOURCES_HINT = (
    f"pass a {TOKENIZER_FILE} file, a directory holding {TOKENIZER_FILE} or {VOCAB_FILE} + "
    f"{MERGES_FILE}, or nothing for the packaged GPT-2 tokenizer"
)


def build_gpt2_tokenizer(encoder_json: str | Path, vocab_bpe: str | Path) -> Tokenizer:
    """Build GPT-2's byte-level BPE tokenizer from OpenAI's ``encoder.json`` and ``vocab.bpe``.

    The result matches Hugging Face's ``gpt2`` ``tokenizer.json``: the same pipeline and options,
    and ``<|endoftext|>`` as a special token, so it is matched whole inside text and dropped by
    ``decode(..., skip_special_tokens=True)``. The same files under their Hugging Face names,
    ``vocab.json`` and ``merges.txt``, work too.

    Raises:
        ConfigError: a file is missing or cannot be read as a vocabulary or merges list.
    """
    encoder_json, vocab_bpe = Path(encoder_json), Path(vocab_bpe)
    for path in (encoder_json, vocab_bpe):
        if not path.is_file():
            raise ConfigError(
                f"{path}: no such file; GPT-2's tokenizer needs both {encoder_json.name} (the vocabulary) "
                f"and {vocab_bpe.name} (the merges)"
            )
    try:
        # read_file skips the "#version" header line of vocab.bpe.
        vocab, merges = models.BPE.read_file(str(encoder_json), str(vocab_bpe))
        # Explicit empty prefix/suffix and no unk token, as in Hugging Face's gpt2 tokenizer.json:
        # byte-level BPE never needs an unknown token, every byte has one.
        bpe = models.BPE(
            vocab,
            merges,
            dropout=None,
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
        )
    except Exception as error:  # tokenizers raises a bare Exception for unreadable files
        raise ConfigError(
            f"{encoder_json} + {vocab_bpe}: not a byte-level BPE vocabulary and merges list ({error}); "
            "use OpenAI's GPT-2 encoder.json and vocab.bpe (or Hugging Face's vocab.json and merges.txt)"
        ) from error

    tokenizer = Tokenizer(bpe)
    # No prefix space: GPT-2 was trained without one, so "A man" and " A man" encode differently.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps the offsets of leading spaces, as Hugging Face's gpt2 does; the ids
    # are the same either way.
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    if EOS_TOKEN in vocab:
        # normalized=True mirrors Hugging Face's gpt2 file; with no normalizer it changes nothing.
        tokenizer.add_special_tokens([AddedToken(EOS_TOKEN, special=True, normalized=True)])
    return tokenizer


def packaged_tokenizer_path() -> Path:
    """Where the packaged GPT-2 ``tokenizer.json`` is (built by ``tools/build_gpt2_tokenizer.py``)."""
    # The package is installed as plain files (setuptools package-data), so the resource is a path.
    return Path(str(importlib.resources.files("clipcap.assets") / "gpt2" / TOKENIZER_FILE))


def load_tokenizer(source: str | Path | None = None) -> Tokenizer:
    """Load a tokenizer, by default the packaged GPT-2 one.

    Args:
        source: ``None`` for the packaged GPT-2 tokenizer; a ``tokenizer.json`` file; a directory
            holding ``tokenizer.json``; or a directory holding ``vocab.json`` + ``merges.txt`` (a
            GPT-2-style byte-level BPE in Hugging Face's slow format).

    Raises:
        ConfigError: the path is missing, the directory holds neither format, or a file is corrupt.
            The message names the path and what to pass instead.
    """
    if source is None:
        path = packaged_tokenizer_path()
        if not path.is_file():
            raise ConfigError(
                f"{path}: the packaged GPT-2 tokenizer is missing from this install; rebuild it with "
                "`python tools/build_gpt2_tokenizer.py`, or pass a tokenizer explicitly"
            )
        return _tokenizer_from_json(path)

    path = Path(source)
    if path.is_file():
        return _tokenizer_from_json(path)
    if path.is_dir():
        if (path / TOKENIZER_FILE).is_file():
            return _tokenizer_from_json(path / TOKENIZER_FILE)
        if (path / VOCAB_FILE).is_file() and (path / MERGES_FILE).is_file():
            return build_gpt2_tokenizer(path / VOCAB_FILE, path / MERGES_FILE)
        raise ConfigError(
            f"{path}: directory holds neither {TOKENIZER_FILE} nor {VOCAB_FILE} + {MERGES_FILE}; "
            + _SOURCES_HINT
        )
    raise ConfigError(f"{path}: no such file or directory; {_SOURCES_HINT}")


def _tokenizer_from_json(path: Path) -> Tokenizer:
    """Read a ``tokenizer.json``, turning every failure into a ConfigError that names the file."""
    try:
        text = path.read_text(encoding="utf-8")
        return Tokenizer.from_str(text)
    except Exception as error:  # OSError, UnicodeDecodeError, or tokenizers' bare Exception
        problem = f"{type(error).__name__}: {error}"
        if not isinstance(error, (OSError, UnicodeDecodeError)):  # the text was read, so it is malformed
            # json's message says where the file is broken; the tokenizers one often doesn't.
            try:
                json.loads(text)
            except json.JSONDecodeError as json_error:
                problem = f"invalid JSON: {json_error}"
        raise ConfigError(
            f"{path}: not a readable {TOKENIZER_FILE} ({problem}); "
            f"replace it with one saved by tokenizers or transformers, or {_SOURCES_HINT}"
        ) from error
