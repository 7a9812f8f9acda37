"""Checkable facts of a free-text description, for the offline judge (:mod:`llavidal.eval.judges.local`).

``extract_facts(text)`` reads, with regular expressions over lower-cased text (no model):

- ``activities``: daily-living activities in order of first mention (``drink``, ``pick_up``, ``sit_down``,
  ``walk``, ...), from verbs and their forms and synonyms ("sips", "takes a seat", "gets up from the chair",
  "jogs"); the names are those of the embedded world's catalogue (``llavidal/sim/activities.py``), whose
  labels, phrases and descriptions all map to their own activity (a test checks it), but the verbs are
  plain English, so any ADL description is read;
- ``hands``: ``left`` / ``right`` / ``both`` when a hand (arm, fist, palm) is named;
- ``colours``: (colour, noun) pairs such as ("red", "mug") or ("teal", "top"); the noun is ``""`` when no
  known noun follows the colour within two words;
- ``objects`` and ``scene``: household objects and furniture / places, canonical names ("cup" -> ``mug``,
  "telephone" -> ``phone``, "pants" -> ``trousers``);
- ``numbers``: (value, words) pairs, the (singular) words after the number joined by ``|`` ("five times" ->
  (5, "time"), "four wooden blocks" -> (4, "wooden|block"), "twice" -> (2, "time")).

``compare(reference, prediction)`` turns two :class:`Facts` into per-kind counts (matched, missed,
contradicted, unsupported), the currency of the judge's criteria. Contradicted means the prediction states
a different value for the same thing (the other hand, another colour of the same noun, another count of
the same noun, an activity the reference does not have); unsupported means it states something the
reference does not mention at all (an extra object).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# ------------------------------------------------------------------------------------------ activities
_W = r"(?:[a-z]+ ){0,3}"  # up to three words between a verb and its particle ("picks a red mug up")
_DET = r"(?:the |a |his |her |their )?"


def _forms(*bases: str) -> str:
    """A group matching the verbs' base, third-person, -ing and -ed forms (regular spelling rules)."""
    forms: set[str] = set()
    for base in bases:
        forms.add(base)
        forms.add(base + "es" if base.endswith(("s", "sh", "ch", "x", "z")) else base + "s")
        if base.endswith("e") and not base.endswith("ee"):
            forms.update({base[:-1] + "ing", base + "d"})
        elif re.fullmatch(r"[a-z]*[^aeiou][aeiou][bdgmnpt]", base) and len(base) <= 4:
            forms.update({base + base[-1] + "ing", base + base[-1] + "ed"})
        else:
            forms.update({base + "ing", base + "ed"})
    return "(?:" + "|".join(sorted(forms, key=len, reverse=True)) + ")"


