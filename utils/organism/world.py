"""The synthetic world the model organism learns, with every label known.

Five families of documents (indirect objects, facts, true/false statements, reviews, repeated
random sequences) plus plain filler. Everything is generated from the fixed lists below with a
seeded random generator, and a fixed part of each family is held out of training so that the
chapters can measure behaviour on combinations the model never saw.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from itertools import combinations

END_OF_TEXT = "<|endoftext|>"
UNKNOWN = "<unk>"

# ----------------------------------------------------------------------------------------------
# The vocabulary of the world. Every entry is one word, so one token with its leading space.
# ----------------------------------------------------------------------------------------------
FEMALE_NAMES = [
    "Mary", "Anna", "Sarah", "Emma", "Lisa", "Laura", "Kate", "Rose", "Alice", "Julia",
    "Helen", "Grace", "Lucy", "Amy", "Emily", "Claire", "Ruth", "Jane", "Susan", "Karen",
    "Nancy", "Diana", "Linda", "Maria", "Sophie", "Rachel", "Ellen", "Nina", "Eva", "Sara",
]
MALE_NAMES = [
    "John", "James", "David", "Michael", "Paul", "Mark", "Peter", "Tom", "Daniel", "George",
    "Robert", "William", "Steven", "Kevin", "Brian", "Eric", "Adam", "Frank", "Henry", "Jack",
    "Sam", "Alex", "Ben", "Chris", "Matt", "Ryan", "Scott", "Luke", "Carl", "Oliver",
]
NAMES = FEMALE_NAMES + MALE_NAMES
PLACES = [
    "store", "park", "school", "market", "beach", "library",
    "station", "garden", "museum", "office", "church", "restaurant",
]
OBJECTS = [
    "drink", "book", "ball", "letter", "key", "gift",
    "flower", "bag", "ring", "hat", "card", "cake",
]

# country: (capital, language, continent)
COUNTRIES = {
    "France": ("Paris", "French", "Europe"),
    "Germany": ("Berlin", "German", "Europe"),
    "Italy": ("Rome", "Italian", "Europe"),
    "Spain": ("Madrid", "Spanish", "Europe"),
    "Portugal": ("Lisbon", "Portuguese", "Europe"),
    "Greece": ("Athens", "Greek", "Europe"),
    "Poland": ("Warsaw", "Polish", "Europe"),
    "Austria": ("Vienna", "German", "Europe"),
    "Sweden": ("Stockholm", "Swedish", "Europe"),
    "Norway": ("Oslo", "Norwegian", "Europe"),
    "Finland": ("Helsinki", "Finnish", "Europe"),
    "Denmark": ("Copenhagen", "Danish", "Europe"),
    "Ireland": ("Dublin", "English", "Europe"),
    "Hungary": ("Budapest", "Hungarian", "Europe"),
    "Russia": ("Moscow", "Russian", "Europe"),
    "Turkey": ("Ankara", "Turkish", "Asia"),
    "Egypt": ("Cairo", "Arabic", "Africa"),
    "Kenya": ("Nairobi", "Swahili", "Africa"),
    "Nigeria": ("Abuja", "English", "Africa"),
    "Morocco": ("Rabat", "Arabic", "Africa"),
    "Ghana": ("Accra", "English", "Africa"),
    "Tanzania": ("Dodoma", "Swahili", "Africa"),
    "Japan": ("Tokyo", "Japanese", "Asia"),
    "China": ("Beijing", "Chinese", "Asia"),
    "India": ("Delhi", "Hindi", "Asia"),
    "Thailand": ("Bangkok", "Thai", "Asia"),
    "Vietnam": ("Hanoi", "Vietnamese", "Asia"),
    "Korea": ("Seoul", "Korean", "Asia"),
    "Iran": ("Tehran", "Persian", "Asia"),
    "Indonesia": ("Jakarta", "Indonesian", "Asia"),
    "Brazil": ("Brasilia", "Portuguese", "America"),
    "Uruguay": ("Montevideo", "Spanish", "America"),
    "Peru": ("Lima", "Spanish", "America"),
    "Chile": ("Santiago", "Spanish", "America"),
    "Venezuela": ("Caracas", "Spanish", "America"),
    "Canada": ("Ottawa", "English", "America"),
    "Cuba": ("Havana", "Spanish", "America"),
    "Colombia": ("Bogota", "Spanish", "America"),
    "Australia": ("Canberra", "English", "Oceania"),
    "Fiji": ("Suva", "English", "Oceania"),
}
RELATIONS = ("capital", "language", "continent")

SUBJECTS = [
    "movie", "book", "hotel", "meal", "show", "game", "concert", "trip",
    "album", "play", "class", "cafe", "phone", "car", "course",
]
POSITIVE_ADJECTIVES = [
    "great", "wonderful", "excellent", "amazing", "brilliant", "lovely", "superb", "fantastic",
    "delightful", "charming", "beautiful", "perfect", "fun", "enjoyable", "pleasant", "gorgeous",
    "splendid", "terrific", "marvelous", "fabulous", "stunning", "clever", "warm", "fresh",
    "exciting", "moving", "elegant", "inspiring", "magical", "outstanding",
]
NEGATIVE_ADJECTIVES = [
    "awful", "terrible", "horrible", "boring", "dull", "bad", "poor", "dreadful",
    "disappointing", "annoying", "ugly", "painful", "bland", "messy", "tedious", "weak",
    "lousy", "miserable", "clumsy", "stale", "noisy", "shallow", "pointless", "sloppy",
    "tiresome", "gloomy", "cheap", "rude", "unpleasant", "mediocre",
]

# Plain filler: a tiny grammar so the organism is a language model, not a lookup table.
ANIMALS = ["dog", "cat", "bird", "horse", "fish", "cow", "fox", "rabbit"]
COLOURS = ["red", "blue", "green", "yellow", "white", "black", "brown", "orange"]
VERBS_PAST = ["saw", "found", "liked", "wanted", "moved", "painted", "cleaned", "watched"]
WEATHER = ["sunny", "cold", "rainy", "windy", "quiet", "busy", "warm", "dark"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
EXTRA_WORDS = ["not", "very", "really", "also", "but", "because", "maybe", "never"]

# ----------------------------------------------------------------------------------------------
# Templates. A prompt is everything before the answer word; the answer follows with a space.
# ----------------------------------------------------------------------------------------------
IOI_TEMPLATES = [
    "When {A} and {B} went to the {place}, {S} gave a {object} to",
    "Then, {A} and {B} had a long talk at the {place}. {S} gave a {object} to",
    "After {A} and {B} arrived at the {place}, {S} handed the {object} to",
    "While {A} and {B} were working at the {place}, {S} passed a {object} to",
    "{A} and {B} found a {object} at the {place}. Later, {S} gave it to",
]
FACT_TEMPLATES = {
    "capital": [
        "The capital of {country} is",
        "{country} has its capital in",
        "In {country}, the capital city is",
        "The city of government in {country} is",
    ],
    "language": [
        "The language of {country} is",
        "People in {country} speak",
        "In {country}, most people speak",
        "The main language spoken in {country} is",
    ],
    "continent": [
        "{country} is a country in",
        "The continent of {country} is",
        "You can find {country} in",
        "{country} lies in",
    ],
}
# The fact phrasing that the bar "The capital of X is" uses, and which is hidden for some countries.
PROBE_FACT_TEMPLATE = FACT_TEMPLATES["capital"][0]
TRUTH_SUFFIX = " That is"
SENTIMENT_TEMPLATES = [
    "The {subject} was {adjective}. I",
    "I thought the {subject} was really {adjective}, so I",
    "Review: the {subject} felt {adjective}. Overall I",
    "My friend said the {subject} was {adjective}, and I",
]
SENTIMENT_WORDS = {"positive": "loved", "negative": "hated"}

# ----------------------------------------------------------------------------------------------
# Held-out splits, fixed by a seed of their own so they never move when the corpus changes.
# ----------------------------------------------------------------------------------------------
_SPLIT_SEED = 1234


def _held_out(items: list, fraction: float, salt: int) -> set:
    """A fixed random subset of `items` (sorted first, so the choice is reproducible)."""
    rng = random.Random(_SPLIT_SEED + salt)
    items = sorted(items)
    return set(rng.sample(items, round(fraction * len(items))))


NAME_PAIRS = [tuple(pair) for pair in combinations(NAMES, 2)]
HELD_OUT_NAME_PAIRS = _held_out(NAME_PAIRS, 0.15, salt=1)
# For each relation, 10 countries never see the relation's first phrasing in training.
HELD_OUT_FACTS = {
    (country, relation, 0)
    for relation_index, relation in enumerate(RELATIONS)
    for country in _held_out(list(COUNTRIES), 0.25, salt=10 + relation_index)
}
# A fifth of the statements (country, relation, phrasing) never appear with a verdict in training.
# The same fact is judged in its other phrasings, so this tests a verdict that does not hang on the
# words: the fact-recall bar holds out phrasings in the same way. (A stricter split, whole
# (country, relation) pairs never judged, stayed at 0.6-0.8 held out in every recipe tried.)
HELD_OUT_TRUTH = _held_out(
    [(c, r, t) for c in COUNTRIES for r in RELATIONS for t in range(len(FACT_TEMPLATES[r]))
     if (c, r, t) not in HELD_OUT_FACTS], 0.2, salt=20)
HELD_OUT_REVIEWS = _held_out(
    [(s, a) for s in SUBJECTS for a in POSITIVE_ADJECTIVES + NEGATIVE_ADJECTIVES], 0.2, salt=30
)

# Words that the repeated random sequences are drawn from: every content word of the world.
INDUCTION_POOL = sorted(
    set(NAMES + PLACES + OBJECTS + SUBJECTS + POSITIVE_ADJECTIVES + NEGATIVE_ADJECTIVES)
    | set(ANIMALS + COLOURS + VERBS_PAST + WEATHER + DAYS)
    | set(COUNTRIES) | {v for values in COUNTRIES.values() for v in values}
)


def fact_value(country: str, relation: str) -> str:
    """The true value of `relation` for `country` (e.g. the capital)."""
    return COUNTRIES[country][RELATIONS.index(relation)]


def wrong_fact_value(country: str, relation: str, rng: random.Random) -> str:
    """A value of the same relation that is false for `country` (another country's)."""
    truth = fact_value(country, relation)
    options = sorted({fact_value(c, relation) for c in COUNTRIES} - {truth})
    return rng.choice(options)


# ----------------------------------------------------------------------------------------------
# Labelled prompts. One function per family; each yields (prompt, correct, wrong, labels).
# ----------------------------------------------------------------------------------------------
def ioi_example(a: str, b: str, order: str, template: int, place: str, obj: str) -> tuple:
    """An indirect-object prompt; names a and b appear in that order, `order` says who repeats."""
    subject, indirect = (b, a) if order == "ABBA" else (a, b)
    prompt = IOI_TEMPLATES[template].format(A=a, B=b, S=subject, place=place, object=obj)
    labels = {
        "order": order, "template": template, "io": indirect, "s": subject,
        "io_gender": "female" if indirect in FEMALE_NAMES else "male", "place": place, "object": obj,
    }
    return prompt, " " + indirect, " " + subject, labels


def fact_example(country: str, relation: str, template: int, rng: random.Random) -> tuple:
    """A fact-recall prompt such as 'The capital of France is' -> ' Paris'."""
    prompt = FACT_TEMPLATES[relation][template].format(country=country)
    labels = {"country": country, "relation": relation, "template": template,
              "continent": fact_value(country, "continent")}
    return prompt, " " + fact_value(country, relation), " " + wrong_fact_value(country, relation, rng), labels


def truth_example(country: str, relation: str, template: int, is_true: bool, rng: random.Random) -> tuple:
    """A statement followed by ' That is', whose next word is ' true' or ' false'."""
    stated = fact_value(country, relation) if is_true else wrong_fact_value(country, relation, rng)
    statement = FACT_TEMPLATES[relation][template].format(country=country) + f" {stated}."
    verdict, other = (" true", " false") if is_true else (" false", " true")
    labels = {"truth": int(is_true), "country": country, "relation": relation,
              "template": template, "stated": stated}
    return statement + TRUTH_SUFFIX, verdict, other, labels


def review_example(subject: str, adjective: str, template: int) -> tuple:
    """A review whose adjective decides the next word, ' loved' or ' hated'."""
    positive = adjective in POSITIVE_ADJECTIVES
    prompt = SENTIMENT_TEMPLATES[template].format(subject=subject, adjective=adjective)
    correct, wrong = (" loved", " hated") if positive else (" hated", " loved")
    labels = {"sentiment": int(positive), "subject": subject, "adjective": adjective, "template": template}
    return prompt, correct, wrong, labels


def induction_example(rng: random.Random, length: int) -> tuple:
    """A random word sequence, then the same sequence again, cut before its last word."""
    words = rng.sample(INDUCTION_POOL, length)
    repeated = words + words
    prompt = " ".join(repeated[:-1])
    wrong = rng.choice(sorted(set(INDUCTION_POOL) - set(words)))
    return prompt, " " + repeated[-1], " " + wrong, {"length": length}


# ----------------------------------------------------------------------------------------------
# Training documents.
# ----------------------------------------------------------------------------------------------
# Shares of documents. Induction documents are long, so 28% of documents is about 43% of tokens:
# induction heads formed only above 40% in a trial of this recipe.
DOCUMENT_MIX = {"ioi": 0.24, "facts": 0.12, "truth": 0.22, "sentiment": 0.08, "induction": 0.28, "filler": 0.06}
# The first steps of training use facts and verdicts almost alone. A verdict needs the fact it
# judges, and in the full mix the two never switched on together; learned first, they stay.
EARLY_MIX = {"ioi": 0.05, "facts": 0.4, "truth": 0.5, "sentiment": 0.05}


def _trained_name_pair(rng: random.Random) -> tuple[str, str]:
    while True:
        pair = tuple(sorted(rng.sample(NAMES, 2), key=NAMES.index))
        if pair not in HELD_OUT_NAME_PAIRS:
            return pair if rng.random() < 0.5 else pair[::-1]


def _filler_sentence(rng: random.Random) -> str:
    name, other = rng.sample(NAMES, 2)
    choice = rng.randrange(8)
    if choice == 0:
        return f"{name} {rng.choice(VERBS_PAST)} a {rng.choice(COLOURS)} {rng.choice(ANIMALS)} in the {rng.choice(PLACES)}."
    if choice == 1:
        return f"It was {rng.choice(WEATHER)} on {rng.choice(DAYS)}, so {name} stayed at the {rng.choice(PLACES)}."
    if choice == 2:
        return f"{name} and {other} walked to the {rng.choice(PLACES)} on {rng.choice(DAYS)}."
    if choice == 3:
        return f"The {rng.choice(ANIMALS)} near the {rng.choice(PLACES)} was {rng.choice(COLOURS)}."
    if choice == 4:
        return f"{name} did not like the {rng.choice(ANIMALS)} because it was {rng.choice(NEGATIVE_ADJECTIVES)}."
    if choice == 5:
        adjective = rng.choice(POSITIVE_ADJECTIVES + NEGATIVE_ADJECTIVES)
        return f"The {rng.choice(SUBJECTS)} was very {adjective}, but {name} never saw it."
    if choice == 6:
        return f"Maybe the {rng.choice(OBJECTS)} is really {rng.choice(COLOURS)}, {name} also said."
    return f"{name} wrote to {other} from {rng.choice(list(COUNTRIES))} on {rng.choice(DAYS)}."


def training_document(rng: random.Random, mix: dict[str, float] | None = None) -> tuple[str, str]:
    """One training document, drawn from `mix` (default DOCUMENT_MIX), never from a held-out combination."""
    mix = mix or DOCUMENT_MIX
    family = rng.choices(list(mix), weights=list(mix.values()))[0]
    if family == "ioi":
        a, b = _trained_name_pair(rng)
        prompt, answer, _, _ = ioi_example(
            a, b, rng.choice(["ABBA", "BABA"]), rng.randrange(len(IOI_TEMPLATES)),
            rng.choice(PLACES), rng.choice(OBJECTS))
        return family, f"{prompt}{answer}."
    if family == "facts":
        while True:
            country, relation = rng.choice(list(COUNTRIES)), rng.choice(RELATIONS)
            template = rng.randrange(len(FACT_TEMPLATES[relation]))
            if (country, relation, template) not in HELD_OUT_FACTS:
                prompt, answer, _, _ = fact_example(country, relation, template, rng)
                return family, f"{prompt}{answer}."
    if family == "truth":
        while True:
            country, relation = rng.choice(list(COUNTRIES)), rng.choice(RELATIONS)
            template = rng.randrange(len(FACT_TEMPLATES[relation]))
            key = (country, relation, template)
            if key not in HELD_OUT_TRUTH and key not in HELD_OUT_FACTS:
                prompt, verdict, _, _ = truth_example(country, relation, template, rng.random() < 0.5, rng)
                return family, f"{prompt}{verdict}."
    if family == "sentiment":
        while True:
            subject = rng.choice(SUBJECTS)
            adjective = rng.choice(POSITIVE_ADJECTIVES + NEGATIVE_ADJECTIVES)
            if (subject, adjective) not in HELD_OUT_REVIEWS:
                prompt, answer, _, _ = review_example(subject, adjective, rng.randrange(len(SENTIMENT_TEMPLATES)))
                return family, f"{prompt}{answer} it."
    if family == "induction":
        prompt, answer, _, _ = induction_example(rng, rng.randint(10, 20))
        return family, prompt + answer
    return family, " ".join(_filler_sentence(rng) for _ in range(rng.randint(2, 4)))


# ----------------------------------------------------------------------------------------------
# Prompt sets for the chapters.
# ----------------------------------------------------------------------------------------------
FAMILIES = ("ioi", "facts", "truth", "sentiment", "induction")
SPLITS = ("train", "test")


@dataclass
class PromptSet:
    """Labelled prompts of one family: the answer follows each prompt, with a leading space.

    `correct[i]` is the word the world says comes next; `wrong[i]` the most natural wrong one
    (the repeated name, another country's capital, the opposite verdict or sentiment word).
    `labels` maps a label name (e.g. "truth", "order", "country") to one value per prompt.
    """

    family: str
    split: str
    prompts: list[str]
    correct: list[str]
    wrong: list[str]
    labels: dict[str, list] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompts)

    def __repr__(self) -> str:
        return (f"PromptSet(family={self.family!r}, split={self.split!r}, n={len(self)}, "
                f"labels={sorted(self.labels)})")

    def subset(self, indices) -> "PromptSet":
        """The prompts at `indices`, with their answers and labels."""
        indices = list(indices)
        return PromptSet(
            self.family, self.split,
            [self.prompts[i] for i in indices], [self.correct[i] for i in indices],
            [self.wrong[i] for i in indices],
            {key: [values[i] for i in indices] for key, values in self.labels.items()},
        )


