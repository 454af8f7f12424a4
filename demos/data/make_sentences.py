"""Generate `sentences.txt`: a small synthetic English corpus for word-level demos.

A hand-written probabilistic grammar produces simple sentences about people, animals,
places and things ("The hungry fox chased a rabbit near the river."), with statements,
questions, exclamations, compound and reported sentences, present and past tense,
singular and plural subjects.

Every word list is ordered from common to rare and sampled with Zipf-like weights
(weight of rank r is 1 / r**ZIPF_S), so, as in real text, a few words are everywhere
and a long tail appears only once or twice. Those tail words are what
`Vocab.build(..., min_count=2)` maps to <UNK>.

Only the standard library's seeded `random.Random` is used, so the output is
byte-for-byte reproducible:

    python demos/data/make_sentences.py            # rewrites demos/data/sentences.txt
    python demos/data/make_sentences.py --n 500 --seed 1 --out /tmp/s.txt
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

DEFAULT_N = 3000
DEFAULT_SEED = 1234
DEFAULT_OUT = Path(__file__).resolve().parent / "sentences.txt"

# Steeper than 1 so that the end of each list is genuinely rare.
ZIPF_S = 1.3


def _words(text: str) -> list[str]:
    """Split a whitespace-separated word list (long lists read better as paragraphs)."""
    return text.split()


# --- the lexicon, most common first --------------------------------------------------

ANIMALS = _words("""dog cat bird fox horse rabbit mouse cow duck owl wolf bear frog sheep goat pig
lion deer fish squirrel turtle snake eagle crow hedgehog donkey monkey elephant goose
badger otter swan beaver hawk sparrow bee ant spider zebra giraffe camel penguin whale
dolphin seal panda koala kangaroo octopus crab beetle butterfly moth lizard bat mole weasel
ferret lynx moose bison yak llama ostrich flamingo pelican heron toad newt salamander
""")

PEOPLE = _words("""man woman boy girl child farmer teacher friend king queen baker doctor sailor
soldier student painter singer neighbour grandmother grandfather fisherman hunter nurse
pilot poet merchant shepherd judge thief wizard knight princess miller blacksmith
carpenter gardener librarian tailor""")

NAMES = _words("""Anna Tom Maria Sam Lucy Ben Emma Jack Nora Leo Ida Max Rosa Omar Yuki Ravi Elsa
Hugo Vera Felix Zara Igor Mei Kofi Ines""")

PLACES = _words("""river forest garden house field hill village town lake sea park farm school
market road bridge beach mountain valley barn kitchen castle cave island meadow harbour
station library church tower desert swamp orchard mill well cottage palace pond shore
cliff glacier""")

THINGS = _words("""apple ball book bone bread stone stick hat letter boat key cake cup lamp rope
basket coin flower carrot cheese egg nut map box bell song shoe coat candle ring sword
drum kite feather pebble shell lantern compass violin telescope umbrella""")

# (base, third person singular, past)
TRANSITIVE = [
    ("see", "sees", "saw"),
    ("like", "likes", "liked"),
    ("find", "finds", "found"),
    ("chase", "chases", "chased"),
    ("eat", "eats", "ate"),
    ("watch", "watches", "watched"),
    ("carry", "carries", "carried"),
    ("follow", "follows", "followed"),
    ("help", "helps", "helped"),
    ("love", "loves", "loved"),
    ("hold", "holds", "held"),
    ("take", "takes", "took"),
    ("bring", "brings", "brought"),
    ("catch", "catches", "caught"),
    ("want", "wants", "wanted"),
    ("hide", "hides", "hid"),
    ("keep", "keeps", "kept"),
    ("visit", "visits", "visited"),
    ("paint", "paints", "painted"),
    ("build", "builds", "built"),
    ("sell", "sells", "sold"),
    ("buy", "buys", "bought"),
    ("steal", "steals", "stole"),
    ("draw", "draws", "drew"),
    ("call", "calls", "called"),
    ("greet", "greets", "greeted"),
    ("feed", "feeds", "fed"),
    ("wash", "washes", "washed"),
    ("drop", "drops", "dropped"),
    ("lose", "loses", "lost"),
    ("throw", "throws", "threw"),
    ("push", "pushes", "pushed"),
    ("pull", "pulls", "pulled"),
    ("admire", "admires", "admired"),
    ("ignore", "ignores", "ignored"),
    ("forget", "forgets", "forgot"),
    ("remember", "remembers", "remembered"),
    ("borrow", "borrows", "borrowed"),
    ("polish", "polishes", "polished"),
    ("mend", "mends", "mended"),
    ("guard", "guards", "guarded"),
    ("sniff", "sniffs", "sniffed"),
]

INTRANSITIVE = [
    ("sleep", "sleeps", "slept"),
    ("run", "runs", "ran"),
    ("sing", "sings", "sang"),
    ("walk", "walks", "walked"),
    ("play", "plays", "played"),
    ("jump", "jumps", "jumped"),
    ("swim", "swims", "swam"),
    ("laugh", "laughs", "laughed"),
    ("dance", "dances", "danced"),
    ("wait", "waits", "waited"),
    ("sit", "sits", "sat"),
    ("cry", "cries", "cried"),
    ("rest", "rests", "rested"),
    ("fly", "flies", "flew"),
    ("shout", "shouts", "shouted"),
    ("wander", "wanders", "wandered"),
    ("whisper", "whispers", "whispered"),
    ("climb", "climbs", "climbed"),
    ("smile", "smiles", "smiled"),
    ("dream", "dreams", "dreamed"),
    ("fall", "falls", "fell"),
    ("hum", "hums", "hummed"),
    ("wave", "waves", "waved"),
    ("yawn", "yawns", "yawned"),
    ("shiver", "shivers", "shivered"),
    ("snore", "snores", "snored"),
    ("giggle", "giggles", "giggled"),
]

ADJECTIVES = _words("""big small old little happy young hungry quick red tired brown white black sad
slow green clever lazy brave quiet tall kind loud blue angry shy wet cold warm dark bright
gentle curious sleepy grumpy proud clumsy golden fluffy noisy silly wise muddy ancient
gloomy cheerful timid enormous peculiar""")

ADVERBS = _words("""quickly slowly quietly happily often always never again together sometimes
loudly carefully gently suddenly alone sadly eagerly bravely lazily reluctantly""")

PREPOSITIONS = _words("""in near by behind under across along beside inside through around over
beyond""")

TIMES = [
    "today",
    "yesterday",
    "at night",
    "every morning",
    "in the evening",
    "after dinner",
    "in the spring",
    "on sunday",
    "before dawn",
    "last winter",
]

# Irregular plurals; everything else follows the spelling rules in `plural`.
IRREGULAR_PLURALS = {
    "man": "men",
    "woman": "women",
    "child": "children",
    "mouse": "mice",
    "goose": "geese",
    "sheep": "sheep",
    "deer": "deer",
    "fish": "fish",
    "moose": "moose",
    "bison": "bison",
    "wolf": "wolves",
    "thief": "thieves",
    "fisherman": "fishermen",
}

SINGULAR_PRONOUNS = ["he", "she", "it"]
PLURAL_PRONOUNS = ["they", "we", "you", "I"]  # these take the base verb form
POSSESSIVES = ["my", "your", "his", "her", "our", "their"]


def plural(noun: str) -> str:
    """English plural of a lowercase noun from the lexicon."""
    if noun in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[noun]
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


class Grammar:
    """The sentence grammar; all randomness goes through one seeded `random.Random`."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self._weights: dict[int, list[float]] = {}

    # -- sampling helpers -----------------------------------------------------------

    def zipf(self, items: list):
        """One item, rank r (1-based) drawn with weight 1 / r**ZIPF_S."""
        n = len(items)
        if n not in self._weights:
            self._weights[n] = [1.0 / (r**ZIPF_S) for r in range(1, n + 1)]
        return self.rng.choices(items, weights=self._weights[n])[0]

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def pick(self, options: list[tuple[float, object]]):
        """One option from (weight, value) pairs."""
        weights = [w for w, _ in options]
        return self.rng.choices([v for _, v in options], weights=weights)[0]

    # -- phrases ----------------------------------------------------------------------

    def determiner(self, noun: str, is_plural: bool) -> str:
        if is_plural:
            return self.pick([(6, "the"), (2, "some"), (1, "two"), (1, "many"), (1, "three")])
        det = self.pick([(8, "the"), (5, "a"), (1, "this"), (1, "that"), (2, "poss")])
        if det == "poss":
            return self.zipf(POSSESSIVES)
        if det == "a" and noun[0] in "aeiou":
            return "an"
        return det

    def noun_phrase(self, kind: str, is_plural: bool = False) -> str:
        """A determiner, maybe an adjective, and a noun of the given kind."""
        pool = {"animal": ANIMALS, "person": PEOPLE, "place": PLACES, "thing": THINGS}[kind]
        noun = self.zipf(pool)
        adjective = self.zipf(ADJECTIVES) if self.chance(0.35) else None
        word = plural(noun) if is_plural else noun
        first = adjective or word
        det = self.determiner(first, is_plural)
        return " ".join(w for w in (det, adjective, word) if w)

    def subject(self) -> tuple[str, bool]:
        """A subject and whether it takes the base verb form (plural, I, you)."""
        kind = self.pick([(5, "animal"), (4, "person"), (3, "name"), (2, "pronoun")])
        if kind == "name":
            return self.zipf(NAMES), False
        if kind == "pronoun":
            if self.chance(0.5):
                return self.zipf(SINGULAR_PRONOUNS), False
            return self.zipf(PLURAL_PRONOUNS), True
        is_plural = self.chance(0.2)
        return self.noun_phrase(kind, is_plural), is_plural

    def obj(self) -> str:
        kind = self.pick([(4, "animal"), (3, "thing"), (2, "person"), (1, "name")])
        if kind == "name":
            return self.zipf(NAMES)
        return self.noun_phrase(kind, is_plural=self.chance(0.15))

    def place(self) -> str:
        return f"{self.zipf(PREPOSITIONS)} {self.noun_phrase('place')}"

    @staticmethod
    def verb(forms: tuple[str, str, str], tense: str, base_form: bool) -> str:
        if tense == "past":
            return forms[2]
        return forms[0] if base_form else forms[1]

    # -- clauses and sentences ------------------------------------------------------

    def clause(self, tense: str) -> str:
        """A declarative clause: subject, verb, maybe object, maybe place and time."""
        subj, base_form = self.subject()
        words = [subj]
        if self.chance(0.6):
            words.append(self.verb(self.zipf(TRANSITIVE), tense, base_form))
            words.append(self.obj())
        else:
            words.append(self.verb(self.zipf(INTRANSITIVE), tense, base_form))
            if self.chance(0.3):
                words.append(self.zipf(ADVERBS))
        if self.chance(0.4):
            words.append(self.place())
        if self.chance(0.15):
            words.append(self.zipf(TIMES))
        return " ".join(words)

    def question(self, tense: str) -> str:
        aux = "did" if tense == "past" else None
        kind = self.pick([(3, "yesno"), (2, "where"), (2, "who"), (1, "what")])
        if kind == "who":
            verb = self.verb(self.zipf(TRANSITIVE), tense, base_form=False)
            return f"who {verb} {self.obj()}?"
        subj, base_form = self.subject()
        if aux is None:
            aux = "do" if base_form else "does"
        if kind == "yesno":
            return f"{aux} {subj} {self.zipf(TRANSITIVE)[0]} {self.obj()}?"
        if kind == "where":
            return f"where {aux} {subj} {self.zipf(INTRANSITIVE)[0]}?"
        return f"what {aux} {subj} {self.zipf(TRANSITIVE)[0]}?"

    def exclamation(self) -> str:
        kind = self.pick([(2, "what"), (2, "look"), (1, "call")])
        if kind == "what":
            adjective = self.zipf(ADJECTIVES)
            article = "an" if adjective[0] in "aeiou" else "a"
            return f"what {article} {adjective} {self.zipf(ANIMALS + THINGS)}!"
        if kind == "look":
            return f"look at {self.noun_phrase('animal')}!"
        return f"{self.zipf(NAMES)}, {self.zipf(INTRANSITIVE)[0]} {self.zipf(ADVERBS)}!"

    def sentence(self) -> str:
        tense = "past" if self.chance(0.45) else "present"
        form = self.pick(
            [
                (10, "simple"),
                (3, "compound"),
                (2, "question"),
                (1, "exclamation"),
                (1, "reported"),
                (1, "semicolon"),
            ]
        )
        if form == "simple":
            text = self.clause(tense) + "."
        elif form == "compound":
            joiner = self.pick([(3, "and"), (2, "but"), (1, "so"), (1, "because")])
            text = f"{self.clause(tense)}, {joiner} {self.clause(tense)}."
        elif form == "question":
            text = self.question(tense)
        elif form == "exclamation":
            text = self.exclamation()
        elif form == "reported":
            says = "said" if tense == "past" else "says"
            text = f"{self.zipf(NAMES)} {says} that {self.clause(tense)}."
        else:
            text = f"{self.clause(tense)}; {self.clause(tense)}."
        return capitalise(text)


def capitalise(text: str) -> str:
    """Upper-case the first letter and the pronoun I; names are already capitalised."""
    text = text[0].upper() + text[1:]
    return " ".join("I" if w == "i" else w for w in text.split(" "))


def generate(n: int, seed: int) -> list[str]:
    """`n` sentences from the grammar seeded with `seed`."""
    grammar = Grammar(seed)
    return [grammar.sentence() for _ in range(n)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=DEFAULT_N, help="number of sentences")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output file")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"--n must be >= 1, got {args.n}")
    sentences = generate(args.n, args.seed)
    args.out.write_text("\n".join(sentences) + "\n", encoding="utf-8", newline="\n")
    print(f"wrote {len(sentences)} sentences to {args.out}")


if __name__ == "__main__":
    main()