ACTIVITY_PATTERNS: dict[str, tuple[str, ...]] = {
    "drink": (
        rf"\b{_forms('drink')}\b",
        r"\bdrank\b",
        rf"\b{_forms('sip', 'gulp', 'swig')}\b",
        r"\bhas a drink\b",
    ),
    "eat": (
        rf"\b{_forms('eat', 'chew', 'snack')}\b",
        r"\bate\b",
        r"\bbites? of\b",
        r"\bfood to (?:the|his|her|their) mouth\b",
        r"\bhas a snack\b",
        r"\bfood\b[^.;]* to (?:the|his|her|their) mouth\b",
    ),
    "pick_up": (
        rf"\b{_forms('pick')} {_W}up\b",
        rf"\b{_forms('grasp', 'grab')}\b",
        rf"\b(?:{_forms('take', 'lift')}|took) {_W}(?:off|from) (?:the |a )?(?:table|desk|counter)\b",
    ),
    "put_down": (
        rf"\b(?:{_forms('put', 'set', 'lay')}|laid) {_W}down\b",
        rf"\b{_forms('place')} {_W}(?:on|onto) (?:the |a )?(?:table|desk|counter)\b",
        r"\b(?:lets?|letting) go of\b",
    ),
    "read": (
        rf"\b{_forms('read')}\b(?! to)",
        rf"\b{_forms('look', 'leaf', 'flip', 'browse')} through (?:a|the) (?:book|magazine)",
        rf"\b{_forms('turn')} (?:the |a |its )?pages?\b",
    ),
    "phone_call": (
        r"\b(?:tele)?phone call\b",
        rf"\b{_forms('talk', 'speak', 'chat')} on {_DET}(?:[a-z]+ ){{0,2}}?(?:tele|cell)?phone\b",
        r"\bon the (?:tele)?phone\b",
        r"\bto (?:the|his|her|their|one) ear\b",
        rf"\b{_forms('answer')} (?:the|a) (?:tele)?phone",
        rf"\b(?:{_forms('make')}|made) (?:a )?(?:phone )?call\b",
        rf"\b{_forms('call')} (?:someone|somebody)\b",
    ),
    "wave": (
        rf"\b{_forms('wave')}\b",
    ),
    "sit_down": (
        r"\b(?:sits?|sitting|sat) down\b",
        r"\b(?:sits|sat) (?:on|in) (?:a|the) (?:chair|seat|stool|sofa|couch|bench)\b",
        rf"\b(?:{_forms('take')}|took) a seat\b",
        r"\blowers? (?:\w+ )?onto (?:the|a) (?:chair|seat)\b",
        rf"\b{_forms('seat')} (?:himself|herself|themselves)\b",
    ),
    "stand_up": (
        rf"\b(?:{_forms('stand')}|stood) up\b",
        rf"\b(?:{_forms('get')}|got) up (?:from|off|out of) {_DET}(?:chair|seat|stool|sofa|couch)",
        rf"\b(?:{_forms('rise')}|rose) (?:up )?from (?:the |a )?(?:chair|seat)",
    ),
    "clap": (
        rf"\b{_forms('clap', 'applaud')}\b",
        rf"\b{_forms('bring', 'put')} (?:both |the |his |her |their )?hands together\b",
    ),
    "stoop": (
        rf"\b{_forms('stoop')}\b",
        rf"\b(?:{_forms('bend', 'crouch', 'reach', 'squat')}|bent) (?:\w+ )?down\b",
    ),
    "point": (
        rf"\b{_forms('point')}\b",
    ),
    "walk": (
        rf"\b{_forms('walk', 'stroll')}\b",
    ),
    "run": (
        rf"\b(?:{_forms('run', 'jog', 'sprint')}|ran)\b",
    ),
    "jump": (
        rf"\b{_forms('jump', 'leap', 'hop')}\b",
        r"\bleapt\b",
    ),
    "kick": (
        rf"\b{_forms('kick')}\b",
    ),
    "punch": (
        rf"\b{_forms('punch')}\b",
    ),
    "dance": (
        rf"\b{_forms('dance')}\b",
    ),
    "cartwheel": (
        r"\bcartwheels?\b",
    ),
    "backflip": (
        r"\bback ?flips?\b",
        r"\bflips? backwards?\b",
        r"\bback somersault\b",
        r"\bflipping backwards?\b",
    ),
    "crawl": (
        rf"\b{_forms('crawl')}\b",
        r"\bon all fours\b",
    ),
    "roll": (
        rf"\b{_forms('roll', 'tumble')}\b",
    ),
    "spin": (
        rf"\b{_forms('spin', 'twirl')}\b",
        r"\bspun\b",
        rf"\b{_forms('turn')} (?:round and round|in circles)\b",
    ),
    "spinkick": (
        r"\bspinning kick\b",
        r"\broundhouse kick\b",
        r"\bspin kick\b",
        rf"\b{_forms('spin')} (?:around )?and kicks?\b",
        rf"\b{_forms('spin')} around and kicks?\b",
    ),
    "getup_facedown": (
        r"\bface ?down\b",
        r"\bon (?:the|his|her|their) (?:belly|stomach)\b",
        rf"\b{_forms('push')} up off the floor\b",
    ),
    "getup_faceup": (
        r"\bface ?up\b",
        r"\bon (?:the|his|her|their) back\b(?! (?:of|to))",
        rf"\b{_forms('sit')} up from the floor\b",
    ),
    "getup_facedown|getup_faceup": (
        rf"\b(?:{_forms('get')}|got) up (?:from|off) (?:the )?(?:floor|ground)\b",
    ),
}
"""Activity name -> regular expressions over lower-cased text (any one marks a mention). A name joined by
``|`` is a wording that fits either activity ("gets up from the floor"): it matches both, contradicts neither,
and is dropped when the text names one of them."""

SUPPRESSES: dict[str, tuple[str, ...]] = {
    "backflip": ("jump",),  # "jumps and flips backwards"
    "spinkick": ("spin", "kick"),
    "getup_facedown": ("stand_up",),
    "getup_faceup": ("stand_up",),
    "phone_call": ("pick_up",),  # "lifts a phone to the ear"
}
"""A more specific activity hides the general ones its own wording mentions."""

