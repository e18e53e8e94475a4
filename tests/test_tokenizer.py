"""Tests of clipcap.tokenizer: the packaged GPT-2 tokenizer is exactly GPT-2's, and loading fails clearly."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from clipcap.errors import ConfigError
from clipcap.tokenizer import build_gpt2_tokenizer, load_tokenizer, packaged_tokenizer_path

# OpenAI's encoder.json + vocab.bpe, outside the repository (see its README.md); absent on some machines.
SHARED = Path(__file__).parents[2] / "shared" / "gpt2-tokenizer"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} is absent")

EOS = "<|endoftext|>"
EOS_ID = 50256

# Each exercises a different branch of GPT-2's pre-tokenizer regex or of byte-level BPE.
TEXTS = [
    "A man riding a horse.",
    "a dog sitting on a couch next to a cat",
    "",
    " leading space",
    "trailing space ",
    "   both ends   ",
    "multiple   spaces  between words",
    "   ",
    "line one\nline two",
    "\n\n",
    " \n mixed \t whitespace \r\n ",
    "tab\tseparated",
    "Hello, world! What's up? (really...) -- ok; [yes]: {no} @home #tag",
    "It's 3:45pm on 12/25/2023; it costs $1,234.56 or 99%.",
    "1234567890 3.14159 007",
    "don't can't I'm we'll they've she'd it's",
    "DON'T SHOUT, IT'S RUDE",  # the regex's contractions are lower-case only
    "rock 'n' roll ''quoted''",
    "café naïve résumé Zürich",
    "e\u0301 combining accent",
    "日本語のテキスト",
    "Ελληνικά и русский",
    "emoji 🐶🚀 and a family 👩\u200d👩\u200d👧",
    "non\u00a0breaking and zero\u200bwidth",
    "A caption.<|endoftext|>",
    EOS,
    f"before {EOS} after",
    f"{EOS}{EOS}",
    "<|endoftext",  # not the special token: ordinary characters
]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return load_tokenizer()


@pytest.fixture(scope="module")
def transformers_gpt2(tmp_path_factory: pytest.TempPathFactory):
    """transformers' GPT2Tokenizer on the shared files.

    transformers 4.x's GPT2Tokenizer is the pure-Python one. In 5.x it is backed by `tokenizers`,
    and `GPT2Tokenizer(vocab_file=..., merges_file=...)` silently builds an empty vocabulary, so
    load it with from_pretrained from the Hugging Face file names; test_matches_openai_reference
    is the check against an implementation independent of `tokenizers` there.
    """
    transformers = pytest.importorskip("transformers")
    reference = transformers.GPT2Tokenizer(
        vocab_file=str(SHARED / "encoder.json"), merges_file=str(SHARED / "vocab.bpe")
    )
    if len(reference) != 50257:
        directory = tmp_path_factory.mktemp("hf-gpt2")
        (directory / "vocab.json").write_bytes((SHARED / "encoder.json").read_bytes())
        (directory / "merges.txt").write_bytes((SHARED / "vocab.bpe").read_bytes())
        reference = transformers.GPT2Tokenizer.from_pretrained(str(directory), local_files_only=True)
    assert len(reference) == 50257
    return reference


class OpenAIReferenceBPE:
    """GPT-2's tokenizer as OpenAI's encoder.py implements it, in pure Python, for comparison.

    encoder.py knows no special tokens, so ``<|endoftext|>`` is split out first, as Hugging Face does.
    """

    PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

    def __init__(self, encoder_json: Path, vocab_bpe: Path) -> None:
        import regex  # needed for \p{L}; a dependency of transformers, so usually present

        self.pattern = regex.compile(self.PATTERN)
        self.encoder: dict[str, int] = json.loads(encoder_json.read_text(encoding="utf-8"))
        lines = vocab_bpe.read_text(encoding="utf-8").splitlines()[1:]  # after the "#version" line
        merges = [tuple(line.split()) for line in lines if line]
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.byte_to_char = self._bytes_to_unicode()

    @staticmethod
    def _bytes_to_unicode() -> dict[int, str]:
        # Printable bytes stand for themselves; the rest get code points from 256 up, in order.
        printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
        printable += range(ord("®"), ord("ÿ") + 1)
        mapping = {byte: chr(byte) for byte in printable}
        for offset, byte in enumerate(b for b in range(256) if b not in mapping):
            mapping[byte] = chr(256 + offset)
        return mapping

    def _bpe(self, word: str) -> list[str]:
        parts = list(word)
        while len(parts) > 1:
            pairs = set(itertools.pairwise(parts))
            best = min(pairs, key=lambda pair: self.ranks.get(pair, float("inf")))
            if best not in self.ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts

    def _encode_ordinary(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in self.pattern.findall(text):
            word = "".join(self.byte_to_char[byte] for byte in piece.encode("utf-8"))
            ids.extend(self.encoder[token] for token in self._bpe(word))
        return ids

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for index, chunk in enumerate(text.split(EOS)):
            if index:
                ids.append(EOS_ID)
            ids.extend(self._encode_ordinary(chunk))
        return ids


@pytest.fixture(scope="module")
def openai_reference() -> OpenAIReferenceBPE:
    pytest.importorskip("regex")
    return OpenAIReferenceBPE(SHARED / "encoder.json", SHARED / "vocab.bpe")


# --- agreement with other implementations ---------------------------------------------------------


@needs_shared
@pytest.mark.parametrize("text", TEXTS)
def test_matches_transformers_gpt2_tokenizer(tokenizer: Tokenizer, transformers_gpt2, text: str) -> None:
    expected = transformers_gpt2(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.encode(text).ids == expected


@needs_shared
@pytest.mark.parametrize("text", TEXTS)
def test_matches_openai_reference(
    tokenizer: Tokenizer, openai_reference: OpenAIReferenceBPE, text: str
) -> None:
    assert tokenizer.encode(text).ids == openai_reference.encode(text)


@needs_shared
def test_packaged_file_is_a_fresh_build_of_the_shared_files() -> None:
    fresh = build_gpt2_tokenizer(SHARED / "encoder.json", SHARED / "vocab.bpe")
    # Re-serialise the packaged file with the installed `tokenizers`, so a file written by another
    # version (e.g. merges as "a b" strings rather than pairs) still compares by content.
    packaged = Tokenizer.from_file(str(packaged_tokenizer_path()))
    assert json.loads(packaged.to_str()) == json.loads(fresh.to_str())


# --- GPT-2 facts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", TEXTS)
def test_decode_inverts_encode(tokenizer: Tokenizer, text: str) -> None:
    assert tokenizer.decode(tokenizer.encode(text).ids, skip_special_tokens=False) == text


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        (".", [13]),  # the original ClipCap's stop token
        (EOS, [EOS_ID]),
        ("A man riding a horse.", [32, 582, 10311, 257, 8223, 13]),
        (" A man", [317, 582]),  # no prefix space is added: a leading space is a different token
    ],
)
def test_known_ids(tokenizer: Tokenizer, text: str, ids: list[int]) -> None:
    assert tokenizer.encode(text).ids == ids


def test_vocabulary(tokenizer: Tokenizer) -> None:
    assert tokenizer.get_vocab_size(with_added_tokens=True) == 50257
    assert tokenizer.token_to_id(EOS) == EOS_ID
    assert tokenizer.encode("A horse.").special_tokens_mask == [0, 0, 0]


def test_decode_skips_eos_only_when_asked(tokenizer: Tokenizer) -> None:
    ids = [32, 582, 10311, 257, 8223, 13, EOS_ID, EOS_ID]
    assert tokenizer.decode(ids) == "A man riding a horse."  # skip_special_tokens defaults to True
    assert tokenizer.decode(ids, skip_special_tokens=False) == f"A man riding a horse.{EOS}{EOS}"


# --- load_tokenizer sources ------------------------------------------------------------------------


def _as_str(path: Path) -> str:
    return str(path)


@pytest.mark.parametrize("kind", [Path, _as_str])
def test_load_from_file_and_from_directory(tokenizer: Tokenizer, tmp_path: Path, kind) -> None:
    (tmp_path / "tokenizer.json").write_bytes(packaged_tokenizer_path().read_bytes())
    text = TEXTS[12]
    for source in (tmp_path / "tokenizer.json", tmp_path):
        assert load_tokenizer(kind(source)).encode(text).ids == tokenizer.encode(text).ids


def test_load_from_vocab_and_merges_directory(tokenizer: Tokenizer, tmp_path: Path) -> None:
    # A small GPT-2-style vocabulary in Hugging Face's slow format, cut from the packaged one: the 256
    # byte tokens, the tokens made by the first 4000 merges, and <|endoftext|>, with their GPT-2 ids.
    model = json.loads(packaged_tokenizer_path().read_text(encoding="utf-8"))["model"]
    vocab: dict[str, int] = model["vocab"]
    merges = [pair.split(" ") if isinstance(pair, str) else pair for pair in model["merges"][:4000]]
    kept = {token for token, index in vocab.items() if index < 256} | {a + b for a, b in merges} | {EOS}
    small_vocab = {token: index for token, index in vocab.items() if token in kept}
    (tmp_path / "vocab.json").write_text(json.dumps(small_vocab), encoding="utf-8")
    (tmp_path / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )

    small = load_tokenizer(tmp_path)

    assert small.get_vocab_size(with_added_tokens=True) == len(kept)
    # BPE applies merges in rank order, so text made of the kept tokens encodes as in full GPT-2.
    text = f"A man and a dog in the park.{EOS}"
    expected = [32, 582, 290, 257, 3290, 287, 262, 3952, 13, EOS_ID]
    assert small.encode(text).ids == tokenizer.encode(text).ids == expected
    # A word outside the small vocabulary falls back to shorter pieces and still round-trips.
    text = "Anthropology"
    assert len(small.encode(text).ids) > len(tokenizer.encode(text).ids)
    assert small.decode(small.encode(text).ids) == text


def test_load_default_is_the_packaged_file(tokenizer: Tokenizer) -> None:
    assert packaged_tokenizer_path().is_file()
    assert packaged_tokenizer_path().parent.name == "gpt2"
    assert (packaged_tokenizer_path().parent / "LICENSE").is_file()  # MIT: it must ship with the vocabulary
    assert load_tokenizer(packaged_tokenizer_path()).to_str() == tokenizer.to_str()


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "no-such-tokenizer"


def _empty_directory(tmp_path: Path) -> Path:
    return tmp_path


def _vocab_without_merges(tmp_path: Path) -> Path:
    (tmp_path / "vocab.json").write_text('{"a": 0}', encoding="utf-8")
    return tmp_path


def _corrupt_json_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokenizer.json"
    path.write_text('{"version": "1.0", "model": ', encoding="utf-8")
    return path


def _corrupt_json_in_directory(tmp_path: Path) -> Path:
    _corrupt_json_file(tmp_path)
    return tmp_path / "tokenizer.json"  # the message must name the file, not only the directory


def _json_but_not_a_tokenizer(tmp_path: Path) -> Path:
    path = tmp_path / "tokenizer.json"
    path.write_text('{"hello": "world"}', encoding="utf-8")
    return path


def _corrupt_vocab_json(tmp_path: Path) -> Path:
    (tmp_path / "vocab.json").write_text("{not json", encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize(
    ("make_source", "source_is_named"),
    [
        (_missing, "source"),
        (_empty_directory, "source"),
        (_vocab_without_merges, "source"),
        (_corrupt_json_file, "source"),
        (_corrupt_json_in_directory, "parent"),
        (_json_but_not_a_tokenizer, "source"),
        (_corrupt_vocab_json, "source"),
    ],
)
def test_bad_sources_raise_config_error_naming_the_path(
    tmp_path: Path, make_source, source_is_named: str
) -> None:
    source = make_source(tmp_path)
    # _corrupt_json_in_directory returns the file to expect in the message; load its directory.
    loaded = source.parent if source_is_named == "parent" else source
    with pytest.raises(ConfigError) as raised:
        load_tokenizer(loaded)
    assert str(source) in str(raised.value)
    assert isinstance(raised.value, ValueError)


def test_build_with_a_missing_file_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"encoder\.json"):
        build_gpt2_tokenizer(tmp_path / "encoder.json", tmp_path / "vocab.bpe")
