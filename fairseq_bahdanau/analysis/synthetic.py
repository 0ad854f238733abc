"""A small synthetic parallel corpus with word reordering, for the demo and the tests (no download needed).

Source sentences ("src") are phrases ``[adjective] noun`` followed by a verb, in a verb-final order; target
sentences ("tgt") translate every word through a fixed lexicon, move the verb to the front and put adjectives
after their noun:

    src: kalo bemu tirado suna        (adj noun noun verb)
    tgt: VERB-suna NOUN-bemu ADJ-kalo NOUN-tirado   (rendered with pseudo-words, see ``Lexicon``)

A model must attend to the last source word for the first target word and swap every adjective-noun pair, so
the task cannot be solved without reordering, and a model that has not learnt it scores near zero BLEU.

Command line: ``python -m fairseq_bahdanau.analysis.synthetic OUT_DIR [--train N --valid N --test N --seed S
--max-phrases K]`` writes ``{train,valid,test}.{src,tgt}``.
"""

import argparse
import os
import random
from typing import List, Tuple

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def _pseudo_words(rng: random.Random, count: int, syllables: Tuple[int, int]) -> List[str]:
    words: List[str] = []
    seen = set()
    while len(words) < count:
        word = "".join(
            rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(rng.randint(*syllables))
        )
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


class Lexicon:
    """Source and target vocabularies of adjectives, nouns and verbs, and the word-for-word translation."""

    def __init__(self, seed: int = 1, adjectives: int = 12, nouns: int = 24, verbs: int = 8) -> None:
        rng = random.Random(seed)
        sizes = {"adj": adjectives, "noun": nouns, "verb": verbs}
        words = _pseudo_words(rng, 2 * sum(sizes.values()), (2, 3))
        self.source = {}
        self.target = {}
        start = 0
        for kind, size in sizes.items():
            self.source[kind] = words[start : start + size]
            self.target[kind] = [w.upper() for w in words[start + size : start + 2 * size]]
            start += 2 * size
        self.translate = {
            src: tgt for kind in sizes for src, tgt in zip(self.source[kind], self.target[kind])
        }

    def sentence_pair(self, rng: random.Random, max_phrases: int = 4) -> Tuple[str, str]:
        phrases = []
        for _ in range(rng.randint(1, max_phrases)):
            noun = rng.choice(self.source["noun"])
            adjective = rng.choice(self.source["adj"]) if rng.random() < 0.6 else None
            phrases.append((adjective, noun))
        verb = rng.choice(self.source["verb"])
        src = [w for adjective, noun in phrases for w in ([adjective] if adjective else []) + [noun]] + [verb]
        tgt = [self.translate[verb]]
        for adjective, noun in phrases:
            tgt.append(self.translate[noun])
            if adjective:
                tgt.append(self.translate[adjective])
        return " ".join(src), " ".join(tgt)


def write_corpus(out_dir: str, train: int = 4000, valid: int = 200, test: int = 200, seed: int = 1,
                 max_phrases: int = 4) -> None:
    """Write ``{train,valid,test}.{src,tgt}`` under ``out_dir`` (deterministic for a seed). Sentences have 1 to
    ``max_phrases`` noun phrases (1 to 2 words each) and a verb: up to ``2 * max_phrases + 1`` words."""
    os.makedirs(out_dir, exist_ok=True)
    lexicon = Lexicon(seed)
    rng = random.Random(seed + 1)
    for split, size in (("train", train), ("valid", valid), ("test", test)):
        pairs = [lexicon.sentence_pair(rng, max_phrases) for _ in range(size)]
        for side, index in (("src", 0), ("tgt", 1)):
            with open(os.path.join(out_dir, f"{split}.{side}"), "w", encoding="utf-8") as f:
                f.writelines(pair[index] + "\n" for pair in pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--valid", type=int, default=200)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-phrases", type=int, default=4,
                        help="noun phrases per sentence at most (sentences of up to 2 x this + 1 words)")
    args = parser.parse_args()
    write_corpus(args.out_dir, args.train, args.valid, args.test, args.seed, args.max_phrases)


if __name__ == "__main__":
    main()
