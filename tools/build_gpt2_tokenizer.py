"""Build the packaged GPT-2 tokenizer (clipcap/assets/gpt2/) from OpenAI's vocabulary files.

    python tools/build_gpt2_tokenizer.py [--src DIR] [--out DIR]

Reads ``encoder.json`` + ``vocab.bpe`` (and ``LICENSE``) from ``--src``, writes ``tokenizer.json``
and a copy of the licence to ``--out``. Both outputs are committed, so installs need neither the
source files nor a model hub.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# Runnable as a plain script from a checkout: let `import clipcap` find the package beside tools/.
sys.path.insert(0, str(REPO_ROOT))

from clipcap.errors import ConfigError  # noqa: E402 - needs the sys.path entry above
from clipcap.tokenizer import TOKENIZER_FILE, build_gpt2_tokenizer  # noqa: E402

DEFAULT_SRC = REPO_ROOT.parent / "shared" / "gpt2-tokenizer"
DEFAULT_OUT = REPO_ROOT / "clipcap" / "assets" / "gpt2"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--src",
        type=Path,
        default=DEFAULT_SRC,
        help="directory with encoder.json, vocab.bpe and LICENSE (default: ../shared/gpt2-tokenizer)",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="output directory (default: clipcap/assets/gpt2/)"
    )
    args = parser.parse_args(argv)

    licence = args.src / "LICENSE"
    if not licence.is_file():
        # The MIT licence must travel with the vocabulary it covers.
        print(f"error: {licence}: no such file; the vocabulary may only be shipped with it", file=sys.stderr)
        return 1
    try:
        tokenizer = build_gpt2_tokenizer(args.src / "encoder.json", args.src / "vocab.bpe")
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    args.out.mkdir(parents=True, exist_ok=True)
    # pretty=False: the file is ~1.5 MB compact and larger indented, and nobody reads it by hand.
    tokenizer.save(str(args.out / TOKENIZER_FILE), pretty=False)
    shutil.copyfile(licence, args.out / "LICENSE")
    print(f"wrote {args.out / TOKENIZER_FILE} ({tokenizer.get_vocab_size()} tokens) and LICENSE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