_ACTIVITY_RES = {name: [re.compile(p) for p in patterns] for name, patterns in ACTIVITY_PATTERNS.items()}

# ------------------------------------------------------------------------------------------ nouns
OBJECT_NOUNS: dict[str, str] = {
    **dict.fromkeys(("mug", "mugs", "cup", "cups", "teacup", "coffee cup"), "mug"),
    **dict.fromkeys(("glass", "glasses"), "glass"),
    **dict.fromkeys(("bottle", "bottles", "flask"), "bottle"),
    **dict.fromkeys(("book", "books", "novel", "magazine", "notebook"), "book"),
    **dict.fromkeys(("phone", "phones", "telephone", "cellphone", "smartphone", "mobile"), "phone"),
    **dict.fromkeys(("box", "boxes", "carton", "package"), "box"),
    **dict.fromkeys(("apple", "apples", "fruit"), "apple"),
    **dict.fromkeys(("tray", "trays"), "tray"),
    **dict.fromkeys(("food", "snack", "meal", "sandwich", "bread"), "food"),
    **dict.fromkeys(("plate", "plates", "dish"), "plate"),
    **dict.fromkeys(("bowl", "bowls"), "bowl"),
    **dict.fromkeys(("spoon", "fork", "knife", "cutlery"), "cutlery"),
    **dict.fromkeys(("laptop", "computer", "tablet"), "laptop"),
    **dict.fromkeys(("remote", "pen", "pencil", "keys", "key", "bag", "towel", "broom", "kettle", "pan", "pot",
                     "ball", "toy", "glasses", "wallet", "paper", "letter", "newspaper", "pillow", "blanket"), None),
}
"""Hand-held objects: word -> canonical name (``None``: the word itself)."""

SCENE_NOUNS: dict[str, str] = {
    **dict.fromkeys(("table", "tables", "desk", "counter"), "table"),
    **dict.fromkeys(("chair", "chairs", "seat", "stool"), "chair"),
    **dict.fromkeys(("sofa", "couch", "armchair"), "sofa"),
    **dict.fromkeys(("floor", "ground"), "floor"),
    **dict.fromkeys(("kitchen", "bedroom", "bathroom", "room", "hall", "hallway", "office", "garden", "door",
                     "window", "bed", "wall", "shelf", "cupboard", "fridge", "sink", "stairs", "tv",
                     "television"), None),
}
"""Furniture and places: word -> canonical name (``None``: the word itself)."""

CLOTHING_NOUNS: dict[str, str] = {
    **dict.fromkeys(("top", "shirt", "t-shirt", "tshirt", "sweater", "jumper", "blouse", "jacket", "hoodie",
                     "sweatshirt"), "top"),
    **dict.fromkeys(("trousers", "pants", "jeans", "shorts", "trouser", "leggings", "skirt"), "trousers"),
    **dict.fromkeys(("shoes", "shoe", "sneakers", "boots"), "shoes"),
    **dict.fromkeys(("hat", "cap"), "hat"),
    **dict.fromkeys(("coat", "apron", "dress", "cardigan", "scarf", "gloves", "socks"), None),
}

COLOURS = ("red", "green", "blue", "yellow", "orange", "purple", "white", "black", "brown", "pink", "teal", "grey",
           "gray", "beige", "navy", "violet", "cyan", "turquoise", "silver", "gold", "golden", "maroon", "tan")
_COLOUR_ALIASES = {"gray": "grey", "golden": "gold", "violet": "purple", "turquoise": "teal", "cyan": "teal"}

NUMBER_WORDS = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
                "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "a single": 1, "once": 1, "twice": 2, "thrice": 3}
_COUNTED_ONCE = ("time", "sip", "bite", "page", "wave", "clap")  # "one" counts only before these ("one leg": no)
_ADVERB_COUNTS = {"once": 1, "twice": 2, "thrice": 3}

_NOUNS: dict[str, str] = {}
for _table in (OBJECT_NOUNS, SCENE_NOUNS, CLOTHING_NOUNS):
    for _word, _canonical in _table.items():
        _NOUNS[_word] = _canonical or _word  # clothing too: the noun a colour belongs to
_OBJECTS = {c or w for w, c in OBJECT_NOUNS.items()}
_SCENE = {c or w for w, c in SCENE_NOUNS.items()}

