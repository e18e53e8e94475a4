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

Java and the jars it runs are in :mod:`clipcap.eval.java`, the Python tokenizer in
:mod:`clipcap.eval.ptb`; this module scores.
"""

from __future__ import annotations

import dataclasses
import logging
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from clipcap.errors import JavaError, MetricSkipped, OptionsError, require

# Java (finding it, its tokenizer, METEOR, SPICE) and the Python tokenizer live in their own modules;
# their public names are re-exported here, where callers and tests import them.
from clipcap.eval.java import (
    _meteor,
    _spice,
    java_ptb_tokenize,
    java_status,
    spice_models_missing,  # noqa: F401 - re-exported
)
from clipcap.eval.ptb import PUNCTUATIONS, python_ptb_tokenize  # noqa: F401 - PUNCTUATIONS re-exported

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


def _java_choice(java: bool | None) -> tuple[bool, str]:
    if java is False:
        return False, "Java not used (java=False / --no-java)"
    usable, line = java_status()
    if java is True and not usable:
        raise OptionsError(f"Java was required but cannot be used: {line}")
    return usable, line
