"""The COCO caption metrics, as the benchmark computes them: pycocoevalcap's scorers on captions
tokenised as coco-caption tokenises them.

- BLEU-1..4 (``Bleu(4)``, corpus-level, "closest" reference length), ROUGE-L (``Rouge``);
- CIDEr: pycocoevalcap's ``Cider`` is in fact **CIDEr-D** (clipped n-gram counts, a Gaussian length
  penalty with sigma 6, x10), the variant the COCO leaderboard and papers call "CIDEr". Its IDF
  comes from the references of the captions being scored, so the score depends on the whole set:
  a single image always scores 0, and a subset scores differently from the full test split;
- METEOR 1.5 (``Meteor``): needs Java; it starts ``java -jar -Xmx2G meteor-1.5.jar``;
- SPICE (``Spice``): needs Java and Stanford CoreNLP 3.6.0, which pycocoevalcap downloads (about
  400 MB) on first use. This module never starts that download: SPICE runs only when the jars are
  already in pycocoevalcap/spice/lib, and is skipped, with the reason, otherwise.

Tokenisation: with Java, the Stanford PTBTokenizer that ships with pycocoevalcap (lowercased, the
coco-caption punctuation list removed). Without Java, :func:`python_ptb_tokenize`, an imitation in
pure Python of that tokenizer on caption-like text (see its docstring for where it differs). The
Scores say which tokenizer was used: scores from the two are close, not identical.

A metric that cannot run (no Java, no SPICE models, METEOR's JVM failing to start) is None in the
Scores, with the reason in ``Scores.skipped``; it never stops the others. Values are
pycocoevalcap's raw ones (BLEU, ROUGE-L, METEOR, SPICE in 0..1; CIDEr-D about 0..10);
``Scores.table()`` shows them x100, as papers print them. Torch-free.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import re
import shutil
import string
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipcap.errors import JavaError, MetricSkipped, OptionsError, require

log = logging.getLogger(__name__)


# --- Scores ------------------------------------------------------------------------------------

METRICS = ("bleu", "meteor", "rouge_l", "cider", "spice")
"""What ``metrics=`` chooses among ("bleu" is BLEU-1..4)."""

SCORE_NAMES = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider", "spice")
LABELS = {
    "bleu1": "BLEU-1",
    "bleu2": "BLEU-2",
    "bleu3": "BLEU-3",
    "bleu4": "BLEU-4",
    "meteor": "METEOR",
    "rouge_l": "ROUGE-L",
    "cider": "CIDEr-D",
    "spice": "SPICE",
    "exact_match": "exact match",
}

TOKENIZER_JAVA = "stanford-ptb"  # pycocoevalcap's Stanford PTBTokenizer (CoreNLP 3.4.1), via Java
TOKENIZER_PYTHON = "python-ptb"  # python_ptb_tokenize, this module's imitation of it
TOKENIZER_LABELS = {
    TOKENIZER_JAVA: "Stanford PTBTokenizer (as coco-caption)",
    TOKENIZER_PYTHON: "pure-Python PTB imitation (no Java)",
}


@dataclass
class Scores:
    """Corpus-level scores of ``n`` captions; a metric that did not run is None, its reason in ``skipped``."""

    n: int
    tokenizer: str  # TOKENIZER_JAVA or TOKENIZER_PYTHON
    bleu1: float | None = None
    bleu2: float | None = None
    bleu3: float | None = None
    bleu4: float | None = None
    meteor: float | None = None
    rouge_l: float | None = None
    cider: float | None = None  # CIDEr-D, as pycocoevalcap computes it (see the module docstring)
    spice: float | None = None
    exact_match: float | None = None  # fraction of captions equal to one of their references
    skipped: dict[str, str] = field(default_factory=dict)  # metric -> why it did not run

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def table(self) -> str:
        """The scores x100, as papers print them, one metric a line; skipped ones with their reason."""
        rows = [
            (LABELS[name], getattr(self, name), self.skipped.get(name))
            for name in (*SCORE_NAMES, "exact_match")
        ]
        width = max(len(label) for label, _, _ in rows)
        lines = [f"{'metric':<{width}}    x100  (as papers print them; the JSON keeps the raw values)"]
        for label, value, why in rows:
            shown = f"{100 * value:8.2f}" if value is not None else f"{'-':>8}"
            lines.append(f"{label:<{width}}  {shown}" + (f"  skipped: {why}" if why else ""))
        lines.append(
            f"{self.n} captions; tokenised by {TOKENIZER_LABELS.get(self.tokenizer, self.tokenizer)}"
        )
        return "\n".join(lines)


def score_captions(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    java: bool | None = None,
    metrics: Iterable[str] | None = None,
) -> Scores:
    """Score ``predictions[i]`` against ``references[i]`` (one or more captions) with the COCO metrics.

    Args:
        java: None finds Java (``java`` on PATH that answers ``java -version``); False never uses
            it (no METEOR or SPICE, the Python tokenizer); True requires it.
        metrics: names from :data:`METRICS` to compute (default: all). The others are None, with
            "not requested" in ``skipped``. Exact match is always computed.

    Raises:
        OptionsError: no predictions, a different number of reference lists, an image without
            references, a caption that is not a string, an unknown metric, or java=True without Java.
    """
    predictions, references = _checked_captions(predictions, references)
    wanted = _wanted_metrics(metrics)
    use_java, java_why = _java_choice(java)
    skipped: dict[str, str] = {}

    sentences = [*predictions, *(r for refs in references for r in refs)]
    tokenizer = TOKENIZER_PYTHON
    tokenized = None
    if use_java:
        try:
            tokenized = java_ptb_tokenize(sentences)
            tokenizer = TOKENIZER_JAVA
        except JavaError as e:
            # Java that cannot run a small jar cannot run METEOR or SPICE either.
            use_java, java_why = False, f"Java failed on the PTB tokenizer ({e})"
            log.warning("%s; tokenising in Python instead", java_why)
    if tokenized is None:
        tokenized = [python_ptb_tokenize(s) for s in sentences]
    res = {i: [tokenized[i]] for i in range(len(predictions))}
    gts, at = {}, len(predictions)
    for i, refs in enumerate(references):
        gts[i] = tokenized[at : at + len(refs)]
        at += len(refs)
    if not any(r.split() for refs in gts.values() for r in refs):
        raise OptionsError(
            "no reference caption has a word left after tokenisation: nothing to score against"
        )

    values: dict[str, float] = {}
    Bleu, Rouge, Cider = _scorers()
    if "bleu" in wanted:
        bleus, _ = Bleu(4).compute_score(gts, res, verbose=0)
        values.update({f"bleu{k + 1}": float(b) for k, b in enumerate(bleus)})
    if "rouge_l" in wanted:
        values["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    if "cider" in wanted:
        values["cider"] = float(Cider().compute_score(gts, res)[0])
    for name, run in (("meteor", _meteor), ("spice", _spice)):
        if name not in wanted:
            continue
        if not use_java:
            skipped[name] = java_why
            continue
        try:
            values[name] = run(gts, res)
        except MetricSkipped as e:
            skipped[name] = str(e)
    for name in SCORE_NAMES:
        if name not in values and name not in skipped:
            skipped[name] = "not requested"
    return Scores(
        n=len(predictions),
        tokenizer=tokenizer,
        exact_match=exact_match(predictions, references),
        skipped=skipped,
        **values,
    )


def exact_match(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """The fraction of predictions equal to one of their references, both :func:`normalize_caption`-ed."""
    if not predictions:
        raise OptionsError("no predictions to compare")
    hits = sum(
        normalize_caption(p) in {normalize_caption(r) for r in refs}
        for p, refs in zip(predictions, references, strict=True)
    )
    return hits / len(predictions)


_EDGES = string.punctuation + string.whitespace + "“”‘’…–—"


def normalize_caption(text: str) -> str:
    """Lowercase, whitespace collapsed, punctuation stripped from both ends ("A dog." -> "a dog")."""
    return " ".join(text.lower().split()).strip(_EDGES)


def _checked_captions(
    predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> tuple[list[str], list[list[str]]]:
    if isinstance(predictions, str):
        raise OptionsError("predictions must be a list of captions, not one string")
    predictions = list(predictions)
    if not predictions:
        raise OptionsError("no predictions to score: give at least one caption")
    references = list(references)
    if len(predictions) != len(references):
        raise OptionsError(
            f"{len(predictions)} predictions but {len(references)} reference lists: "
            "give one list of reference captions per prediction"
        )
    for i, p in enumerate(predictions):
        if not isinstance(p, str):
            raise OptionsError(f"prediction {i} is not a string: {p!r}")
    checked = []
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not all(isinstance(r, str) for r in refs):
            raise OptionsError(
                f"references[{i}] must be a list of caption strings, got {refs!r} "
                "(one list per prediction, even for a single reference)"
            )
        if not refs:
            raise OptionsError(f"prediction {i} has no reference captions; every image needs at least one")
        checked.append(list(refs))
    return predictions, checked


def _wanted_metrics(metrics: Iterable[str] | None) -> set[str]:
    if metrics is None:
        return set(METRICS)
    wanted = {metrics} if isinstance(metrics, str) else set(metrics)
    unknown = sorted(wanted - set(METRICS))
    if unknown:
        raise OptionsError(f"unknown metric(s) {', '.join(unknown)}: choose among {', '.join(METRICS)}")
    return wanted


def _scorers() -> tuple[type, type, type]:
    """pycocoevalcap's Bleu, Rouge and Cider (an optional dependency: the train extra)."""
    bleu, cider, rouge = (
        require(f"pycocoevalcap.{name}.{name}", "train") for name in ("bleu", "cider", "rouge")
    )
    return bleu.Bleu, rouge.Rouge, cider.Cider