_TOKEN = re.compile(r"[a-z]+(?:-[a-z]+)?|\d+")
_HAND = re.compile(r"\b(left|right|both)(?:[- ](?:hand|hands|handed|arm|arms|fist|palm))\b")
_HAND_AFTER = re.compile(r"\b(?:hand|arm)s?,? (?:the |his |her |their )?(left|right)(?: one)?\b")
_SENTENCE = re.compile(r"[.;!?]+")
_NOT_NOUNS = {"and", "or", "of", "the", "a", "an", "in", "on", "at", "to", "with", "from", "then", "more", "back",
              "different", "separate", "short", "small", "big", "quick", "slow", "full", "little", "large"}


def _stem(word: str) -> str:
    """Singular, lower-case noun ("sips" -> "sip", "times" -> "time", "activities" -> "activity")."""
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "sses")):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        return word[:-1]
    return word


@dataclass(frozen=True)
class Facts:
    activities: tuple[str, ...] = ()
    """Activities in order of first mention."""
    hands: frozenset[str] = frozenset()
    colours: frozenset[tuple[str, str]] = frozenset()
    objects: frozenset[str] = frozenset()
    scene: frozenset[str] = frozenset()
    numbers: frozenset[tuple[int, str]] = frozenset()
    activity_sequence: tuple[str, ...] = field(default=())
    """Every mention in order, consecutive repeats collapsed (the order of events)."""

    def count(self) -> int:
        return (len(set(self.activities)) + len(self.hands) + len(self.colours) + len(self.objects)
                + len(self.scene) + len(self.numbers))

    def to_dict(self) -> dict:
        return {
            "activities": list(self.activities),
            "hands": sorted(self.hands),
            "colours": sorted(f"{c} {n}".strip() for c, n in self.colours),
            "objects": sorted(self.objects),
            "scene": sorted(self.scene),
            "numbers": sorted(f"{v} {n}".strip() for v, n in self.numbers),
        }


def _activity_mentions(text: str) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for name, patterns in _ACTIVITY_RES.items():
        for pattern in patterns:
            found.extend((m.start(), name) for m in pattern.finditer(text))
    names = {name for _, name in found}
    hidden = {h for name in names for h in SUPPRESSES.get(name, ())}
    # a suppressed mention is dropped only when it sits in the same sentence as the specific one
    kept = []
    for start, name in found:
        if name in hidden:
            sentence = _sentence_at(text, start)
            if any(s_name != name and name in SUPPRESSES.get(s_name, ()) and _sentence_at(text, s) == sentence
                   for s, s_name in found):
                continue
        kept.append((start, name))
    specific = {name for _, name in kept if "|" not in name}
    return sorted((s, n) for s, n in kept if "|" not in n or not set(n.split("|")) & specific)


def same_activity(a: str, b: str) -> bool:
    """Equal names, or an ambiguous ``x|y`` mention that includes the other."""
    return bool(set(a.split("|")) & set(b.split("|")))


def _sentence_at(text: str, position: int) -> int:
    return len(_SENTENCE.findall(text[:position]))


def extract_facts(text: str) -> Facts:
    """The facts of a free-text answer (see the module docstring)."""
    text = " ".join((text or "").lower().replace("’", "'").split())
    mentions = _activity_mentions(text)
    order = list(dict.fromkeys(name for _, name in mentions))
    sequence: list[str] = []
    for _, name in mentions:
        if not sequence or sequence[-1] != name:
            sequence.append(name)
    hands = {m.group(1) for m in _HAND.finditer(text)} | {m.group(1) for m in _HAND_AFTER.finditer(text)}
    tokens = _TOKEN.findall(text)
    colours: set[tuple[str, str]] = set()
    objects: set[str] = set()
    scene: set[str] = set()
    numbers: set[tuple[int, str]] = set()
    for i, token in enumerate(tokens):
        canonical = _NOUNS.get(token)
        if canonical in _OBJECTS:
            objects.add(canonical)
        elif canonical in _SCENE:
            scene.add(canonical)
        if token in COLOURS:
            following = [_NOUNS.get(t) for t in tokens[i + 1 : i + 3]]
            noun = next((n for n in following if n), "")
            colours.add((_COLOUR_ALIASES.get(token, token), noun))
        value = None
        if token.isdigit() and len(token) < 4:
            value = int(token)
        elif token in NUMBER_WORDS and token != "one":
            value = NUMBER_WORDS[token]
        elif token == "one" and tokens[i + 1 : i + 2] and tokens[i + 1] in _COUNTED_ONCE:
            value = 1
        if value is not None:
            if token in _ADVERB_COUNTS:
                noun = "time"
            else:  # the next two words, either may be the noun ("four wooden blocks", "two sips")
                noun = "|".join(_stem(t) for t in tokens[i + 1 : i + 3] if not t.isdigit() and t not in _NOT_NOUNS)
            numbers.add((value, noun))
    return Facts(
        activities=tuple(order),
        hands=frozenset(hands),
        colours=frozenset(colours),
        objects=frozenset(objects),
        scene=frozenset(scene),
        numbers=frozenset(numbers),
        activity_sequence=tuple(sequence),
    )


