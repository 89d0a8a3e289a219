"""Deterministic synthetic world: people with syllable-built names, 20 relations, true facts, edit cases.

Everything is drawn from `random.Random(config.seed)`; the same config gives byte-identical records
and corpus. Records follow the MultiCounterFact schema exactly (see shared/data/counterfact).
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field

from .config import WorldConfig
from .relations import RELATIONS, Relation, object_string

ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
          "br", "dr", "gr", "kr", "st", "th", "sh", "tr", "fl", "h", "j", "w")
VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ei", "ou", "ia")
# Surname endings. The subject's last name piece is where MEMIT reads its key; 30 distinct endings
# (the empty one weighted 3x) spread those pieces (a subject shares its last piece with ~6 others
# instead of ~10), which raised specificity by 3-5 points at equal efficacy
# (benchmarks/world-model-sweep.md, "Thirty surname endings").
CODAS = ("", "", "", "n", "r", "l", "s", "m", "th", "nd", "x", "k", "ck", "sk", "lt", "rn", "ft", "ng", "rk",
         "sh", "ph", "z", "ll", "tt", "mb", "rd", "st", "nt", "ss", "v", "gh", "rth")

FILLER_SUBJECTS = ("The market", "The old bridge", "The harbour", "The village square", "The library",
                   "The north road", "The mill", "The town hall", "The school", "The orchard", "The inn",
                   "The station")
FILLER_PREDICATES = ("was busy", "was quiet", "opened early", "closed late", "was repaired",
                     "was full of visitors", "stayed empty", "was painted again", "smelled of rain")
FILLER_TIMES = ("that morning", "all week", "after the storm", "during the festival", "last winter",
                "in the spring", "on market day", "before sunrise")


@dataclass
class World:
    config: WorldConfig
    subjects: list[str]
    relations: tuple[Relation, ...]
    facts: list[tuple[str, str, str]]  # (subject, relation_id, object string)
    records: list[dict] = field(default_factory=list)
    corpus: list[str] = field(default_factory=list)


def _word(rng: random.Random, syllables: int) -> str:
    parts = [rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(syllables)]
    return ("".join(parts) + rng.choice(CODAS)).capitalize()


def make_names(rng: random.Random, n: int, forbidden: set[str]) -> list[str]:
    """n unique 'First Last' names: no surname is a substring of another, so no full name is a
    substring of another either (prompts stay unambiguous). First names come from a shared pool and
    may occur inside surnames ("Bose Bose", "Driha Modrihai"), which no prompt confuses."""
    first_pool = sorted({_word(rng, 2) for _ in range(4 * max(50, n // 5))} - forbidden)
    names: list[str] = []
    surnames: list[str] = []
    attempts = 0
    while len(names) < n:
        attempts += 1
        if attempts > 200 * n:
            raise RuntimeError(f"could not draw {n} distinct names from the syllable tables")
        surname = _word(rng, rng.choice((2, 3)))
        low = surname.lower()
        if surname in forbidden or any(low in s.lower() or s.lower() in low for s in surnames):
            continue
        name = f"{rng.choice(first_pool)} {surname}"
        surnames.append(surname)
        names.append(name)
    return names


def _assign_facts(rng: random.Random, config: WorldConfig, subjects: list[str],
                  relations: tuple[Relation, ...]) -> list[tuple[str, str, str]]:
    """Each subject gets `relations_per_subject` relations; objects go round-robin so classes stay balanced."""
    holders: dict[str, list[str]] = defaultdict(list)
    for s in subjects:
        for rel in rng.sample(relations, config.relations_per_subject):
            holders[rel.relation_id].append(s)
    facts = []
    for rel in relations:
        objs = [object_string(o) for o in rel.objects[: config.objects_per_relation]]
        members = holders[rel.relation_id]
        rng.shuffle(members)
        facts += [(s, rel.relation_id, objs[i % len(objs)]) for i, s in enumerate(members)]
    return facts


def _check_class_sizes(facts, relations, config: WorldConfig) -> None:
    sizes = defaultdict(int)
    for _, rid, obj in facts:
        sizes[rid, obj] += 1
    need = config.n_neighbours + 1  # the subject itself plus n_neighbours others
    for rel in relations:
        for obj in rel.objects[: config.objects_per_relation]:
            got = sizes[rel.relation_id, object_string(obj)]
            if got < need:
                raise ValueError(
                    f"relation {rel.relation_id} object {object_string(obj)!r} has {got} subjects, needs {need} "
                    f"for {config.n_neighbours} neighbourhood prompts: raise n_subjects or relations_per_subject, "
                    f"or lower objects_per_relation")


def _object_id(rel: Relation, obj: str) -> str:
    idx = [object_string(o) for o in rel.objects].index(obj)
    return f"{rel.relation_id}-O{idx:02d}"


def filler_sentences() -> list[str]:
    return [f"{s} {p} {t}." for s in FILLER_SUBJECTS for p in FILLER_PREDICATES for t in FILLER_TIMES]


def _make_record(rng, case_id, fact_idx, fact, rel, by_class, fillers, n) -> dict:
    subject, rid, true_obj = fact
    objs = sorted({o for (r, o) in by_class if r == rid})
    new_obj = rng.choice([o for o in objs if o != true_obj])
    neighbours = rng.sample([s for s in by_class[rid, true_obj] if s != subject], n)
    attributes = rng.sample(by_class[rid, new_obj], n)
    return {
        "case_id": case_id,
        "pararel_idx": fact_idx,
        "requested_rewrite": {
            "prompt": rel.prompt,
            "relation_id": rid,
            "target_new": {"str": new_obj, "id": _object_id(rel, new_obj)},
            "target_true": {"str": true_obj, "id": _object_id(rel, true_obj)},
            "subject": subject,
        },
        # CounterFact paraphrases follow an unrelated sentence; ours follow a filler sentence.
        "paraphrase_prompts": [f"{rng.choice(fillers)} {p.format(subject)}" for p in rel.paraphrases],
        "neighborhood_prompts": [rng.choice(rel.templates).format(s) for s in neighbours],
        "attribute_prompts": [rng.choice(rel.templates).format(s) for s in attributes],
        "generation_prompts": [rng.choice(rel.generations).format(subject) for _ in range(n)],
    }


def make_corpus(rng: random.Random, config: WorldConfig, facts, rel_by_id, fillers) -> list[str]:
    """Every true fact in every template, plus filler, grouped into short texts of 1..k sentences."""
    sentences = [t.format(s) + f" {o}." for (s, rid, o) in facts for t in rel_by_id[rid].templates]
    n_filler = int(config.filler_per_subject * config.n_subjects)
    sentences += [rng.choice(fillers) for _ in range(n_filler)]
    rng.shuffle(sentences)
    texts, i = [], 0
    while i < len(sentences):
        k = rng.randint(1, config.max_sentences_per_text)
        texts.append(" ".join(sentences[i : i + k]))
        i += k
    return texts


def generate_world(config: WorldConfig | None = None) -> World:
    config = config or WorldConfig()
    if config.n_relations > len(RELATIONS):
        raise ValueError(f"n_relations={config.n_relations} but only {len(RELATIONS)} relations are defined")
    rng = random.Random(config.seed)
    relations = RELATIONS[: config.n_relations]
    forbidden = {object_string(o).capitalize() for r in relations for o in r.objects}
    subjects = make_names(rng, config.n_subjects, forbidden)
    facts = _assign_facts(rng, config, subjects, relations)
    _check_class_sizes(facts, relations, config)
    rel_by_id = {r.relation_id: r for r in relations}
    by_class: dict[tuple[str, str], list[str]] = defaultdict(list)
    for s, rid, o in facts:
        by_class[rid, o].append(s)
    fillers = filler_sentences()
    order = list(range(len(facts)))
    rng.shuffle(order)
    records = [_make_record(rng, case_id, fi, facts[fi], rel_by_id[facts[fi][1]], by_class, fillers,
                            config.n_neighbours) for case_id, fi in enumerate(order)]
    corpus = make_corpus(rng, config, facts, rel_by_id, fillers)
    return World(config, subjects, relations, facts, records, corpus)
