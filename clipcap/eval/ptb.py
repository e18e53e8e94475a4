"""A Python imitation of coco-caption's Stanford PTBTokenizer, for machines without Java.

The punctuation list and the line-break rule are shared with the Java tokenizer (:mod:`clipcap.eval.java`).
Pure Python, torch-free.
"""

from __future__ import annotations

import re

# coco-caption's list (pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS; a test checks they agree).
# The bracket names are upper case while the tokens are lowercased, so coco-caption keeps "-lrb-"
# and friends as words; so does the imitation below.
PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)
# Characters that end a line for Java's -preserveLines: inside a caption they would shift every
# later caption's tokens onto the wrong image, so they become spaces (coco-caption replaces "\n").
_LINE_BREAKS = re.compile("[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


# Stanford's PTBLexer keeps the period of these (and of single letters and acronyms: "j.", "u.s.").
_ABBREVIATIONS = frozenset(
    (
        *("mr", "mrs", "ms", "dr", "prof", "rev", "st", "jr", "sr", "hon"),
        *("gen", "col", "lt", "sgt", "capt", "gov", "sen", "rep"),
        *("mt", "ft", "ave", "blvd", "rd", "inc", "co", "corp", "ltd", "bros", "dept", "est", "sq"),
        *("jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec"),
        *("mon", "tue", "tues", "wed", "thu", "thurs", "fri", "etc", "vs", "al", "cf"),
    )
)
_ACRONYM = re.compile(r"[a-z](?:\.[a-z])*")  # before the final period: "u.s", "a.k.a", "j"
_CONTRACTION = re.compile(r"(.*[^'])(n't|'s|'m|'re|'ve|'ll|'d)")
# '90s, rock 'n' roll, 'em, and clitics standing alone ("a man 's hat")
_KEEP_LEADING_QUOTE = re.compile(r"'(?:\d+s?|n'|em|s|m|re|ve|ll|d)")
_SPLIT_WORDS = {
    "gonna": ["gon", "na"],
    "gotta": ["got", "ta"],
    "wanna": ["wan", "na"],
    "lemme": ["lem", "me"],
    "gimme": ["gim", "me"],
    "cannot": ["can", "not"],
    "'tis": ["'t", "is"],
    "'twas": ["'t", "was"],
    "more'n": ["more", "'n"],
}
_UNICODE = str.maketrans(
    {
        "’": "'",
        "‘": "'",
        "“": '"',
        "”": '"',
        "„": '"',
        "—": " -- ",
        "–": " -- ",
        "…": "...",
        "€": "$",
        "£": "#",
    }
)
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_BRACKET_TOKENS = frozenset(_BRACKETS.values())
_TEXT_RULES = [
    (re.compile("[\ufffd\x00-\x08\x0e-\x1f\x7f]"), " "),  # Java drops these (undecodable bytes, controls)
    (re.compile(r"[\"`]"), " "),  # double quotes and backquotes: PTB's `` '' ` tokens, all removed
    (re.compile(r"-{2,}"), " -- "),
    (re.compile(r"\.{2,}"), " ... "),
    (re.compile(r"[;+=^~*|%#]"), r" \g<0> "),  # always a token of their own
    (re.compile(r"(?<!\d),|,(?!\d)"), " , "),  # except in numbers: 1,000
    (re.compile(r"(?<!\d):(?!//)|:(?!\d|//)"), " : "),  # except in times and URLs: 3:30, http://
    (re.compile(r"\$(?=\d)"), "$ "),  # $5 -> $ 5, 5$ -> 5 $ (but us$ stays)
    (re.compile(r"(?<=\d)\$"), " $"),
]


def python_ptb_tokenize(text: str) -> str:
    """Tokenise like coco-caption's Stanford PTBTokenizer + punctuation removal, in pure Python.

    Lowercases; splits off punctuation, quotes and clitics ("dog's" -> "dog 's", "don't" -> "do n't",
    "cannot" -> "can not"); keeps numbers ("1,000", "5.5", "3:30"), hyphenated words, acronyms and
    common abbreviations ("u.s.", "mr.") whole; turns brackets into PTB's "-lrb-" etc. (which
    coco-caption keeps); then drops coco-caption's punctuation tokens. It agrees with the Java
    tokenizer on ordinary caption text; known differences, all rare in captions: emoticons, SGML
    tags, "no." before a number, fractions ("2 1/2"), "y'all", "5'10", "rock'n'roll", "3:30pm".
    """
    text = _LINE_BREAKS.sub(" ", text).lower().translate(_UNICODE)
    for bracket, name in _BRACKETS.items():
        text = text.replace(bracket, f" {name} ")
    for pattern, replacement in _TEXT_RULES:
        text = pattern.sub(replacement, text)
    tokens = [t for chunk in text.split() for t in _chunk_tokens(chunk)]
    return " ".join(t for t in tokens if t not in PUNCTUATIONS)


def _chunk_tokens(chunk: str) -> list[str]:
    """One whitespace-separated piece -> PTB tokens: peel punctuation off both ends, split clitics."""
    if chunk in _BRACKET_TOKENS:
        return [chunk]
    lead: list[str] = []
    trail: list[str] = []
    while len(chunk) > 1:  # leading punctuation
        run = re.match(r"[!?]+", chunk)
        if run and run.end() < len(chunk):
            piece = run.group()
        elif chunk[0] in "-." and not chunk[1].isdigit():
            piece = chunk[0]
        elif chunk[0] == "'" and not _KEEP_LEADING_QUOTE.fullmatch(chunk) and chunk not in _SPLIT_WORDS:
            piece = "'"
        else:
            break
        lead.append(piece)
        chunk = chunk[len(piece) :]
    while len(chunk) > 1:  # trailing punctuation
        run = re.search(r"[!?]+$", chunk)
        if run and run.start() > 0:
            piece = run.group()
        elif chunk[-1] in "-/" or (chunk[-1] == "'" and chunk != "'n'"):
            piece = chunk[-1]
        elif chunk[-1] == "." and not _keeps_period(chunk[:-1]):
            piece = "."
        else:
            break
        trail.append(piece)
        chunk = chunk[: -len(piece)]
    if chunk in _SPLIT_WORDS:
        core = list(_SPLIT_WORDS[chunk])
    else:
        core = []
        while m := _CONTRACTION.fullmatch(chunk):  # "i'd've" -> i 'd 've
            chunk, clitic = m.groups()
            core.insert(0, clitic)
        core.insert(0, chunk)
    return lead + core + trail[::-1]


def _keeps_period(word: str) -> bool:
    return bool(_ACRONYM.fullmatch(word)) or word in _ABBREVIATIONS
