"""The verb and the object of a YouCook2 reference sentence, by a fixed rule that needs no tagger or download.

YouCook2's sentences are imperative recipe steps ("add chopped onions and garlic to the pan", "put 2 tbsp of oil in a
pan", "in a bowl, whisk the eggs"). The rule, on the lower-cased sentence split into words and punctuation:

  verb    the first word, after skipping leading fillers (LEADING: "then", "now", "next", "finally", "gently", ...);
          a sentence opening with a preposition (CLAUSE_OPENERS: "in a bowl, ...", "after that, ...") first skips
          everything up to its first comma. No verb (reason "no_verb") when nothing is left, when the word is not
          alphabetic, or when it is a determiner, pronoun or quantity (a sentence that is not imperative:
          "the chicken is done").
  object  the head noun of the first noun phrase after the verb: skip particles and the prepositions that bring an
          ingredient or a place (PARTICLES: "stir in the flour", "season with salt", "pour into the pan"), then
          determiners, quantities and units, "of", and common cooking adjectives (SKIP_IN_NP: "a pinch of", "2 cups",
          "the remaining", "chopped"); a measure word followed by "of" is skipped with it ("2 cloves of garlic",
          "a slice of bread"). The noun phrase then runs until punctuation or a word in BOUNDARY (prepositions,
          conjunctions, adverbs: "to", "and", "until", "well", ...); its head is its last word ("olive oil" -> "oil",
          "chopped onions" -> "onions"). No object (reason "no_object") when that phrase is empty or a pronoun
          ("mix well", "add it to the pan", "fry until golden").
Words stay as written (no lemmatisation: "onion" and "onions" are two labels). Noun compounds without commas
("add salt pepper and garlic") give the last word before the boundary ("pepper"): a known limit of a rule.
"""

from __future__ import annotations

import re
from typing import NamedTuple


def _set(words: str) -> frozenset[str]:
    return frozenset(words.split())


LEADING = _set(
    "then now next first firstly second secondly third finally lastly also and again gently slowly carefully quickly "
    "finely roughly thinly lightly evenly just simply please immediately meanwhile afterwards"
)
# Prepositions that open a fronted clause ("in a bowl, mix the eggs"); the clause runs to the first comma.
CLAUSE_OPENERS = _set(
    "in into on onto to with over under for from at by after before once when while using inside during"
)
DETERMINERS = _set(
    "a an the some any more all each every both this that these those its their your our my his her another other "
    "remaining rest extra enough"
)
PRONOUNS = _set("it them they everything something anything everyone this that these those all both")
NUMBER_WORDS = _set(
    "one two three four five six seven eight nine ten eleven twelve half quarter dozen few couple several little lot "
    "lots bit"
)
UNITS = _set(
    "cup cups tbsp tbs tbsps tsp tsps tablespoon tablespoons teaspoon teaspoons spoon spoons spoonful spoonfuls g gr "
    "gram grams kg ml l liter liters litre litres oz ounce ounces lb lbs pound pounds inch inches cm mm"
)
# Measure words skipped only when "of" follows ("a slice of bread" -> bread, but "cut into slices" -> slices).
MEASURES = _set(
    "pinch dash splash handful piece pieces slice slices clove cloves bunch drop drops sprinkle amount layer layers "
    "sheet sheets can cans jar stick sticks sprig sprigs cube cubes strip strips half rest"
)
ADJECTIVES = _set(
    "chopped sliced diced minced grated cooked boiled fried baked roasted melted beaten shredded crushed mashed cut "
    "peeled washed dried ground fresh hot cold warm small large big whole thin thick fine prepared remaining soaked "
    "marinated cubed seasoned frozen raw"
)
PARTICLES = _set("up out down off in back away over around aside on into onto with to together")
BOUNDARY = _set(
    "in into on onto to with over under for from at by of after before once when while until till then and or but so "
    "as if than inside around through across along together without between well thoroughly gently evenly again "
    "slowly quickly properly nicely completely finely thinly roughly briefly lightly too also about is are be"
)
SKIP_IN_NP = DETERMINERS | NUMBER_WORDS | UNITS | ADJECTIVES | {"of"}

_TOKEN = re.compile(r"[a-z0-9]+(?:['./-][a-z0-9]+)*|[^\sa-z0-9]")


class VerbObject(NamedTuple):
    """A sentence's verb and object (None when the rule finds none, with the reason)."""

    verb: str | None
    object: str | None
    verb_reason: str | None = None  # "no_verb" when verb is None
    object_reason: str | None = None  # "no_verb" or "no_object" when object is None


def _words(sentence: str) -> list[str]:
    return _TOKEN.findall(sentence.lower().replace("\u2019", "'"))


def _is_word(token: str) -> bool:
    return token[0].isalpha()


def _quantity(token: str) -> bool:
    return token[0].isdigit() or token in NUMBER_WORDS


def verb_object(sentence: str) -> VerbObject:
    """The verb and object of one imperative sentence by the rule in this module's docstring."""
    words = _words(sentence)
    i = 0
    while i < len(words) and words[i] in LEADING | {",", "-"}:
        i += 1
    if i < len(words) and words[i] in CLAUSE_OPENERS:
        comma = words.index(",", i) if "," in words[i:] else -1
        i = comma + 1 if comma >= 0 else len(words)
        while i < len(words) and words[i] in LEADING:
            i += 1
    if i >= len(words):
        return VerbObject(None, None, "no_verb", "no_verb")
    verb = words[i]
    if not _is_word(verb) or verb in DETERMINERS | PRONOUNS | NUMBER_WORDS | UNITS:
        return VerbObject(None, None, "no_verb", "no_verb")
    i += 1
    while i < len(words) and words[i] in PARTICLES:
        i += 1
    # The noun phrase's start: determiners, quantities, units, adjectives, "of", and "<measure> of".
    while i < len(words):
        w = words[i]
        if w in SKIP_IN_NP or _quantity(w):
            i += 1
        elif w in MEASURES and i + 1 < len(words) and words[i + 1] == "of":
            i += 2
        else:
            break
    phrase: list[str] = []
    while i < len(words) and _is_word(words[i]) and words[i] not in BOUNDARY:
        phrase.append(words[i])
        i += 1
    if not phrase or phrase[0] in PRONOUNS:
        return VerbObject(verb, None, None, "no_object")
    return VerbObject(verb, phrase[-1])
