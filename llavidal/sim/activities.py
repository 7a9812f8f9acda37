"""The activity catalogue: names, labels, descriptions, paraphrases, and the routine transition table.

``ACTIVITIES`` is the public list (also used by pose pretraining for text embeddings): each entry has a
stable ``name``, a short ``label`` (the text of multiple-choice answers), a one-sentence
``description``, and paraphrases used by the question-answer templates.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Activity:
    name: str
    label: str  # gerund phrase: "drinking from a cup"
    description: str  # one sentence, present tense, "The person ..."
    source: str  # "mocap" or "procedural"
    number: int  # NTU-style action number A001..
    phrases: tuple[str, ...] = ()  # verb phrases: "drinks from a cup", "takes a sip"
    mocap_clips: tuple[str, ...] = ()
    needs: str | None = None  # procedural: what must be in hand / posture before it ("held", "drinkable", ...)
    countable: str | None = None  # noun for "how many times": "sips", "claps"
    one_handed: bool = False

    def to_json(self) -> dict:
        return {"name": self.name, "label": self.label, "description": self.description, "source": self.source,
                "action_number": self.number, "phrases": list(self.phrases)}


_P = "procedural"
_M = "mocap"

ACTIVITIES: tuple[Activity, ...] = (
    # procedural daily-living activities (objects, chair, table)
    Activity("drink", "drinking from a cup or bottle",
             "The person raises a cup or bottle held in one hand to the mouth, tips it to drink, and lowers it.",
             _P, 1, ("drinks from a cup", "takes a sip", "has a drink"), needs="drinkable", countable="sips",
             one_handed=True),
    Activity("eat", "eating food from a tray",
             "The person takes pieces of food from a tray on the table and brings them to the mouth.",
             _P, 2, ("eats some food", "takes food from a tray and eats it", "has a snack"), countable="bites",
             one_handed=True),
    Activity("pick_up", "picking up an object from a table",
             "The person reaches to the table, grasps an object and lifts it towards the body.",
             _P, 3, ("picks something up from the table", "takes an object off the table", "lifts an object from the table"),
             one_handed=True),
    Activity("put_down", "putting an object down on a table",
             "The person lowers an object held in the hand onto the table and lets go of it.",
             _P, 4, ("puts an object down on the table", "sets something down on the table", "places an object on the table"),
             needs="held", one_handed=True),
    Activity("read", "reading a book",
             "The person holds an open book in front of the chest with both hands, head bowed, and turns pages.",
             _P, 5, ("reads a book", "looks through a book", "reads, turning the pages"), needs="book",
             countable="page turns"),
    Activity("phone_call", "talking on the phone",
             "The person lifts a phone to the ear and holds it there while talking.",
             _P, 6, ("makes a phone call", "talks on the phone", "answers the phone"), needs="phone", one_handed=True),
    Activity("wave", "waving a hand",
             "The person raises one hand above the shoulder and waves it from side to side.",
             _P, 7, ("waves", "waves a hand", "waves hello"), needs="free", countable="waves", one_handed=True),
    Activity("sit_down", "sitting down on a chair",
             "The person leans forward, bends the knees and lowers onto the chair behind.",
             _P, 8, ("sits down on a chair", "takes a seat", "sits down"), needs="standing"),
    Activity("stand_up", "standing up from a chair",
             "The person leans forward and rises from the chair to stand upright.",
             _P, 9, ("stands up from the chair", "gets up from the chair", "rises from the seat"), needs="sitting"),
    Activity("clap", "clapping",
             "The person brings both hands together in front of the chest several times.",
             _P, 10, ("claps", "claps the hands", "applauds"), needs="free", countable="claps"),
    Activity("stoop", "stooping to the floor",
             "The person bends the knees and the back to reach down towards the floor, then straightens up.",
             _P, 11, ("stoops down to the floor", "bends down to the floor", "crouches down to reach the floor"),
             needs="standing_free", one_handed=True),
    Activity("point", "pointing at something",
             "The person raises one straight arm to point at something, holds it, and lowers it.",
             _P, 12, ("points at something", "points with an outstretched arm", "points somewhere"), needs="free",
             one_handed=True),
    # motion-capture clips (DeepMimic), each performed on its own
    Activity("walk", "walking", "The person walks forward with an even stride.", _M, 13,
             ("walks", "walks forward", "takes a walk"), mocap_clips=("walk",)),
    Activity("run", "running", "The person runs forward.", _M, 14, ("runs", "jogs forward", "runs ahead"),
             mocap_clips=("run",)),
    Activity("jump", "jumping forward", "The person crouches and jumps forward with both feet.", _M, 15,
             ("jumps", "jumps forward", "leaps forward"), mocap_clips=("jump",)),
    Activity("kick", "kicking", "The person swings one leg forward in a kick.", _M, 16,
             ("kicks", "kicks with one leg", "does a front kick"), mocap_clips=("kick",)),
    Activity("punch", "punching", "The person throws punches forward with the fists.", _M, 17,
             ("punches", "throws a punch", "punches forward"), mocap_clips=("punch",)),
    Activity("dance", "dancing", "The person dances, swaying and moving the arms and legs.", _M, 18,
             ("dances", "dances to music", "does a dance"), mocap_clips=("dance_a", "dance_b")),
    Activity("cartwheel", "doing a cartwheel", "The person turns a cartwheel, hands to the floor and legs over.",
             _M, 19, ("does a cartwheel", "turns a cartwheel", "cartwheels"), mocap_clips=("cartwheel",)),
    Activity("backflip", "doing a backflip", "The person jumps and flips backwards in the air.", _M, 20,
             ("does a backflip", "flips backwards", "performs a back somersault"), mocap_clips=("backflip",)),
    Activity("crawl", "crawling on hands and knees", "The person crawls forward on hands and knees.", _M, 21,
             ("crawls", "crawls on all fours", "crawls forward"), mocap_clips=("crawl",)),
    Activity("roll", "rolling forward", "The person dives forward into a roll on the floor and comes back up.", _M, 22,
             ("rolls forward", "does a forward roll", "tumbles forward"), mocap_clips=("roll",)),
    Activity("spin", "spinning around", "The person turns round and round on the spot.", _M, 23,
             ("spins around", "turns in circles", "twirls"), mocap_clips=("spin",)),
    Activity("spinkick", "doing a spinning kick", "The person spins around and kicks out with one leg.", _M, 24,
             ("does a spinning kick", "spins and kicks", "does a roundhouse kick"), mocap_clips=("spinkick",)),
    Activity("getup_facedown", "getting up from lying face down",
             "The person lies face down on the floor, pushes up and stands.", _M, 25,
             ("gets up from lying face down", "pushes up off the floor and stands", "gets up from the floor"),
             mocap_clips=("getup_facedown",)),
    Activity("getup_faceup", "getting up from lying on the back",
             "The person lies on the back on the floor, sits up and stands.", _M, 26,
             ("gets up from lying on the back", "sits up from the floor and stands", "gets up off the floor"),
             mocap_clips=("getup_faceup",)),
)

BY_NAME: dict[str, Activity] = {a.name: a for a in ACTIVITIES}
PROCEDURAL = tuple(a.name for a in ACTIVITIES if a.source == _P)
MOCAP = tuple(a.name for a in ACTIVITIES if a.source == _M)

# Activities whose labels overlap: one is arguably a correct answer when the other is the truth, so they
# never appear together among the choices of one question.
CONFUSABLE: tuple[frozenset[str], ...] = (
    frozenset({"kick", "spinkick"}),
    frozenset({"spin", "spinkick"}),
    frozenset({"getup_facedown", "getup_faceup"}),
    frozenset({"walk", "run"}),
)


def confusable_with(name: str) -> set[str]:
    out: set[str] = set()
    for group in CONFUSABLE:
        if name in group:
            out |= group
    out.discard(name)
    return out


# Routine transition table: from an activity (or "start") to the next, with weights. Preconditions
# (posture, what is in hand) are checked by the sampler; with some noise any possible activity follows.
TRANSITIONS: dict[str, dict[str, float]] = {
    "start": {"pick_up": 4, "sit_down": 2, "eat": 2, "wave": 1, "stoop": 1, "point": 1, "clap": 1},
    "pick_up": {"drink": 5, "read": 5, "phone_call": 5, "put_down": 1, "sit_down": 1},
    "drink": {"put_down": 5, "sit_down": 1, "stand_up": 2},
    "read": {"put_down": 3, "stand_up": 4},
    "phone_call": {"put_down": 4, "stand_up": 3},
    "put_down": {"wave": 1, "sit_down": 2, "eat": 2, "point": 1, "clap": 1, "stoop": 1},
    "eat": {"pick_up": 4, "wave": 1, "point": 1, "sit_down": 1},
    "sit_down": {"read": 5, "drink": 5, "phone_call": 5, "clap": 1, "wave": 1, "stand_up": 1},
    "stand_up": {"put_down": 5, "wave": 1, "stoop": 1, "point": 1},
    "wave": {"point": 2, "clap": 1, "sit_down": 1, "pick_up": 2},
    "clap": {"wave": 2, "stand_up": 1, "sit_down": 1, "pick_up": 1},
    "point": {"wave": 1, "stoop": 2, "pick_up": 2},
    "stoop": {"pick_up": 1, "point": 1, "wave": 1, "sit_down": 1},
}
