"""The COCO caption metrics: pycocoevalcap's scorers, our tokenisation and the Java handling."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("pycocoevalcap")

from clipcap.errors import ConfigError
from clipcap.eval.metrics import (
    PUNCTUATIONS,
    TOKENIZER_JAVA,
    TOKENIZER_PYTHON,
    exact_match,
    java_ptb_tokenize,
    java_status,
    python_ptb_tokenize,
    score_captions,
    spice_models_missing,
)

needs_java = pytest.mark.skipif(not java_status()[0], reason="needs Java: " + java_status()[1])

# Distinct sentences of 4+ words: BLEU-4 of a copy is 1, and no n-gram is in every image (CIDEr's
# IDF would zero it).
CAPTIONS = [
    "A man riding a wave on top of a surfboard.",
    "Two dogs are playing with a red ball in the grass.",
    "A plate of food with rice, beans and meat.",
    "An elephant standing next to a tall tree.",
]
OTHER_REFERENCES = [
    "a surfer rides a big wave",
    "dogs play in a park",
    "a dinner plate full of food",
    "a large elephant by a tree",
]
# Sentences with the punctuation, clitics, quotes and brackets captions have.
PUNCTUATED = [
    *CAPTIONS,
    "A dog's toy, and the cat's bed!",
    'There is a "Stop" sign on the corner of a street.',
    "Two people don't like it; they can't see (the train).",
    "A black-and-white photo of 1,000 trees... really?",
    "It's 3:30 p.m. in the U.S. and Mr. Smith's car is 5.5 m long.",
    "the kids' toys: a ball - and a kite -- near St. Louis",
    "A man and/or woman with $5 & 50% off #1",
    "the dog’s bone and “quoted” words…ok",
    "gonna wanna cannot 'tis I'd've",
    "",
    "   ",
]


def _references():
    return [[c, o] for c, o in zip(CAPTIONS, OTHER_REFERENCES, strict=True)]


# --- Scores on hand-made cases -------------------------------------------------------------------


def test_identical_captions_score_top():
    scores = score_captions(CAPTIONS, _references(), java=False)
    assert scores.bleu1 == pytest.approx(1, abs=1e-6)
    assert scores.bleu4 == pytest.approx(1, abs=1e-6)
    assert scores.rouge_l == pytest.approx(1)
    assert scores.cider > 3  # CIDEr-D: x10, one of two references matched
    assert scores.exact_match == 1
    assert scores.n == 4 and scores.tokenizer == TOKENIZER_PYTHON


def test_disjoint_captions_score_nothing():
    scores = score_captions(["zebra giraffe ostrich xylophone"] * 4, _references(), java=False)
    assert scores.bleu1 < 1e-6 and scores.bleu4 < 1e-6
    assert scores.rouge_l == 0 and scores.cider == 0 and scores.exact_match == 0


def test_scores_are_pycocoevalcap_on_the_same_tokens():
    """Our wrapper gives pycocoevalcap's own numbers for the tokenised captions, unchanged."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    predictions = ["a man on a surfboard riding a wave", "two dogs in the grass", "", "an elephant."]
    references = _references()
    res = {i: [python_ptb_tokenize(p)] for i, p in enumerate(predictions)}
    gts = {i: [python_ptb_tokenize(r) for r in refs] for i, refs in enumerate(references)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores = score_captions(predictions, references, java=False)
    assert [scores.bleu1, scores.bleu2, scores.bleu3, scores.bleu4] == bleu
    assert scores.rouge_l == Rouge().compute_score(gts, res)[0]
    assert scores.cider == Cider().compute_score(gts, res)[0]
    assert 0 < scores.bleu4 < 1 and 0 < scores.cider < 10


def test_without_java_meteor_and_spice_are_skipped_with_reasons():
    scores = score_captions(CAPTIONS, _references(), java=False)
    assert scores.meteor is None and scores.spice is None
    assert "Java" in scores.skipped["meteor"] and "Java" in scores.skipped["spice"]
    assert set(scores.skipped) == {"meteor", "spice"}
    table = scores.table()
    assert "x100" in table and "skipped: Java not used" in table and "CIDEr-D" in table
    assert "100.00" in table  # BLEU-1 of copies, x100
    data = json.loads(json.dumps(scores.to_dict()))
    assert data["bleu4"] == pytest.approx(1, abs=1e-6)  # the JSON keeps raw values
    assert data["tokenizer"] == TOKENIZER_PYTHON and data["meteor"] is None


def test_metrics_can_be_chosen():
    scores = score_captions(CAPTIONS, _references(), java=False, metrics=["bleu"])
    assert scores.bleu4 is not None and scores.cider is None and scores.rouge_l is None
    assert scores.skipped["cider"] == "not requested"
    assert scores.exact_match == 1


@pytest.mark.parametrize(
    ("prediction", "references", "expected"),
    [
        ("A dog.", ["a dog"], 1),
        ("a  dog\n", ["A dog ."], 1),
        ('"A dog!"', ["a dog"], 1),
        ("a cat", ["a dog", "A cat."], 1),
        ("a dog, running", ["a dog running"], 0),
        ("a dog", ["a dogs"], 0),
        ("", ["a dog"], 0),
    ],
)
def test_exact_match_normalisation(prediction, references, expected):
    assert exact_match([prediction], [references]) == expected


@pytest.mark.parametrize(
    ("predictions", "references", "complaint"),
    [
        ([], [], "no predictions"),
        (["a dog"], [["a dog"], ["a cat"]], "1 predictions but 2 reference lists"),
        (["a dog"], ["a dog"], "must be a list of caption strings"),
        (["a dog"], [[]], "no reference captions"),
        ([None], [["a dog"]], "not a string"),
        ("a dog", [["a dog"]], "not one string"),
        (["a dog"], [["..."]], "no reference caption has a word"),
    ],
)
def test_bad_inputs_are_refused(predictions, references, complaint):
    with pytest.raises(ConfigError, match=complaint):
        score_captions(predictions, references, java=False)


def test_unknown_metric_is_refused():
    with pytest.raises(ConfigError, match="choose among bleu"):
        score_captions(CAPTIONS, _references(), java=False, metrics=["bleu", "wer"])


def test_punctuation_list_is_coco_captions():
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS as COCO

    assert set(COCO) == PUNCTUATIONS


def test_python_tokenizer_examples():
    assert python_ptb_tokenize("A Dog's toy, isn't it?") == "a dog 's toy is n't it"
    assert python_ptb_tokenize("a cat (black) on 1,000 mats.") == "a cat -lrb- black -rrb- on 1,000 mats"
    assert python_ptb_tokenize("in the U.S. at 3:30 p.m.") == "in the u.s. at 3:30 p.m."
    assert python_ptb_tokenize("") == ""


# --- With Java ------------------------------------------------------------------------------------


@needs_java
def test_tokenizers_match_pycocoevalcaps_ptbtokenizer():
    """Ours through Java is pycocoevalcap's PTBTokenizer exactly; the pure-Python one agrees on captions."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    coco = PTBTokenizer().tokenize({i: [{"caption": s}] for i, s in enumerate(PUNCTUATED)})
    expected = [coco[i][0] for i in range(len(PUNCTUATED))]
    assert java_ptb_tokenize(PUNCTUATED) == expected
    assert [python_ptb_tokenize(s) for s in PUNCTUATED] == expected


@needs_java
def test_java_tokenizer_keeps_captions_aligned():
    # Line breaks inside captions and blank captions at the end must not shift anything.
    sentences = ["A dog.\nA cat.", "", "a bird\r\nflies", "  ", ""]
    assert java_ptb_tokenize(sentences) == ["a dog a cat", "", "a bird flies", "", ""]


@needs_java
def test_scoring_with_java(monkeypatch):
    """PTB tokenisation, METEOR through its JVM, and SPICE skipped (never downloaded) without its models."""
    from pycocoevalcap.spice import get_stanford_models

    def no_download(*args, **kwargs):
        raise AssertionError("SPICE tried to download Stanford CoreNLP")

    monkeypatch.setattr(get_stanford_models, "urlretrieve", no_download)
    scores = score_captions(CAPTIONS, _references())
    assert scores.tokenizer == TOKENIZER_JAVA
    assert scores.bleu4 == pytest.approx(1, abs=1e-6)
    if scores.meteor is None:  # e.g. a JVM that cannot get -Xmx2G: a reason, not a crash
        assert scores.skipped["meteor"].startswith("METEOR failed")
    else:
        assert 0.9 < scores.meteor <= 1
    if spice_models_missing():
        assert scores.spice is None and "Stanford CoreNLP" in scores.skipped["spice"]


@needs_java
def test_meteor_failure_is_a_skip_and_its_process_is_closed(monkeypatch):
    from pycocoevalcap.meteor import meteor

    started = []
    real_popen = meteor.subprocess.Popen

    def popen(*args, **kwargs):
        started.append(real_popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(meteor, "METEOR_JAR", "no-such-meteor.jar")
    monkeypatch.setattr(meteor.subprocess, "Popen", popen)
    scores = score_captions(CAPTIONS, _references(), metrics=["meteor"])
    assert scores.meteor is None
    assert scores.skipped["meteor"].startswith("METEOR failed (Java exited with status 1")
    assert "no-such-meteor.jar" in scores.skipped["meteor"]
    meteors = [p for p in started if "no-such-meteor.jar" in p.args]  # (the PTB tokenizer's run too)
    assert meteors and all(p.returncode is not None and p.stdin.closed for p in meteors)


def test_java_is_required_when_asked(monkeypatch):
    import clipcap.eval.metrics as metrics_module

    monkeypatch.setattr(metrics_module, "java_status", lambda: (False, "Java not found"))
    with pytest.raises(ConfigError, match="Java was required but cannot be used: Java not found"):
        score_captions(CAPTIONS, _references(), java=True)
    scores = score_captions(CAPTIONS, _references())  # java=None: found missing, skipped
    assert scores.skipped["meteor"] == "Java not found" and scores.tokenizer == TOKENIZER_PYTHON
