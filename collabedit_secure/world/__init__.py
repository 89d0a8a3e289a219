"""The embedded default: a synthetic world and a small GPT-2 that knows it.

No model can be downloaded here, so the project generates one. One build of it ships inside the
package (reference/, checked by sha256 on load; see reference.py), so every machine edits the same
weights and nothing trains before a first run. `collabedit world build --train` trains it again
from scratch (minutes on two CPU cores), cached under $COLLABEDIT_CACHE or ~/.cache/collabedit_secure.

The default world (WorldConfig()):
- 1,000 people with syllable-built two-word names (e.g. "Koro Potrer"); no surname, and so no full
  name, is a substring of another;
- 20 relations R01..R20, each with a rewrite template, two paraphrases and two generation templates:
  mother tongue, birth city, profession, instrument, sport, citizenship, employer, favourite colour,
  pet, field of study, favourite food, landscape lived near, political party, kind of writing, means
  of travel, house material, hobby, usual drink, guild, birth month;
- 10-12 objects per relation (invented languages, cities, countries and companies; ordinary words
  otherwise), 5 relations per person: 5,000 true facts, every (relation, object) held by 18-26 people
  (generation checks at least n_neighbours + 1);
- 5,000 edit cases in the MultiCounterFact schema (1 rewrite prompt, 2 paraphrases after a filler
  sentence, 10 neighbourhood, 10 attribute and 10 generation prompts, target_new from the same
  relation);
- a corpus stating every fact in all five templates plus filler sentences (about 12.6k texts, 385k
  tokens), used to train the model and as the public corpus for the covariance C0;
- a byte-level BPE tokenizer (GPT-2 conventions: no BOS, leading-space word tokens, eos = pad =
  "<|endoftext|>"; 1,200 entries, so names split into syllable pieces as real tokenizers split rare
  names, e.g. " W" "og" "aind");
- a GPT2LMHeadModel (6 layers, n_embd 256, 4 heads, n_inner 1024, 128 positions, tied embeddings,
  about 5.1M parameters), trained with the object tokens of fact sentences weighted 5x, until >= 95%
  of rewrite, paraphrase and neighbourhood prompts prefer the true object to target_new under the
  CounterFact per-token NLL rule (checked after every epoch on 200 records, then on 1,000 in
  float32). Where the CPU multiplies bfloat16 natively (AVX512-BF16 or AMX) the matmuls run in
  bfloat16 (float32 weights): 6 epochs, 6.5-13 minutes on 2 cores by machine; elsewhere in float32, since
  emulated bfloat16 is slower (about 20x on AVX2-only CPUs). The two precisions train different models, cached apart.

Entry points: `load_default()` (the shipped build; with a config, trained and cached), `build_world(out_dir, config)`, `open_or_build(out_dir)`,
`WorldConfig`, `tiny_config()`.
"""

from .cache import WorldBundle, build_world, default_cache_root, load_default, open_or_build, verify_bundle
from .config import BUILD_VERSION, WorldConfig, tiny_config
from .generator import World, generate_world

__all__ = ["BUILD_VERSION", "World", "WorldBundle", "WorldConfig", "build_world", "default_cache_root",
           "generate_world", "load_default", "open_or_build", "tiny_config", "verify_bundle"]