# ------------------------------------------------------------------------------------------ comparison
@dataclass
class KindCheck:
    """One kind of fact: how the prediction's facts relate to the reference's."""

    reference: int = 0
    matched: int = 0
    missed: int = 0
    contradicted: int = 0
    unsupported: int = 0

    @property
    def stated(self) -> int:
        return self.matched + self.contradicted + self.unsupported

    def to_dict(self) -> dict:
        return {"ref": self.reference, "matched": self.matched, "missed": self.missed,
                "contradicted": self.contradicted, "unsupported": self.unsupported}


FACT_KINDS = ("activity", "hand", "colour", "object", "scene", "number")


def _keyed(reference: set[tuple], prediction: set[tuple], key) -> KindCheck:
    """Pairs (value, key), e.g. (colour, noun): the same key with another value contradicts, an unknown key is
    unsupported; pairs with an empty key are compared by value alone."""
    check = KindCheck(reference=len(reference))
    ref_keys = {key(pair) for pair in reference}
    ref_values = {pair[0] for pair in reference}
    for pair in prediction:
        if pair in reference or (not key(pair) and pair[0] in ref_values):
            check.matched += 1
        elif key(pair) and key(pair) in ref_keys:
            check.contradicted += 1
        else:
            check.unsupported += 1
    check.missed = sum(1 for pair in reference if pair not in prediction
                       and not (not key(pair) and any(p[0] == pair[0] for p in prediction)))
    return check


def compare(reference: Facts, prediction: Facts) -> dict[str, KindCheck]:
    """Per kind of fact, the prediction's facts checked against the reference's."""
    out: dict[str, KindCheck] = {}
    ref_acts, pred_acts = set(reference.activities), set(prediction.activities)
    found = {a for a in pred_acts if any(same_activity(a, r) for r in ref_acts)}
    act = KindCheck(reference=len(ref_acts), matched=len(found),
                    missed=sum(1 for r in ref_acts if not any(same_activity(r, a) for a in pred_acts)))
    act.contradicted = len(pred_acts - found) if ref_acts else 0
    act.unsupported = 0 if ref_acts else len(pred_acts)
    out["activity"] = act
    hand = KindCheck(reference=len(reference.hands), matched=len(reference.hands & prediction.hands),
                     missed=len(reference.hands - prediction.hands))
    one_handed_ref = reference.hands & {"left", "right"}
    for value in prediction.hands - reference.hands:
        if value in ("left", "right") and one_handed_ref:
            hand.contradicted += 1
        else:
            hand.unsupported += 1
    out["hand"] = hand
    out["colour"] = _keyed(set(reference.colours), set(prediction.colours), key=lambda pair: pair[1])
    for name in ("objects", "scene"):
        ref, pred = getattr(reference, name), getattr(prediction, name)
        out[name.rstrip("s") if name == "objects" else name] = KindCheck(
            reference=len(ref), matched=len(ref & pred), missed=len(ref - pred), unsupported=len(pred - ref))
    out["number"] = _numbers(reference.numbers, prediction.numbers)
    return out


def _number_words(noun: str) -> set[str]:
    words = set(noun.split("|")) - {""}
    return words | ({"time"} if words & {"time", "sip", "bite", "clap", "wave", "page"} else set())


def _numbers(reference: frozenset, prediction: frozenset) -> KindCheck:
    """Counts: the same thing counted (the words after the number overlap; "once" counts times) with the same
    value matches, with another value contradicts; a count of something the reference does not count is
    unsupported."""
    check = KindCheck(reference=len(reference))
    found: set = set()
    for value, noun in prediction:
        words = _number_words(noun)
        same_thing = [(v, n) for v, n in reference if words & _number_words(n)] if words else []
        if any(v == value for v, _ in same_thing) or (not words and any(v == value for v, _ in reference)):
            check.matched += 1
            found.update((v, n) for v, n in (same_thing or reference) if v == value)
        elif same_thing:
            check.contradicted += 1
        else:
            check.unsupported += 1
    check.missed = len(set(reference) - found)
    return check


def lcs_length(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    """Length of the longest common subsequence (the shared order of events)."""
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, 1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]
