"""Java for the COCO metrics: finding it, the Stanford PTBTokenizer, METEOR and SPICE.

Each runs pycocoevalcap's jar in a subprocess with a timeout; a failure is a :class:`JavaError`
(the tokenizer) or a :class:`MetricSkipped` with the reason (METEOR, SPICE). Torch-free.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from clipcap.errors import JavaError, MetricSkipped, require
from clipcap.eval.ptb import _LINE_BREAKS, PUNCTUATIONS


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


def _pycocoevalcap_dir() -> Path:
    ptb = require("pycocoevalcap.tokenizer.ptbtokenizer", "train")
    return Path(ptb.__file__).parent.parent


def _stderr_tail(text: str | bytes | None, lines: int = 2) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    kept = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return "; ".join(kept[-lines:]) or "no message"


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