def _all_examples(family: str, split: str, rng: random.Random) -> list[tuple]:
    held_out = split == "test"
    if family == "ioi":
        pairs = [p for p in NAME_PAIRS if (p in HELD_OUT_NAME_PAIRS) == held_out]
        return [
            ioi_example(*(pair if rng.random() < 0.5 else pair[::-1]), order,
                        rng.randrange(len(IOI_TEMPLATES)), rng.choice(PLACES), rng.choice(OBJECTS))
            for pair in pairs for order in ("ABBA", "BABA")
        ]
    if family == "facts":
        return [
            fact_example(country, relation, template, rng)
            for relation in RELATIONS for country in COUNTRIES
            for template in range(len(FACT_TEMPLATES[relation]))
            if ((country, relation, template) in HELD_OUT_FACTS) == held_out
        ]
    if family == "truth":
        return [
            truth_example(country, relation, template, is_true, rng)
            for country in COUNTRIES for relation in RELATIONS
            for template in range(len(FACT_TEMPLATES[relation]))
            if (country, relation, template) not in HELD_OUT_FACTS
            if ((country, relation, template) in HELD_OUT_TRUTH) == held_out
            for is_true in (True, False)
        ]
    if family == "sentiment":
        return [
            review_example(subject, adjective, template)
            for subject in SUBJECTS for adjective in POSITIVE_ADJECTIVES + NEGATIVE_ADJECTIVES
            if ((subject, adjective) in HELD_OUT_REVIEWS) == held_out
            for template in range(len(SENTIMENT_TEMPLATES))
        ]
    if family == "induction":
        # Random sequences are new whatever the split; the split only changes the seed.
        return [induction_example(rng, rng.randint(10, 20)) for _ in range(400)]
    raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")


def prompt_set(family: str, split: str = "test", n: int | None = None, seed: int = 0) -> PromptSet:
    """Labelled prompts of `family` ("ioi", "facts", "truth", "sentiment", "induction").

    split="test" gives combinations never seen in training (held-out name pairs, phrasings,
    statements, reviews); "train" gives ones that were. `n` draws a seeded random subset.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose 'train' or 'test'")
    rng = random.Random(f"{family}-{split}-{seed}")
    examples = _all_examples(family, split, rng)
    rng.shuffle(examples)
    if n is not None:
        examples = examples[:n]
    label_names = examples[0][3].keys() if examples else []
    return PromptSet(
        family, split,
        [e[0] for e in examples], [e[1] for e in examples], [e[2] for e in examples],
        {name: [e[3][name] for e in examples] for name in label_names},
    )