# --- Java ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def java_status() -> tuple[bool, str]:
    """(usable, a line about it): ``java`` on PATH that answers ``java -version``. Cached."""
    exe = shutil.which("java")
    if exe is None:
        return False, "Java not found (METEOR and SPICE need a Java runtime on PATH)"
    try:
        proc = subprocess.run([exe, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"`java -version` failed ({e})"
    said = (proc.stderr or proc.stdout).strip().splitlines()
    if proc.returncode != 0:
        return False, f"`java -version` exited with status {proc.returncode}: {said[-1] if said else ''}"
    return True, said[0] if said else exe


def _java_choice(java: bool | None) -> tuple[bool, str]:
    if java is False:
        return False, "Java not used (java=False / --no-java)"
    usable, line = java_status()
    if java is True and not usable:
        raise OptionsError(f"Java was required but cannot be used: {line}")
    return usable, line


def _pycocoevalcap_dir() -> Path:
    ptb = require("pycocoevalcap.tokenizer.ptbtokenizer", "train")
    return Path(ptb.__file__).parent.parent


def _stderr_tail(text: str | bytes | None, lines: int = 2) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    kept = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return "; ".join(kept[-lines:]) or "no message"


# --- Tokenisation ---------------------------------------------------------------------------------

# coco-caption's list (pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS; a test checks they agree).
# The bracket names are upper case while the tokens are lowercased, so coco-caption keeps "-lrb-"
# and friends as words; so does the imitation below.
PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)
# Characters that end a line for Java's -preserveLines: inside a caption they would shift every
# later caption's tokens onto the wrong image, so they become spaces (coco-caption replaces "\n").
_LINE_BREAKS = re.compile("[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def java_ptb_tokenize(sentences: Sequence[str]) -> list[str]:
    """Tokenise as coco-caption does: Stanford PTBTokenizer, lowercased, its punctuation list removed.

    The same jar, command line and punctuation list as pycocoevalcap's ``PTBTokenizer``, which this
    does not call because it writes its temporary file into the installed package (failing where
    site-packages is read-only), lets Java's progress line through to stderr, has no timeout,
    misaligns captions when one contains a line break, and leaves out the final newline (so the
    last caption of a batch can tokenise differently).

    Raises:
        JavaError: Java failed or took too long.
    """
    jar = _pycocoevalcap_dir() / "tokenizer" / "stanford-corenlp-3.4.1.jar"
    lines = [_LINE_BREAKS.sub(" ", s) for s in sentences]
    # Blank lines are left out: the output then has one line per input line, whatever Java does
    # with blank lines at the end of the file.
    sent = [i for i, s in enumerate(lines) if s.strip()]
    out = [""] * len(lines)
    if not sent:
        return out
    with tempfile.TemporaryDirectory(prefix="clipcap-ptb-") as tmp:
        path = Path(tmp) / "captions.txt"
        # The final newline matters: at the very end of a file the lexer reads "i'd've" as "i 'd ` ve".
        path.write_text("".join(lines[i] + "\n" for i in sent), encoding="utf-8")
        command = ["java", "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines"]
        command += ["-lowerCase", str(path)]
        try:
            proc = subprocess.run(command, capture_output=True, timeout=120 + len(sent) / 100)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise JavaError(f"PTBTokenizer: {e}") from None
    if proc.returncode != 0:
        raise JavaError(f"PTBTokenizer exited with status {proc.returncode}: {_stderr_tail(proc.stderr)}")
    tokenized = proc.stdout.decode("utf-8").split("\n")
    if len(tokenized) < len(sent):
        raise JavaError(f"PTBTokenizer returned {len(tokenized)} lines for {len(sent)} captions")
    for i, line in zip(sent, tokenized, strict=False):
        out[i] = " ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS)
    return out


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


# --- METEOR and SPICE -----------------------------------------------------------------------------


def _meteor(gts: dict[int, list[str]], res: dict[int, list[str]]) -> float:
    """pycocoevalcap's METEOR, its JVM always closed; any failure becomes MetricSkipped."""
    from pycocoevalcap.meteor.meteor import Meteor

    try:
        meteor = Meteor()  # starts `java -jar -Xmx2G meteor-1.5.jar` at once
    except OSError as e:
        raise MetricSkipped(f"METEOR could not start Java ({e})") from None
    process = meteor.meteor_p
    # Meteor reads its answers with blocking readline(): a JVM that dies (e.g. too little memory
    # for -Xmx2G) gives EOF, but one that stalls would block forever. The timer kills it, which
    # gives EOF too.
    limit = 120 + 0.05 * len(res)
    timed_out = threading.Event()

    def stop() -> None:
        timed_out.set()
        process.kill()

    timer = threading.Timer(limit, stop)
    timer.daemon = True
    timer.start()
    try:
        score, _ = meteor.compute_score(gts, res)
        return float(score)
    except Exception as e:  # EOF read as a float, a broken pipe: the JVM is gone
        timer.cancel()
        process.kill()
        process.wait()
        if timed_out.is_set():
            why = f"no answer within {limit:.0f} s"
        else:
            why = f"Java exited with status {process.returncode}: {_stderr_tail(process.stderr.read())}"
        raise MetricSkipped(f"METEOR failed ({why}; {type(e).__name__})") from None
    finally:
        timer.cancel()
        _close(process)
        # compute_score holds this lock when it fails, and Meteor.__del__ takes it again: a fresh
        # one keeps garbage collection from blocking forever.
        meteor.lock = threading.Lock()


def _close(process: subprocess.Popen) -> None:
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    if process.poll() is None:
        process.kill()
    process.wait()


def spice_models_missing() -> str | None:
    """Why SPICE cannot run here without a download (its CoreNLP jars are absent), or None."""
    from pycocoevalcap.spice import get_stanford_models as models

    lib = Path(models.SPICEDIR) / models.SPICELIB
    missing = [
        name for name in (f"{models.JAR}.jar", f"{models.JAR}-models.jar") if not (lib / name).is_file()
    ]
    if not missing:
        return None
    return (
        f"SPICE needs Stanford CoreNLP ({' and '.join(missing)} in {lib}), which pycocoevalcap downloads "
        "(~400 MB) on first use; never downloaded here. To enable SPICE, run once online: "
        "python -m pycocoevalcap.spice.get_stanford_models"
    )


def _spice(gts: dict[int, list[str]], res: dict[int, list[str]]) -> float:
    missing = spice_models_missing()
    if missing:
        raise MetricSkipped(missing)
    from pycocoevalcap.spice.spice import Spice

    try:
        # Spice() only checks the CoreNLP jar is there (it is): no download starts.
        score, _ = Spice().compute_score(gts, res)
    except subprocess.CalledProcessError as e:
        raise MetricSkipped(
            f"SPICE failed (Java exited with status {e.returncode}; it asks for -Xmx8G)"
        ) from None
    except Exception as e:
        raise MetricSkipped(f"SPICE failed ({type(e).__name__}: {e})") from None
    return float(score)
