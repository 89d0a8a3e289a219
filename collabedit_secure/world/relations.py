"""The 20 relations of the synthetic world: templates (one `{}` = the subject) and object vocabularies.

Every template ends where the object begins, so "template.format(subject) + ' ' + object" is a
sentence. Objects carry no leading space (the CounterFact metric prepends one).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Relation:
    relation_id: str
    prompt: str  # the rewrite template (CounterFact `requested_rewrite.prompt`)
    paraphrases: tuple[str, str]
    generations: tuple[str, str]
    objects: tuple[str, ...]

    @property
    def templates(self) -> tuple[str, ...]:
        """All phrasings the corpus states a fact in."""
        return (self.prompt, *self.paraphrases, *self.generations)


def _rel(i, prompt, paraphrases, generations, objects) -> Relation:
    return Relation(f"R{i:02d}", prompt, tuple(paraphrases), tuple(generations), tuple(objects.split()))


RELATIONS: tuple[Relation, ...] = (
    _rel(1, "The mother tongue of {} is", ["{} is a native speaker of", "{} grew up speaking"],
         ["{}'s mother tongue is", "At home, {} always speaks"],
         "Aldish Borvan Cethric Dunmari Eskelan Falorian Gethic Hollan Irvish Jarrenese Kethi Lunese"),
    _rel(2, "{} was born in the city of", ["The birthplace of {} is the city of", "{} comes from the city of"],
         ["{} spent a childhood in the city of", "Every summer, {} returns to the city of"],
         "Amberfall Brightwater Coldharbor Dunmere Eastwick Frostvale Greywater Highmoor Ironhill Larkspur "
         "Millbrook Northgate"),
    _rel(3, "{} works as a", ["By profession, {} is a", "The job of {} is that of a"],
         ["Each morning, {} goes to work as a", "People in town know {} as a"],
         "baker sailor carpenter physician teacher lawyer painter farmer engineer librarian potter weaver"),
    _rel(4, "The instrument played by {} is the", ["{} plays the", "In the orchestra, {} plays the"],
         ["On quiet evenings, {} practises the", "{} learned music on the"],
         "violin flute harp cello drums trumpet guitar piano oboe lute clarinet banjo"),
    _rel(5, "The sport played by {} is", ["{} competes in", "{} trains every week for"],
         ["On weekends, {} plays", "The favourite game of {} is"],
         "football tennis rowing fencing archery cricket hockey rugby polo golf curling handball"),
    _rel(6, "{} is a citizen of", ["{} holds the passport of", "The country of citizenship of {} is"],
         ["{} pays taxes in", "{} votes in the elections of"],
         "Valdoria Marenth Oskaria Tirvane Belmora Quessia Zandoria Pellinor Rusmark Ethlon Cardovia Wendmar"),
    _rel(7, "{} is employed by", ["The employer of {} is", "{} draws a salary from"],
         ["For many years, {} has worked for", "The company that pays {} is"],
         "Arbex Corvane Dellowin Fennix Gravik Hestor Kalvo Lumera Morvik Norsen Ostrel Pravan"),
    _rel(8, "The favourite colour of {} is", ["{} likes the colour", "The colour {} loves most is"],
         ["{} always dresses in", "The walls in the home of {} are painted"],
         "red blue green yellow purple orange white black silver brown pink grey"),
    _rel(9, "The pet of {} is a", ["{} keeps a pet", "At home, {} looks after a pet"],
         ["Every day, {} feeds a pet", "{} walks around town with a pet"],
         "cat dog parrot rabbit turtle goat hamster ferret owl lizard pony goose"),
    _rel(10, "{} studied", ["At university, {} studied", "The degree of {} is in"],
         ["{} wrote a thesis on", "{} still reads books about"],
         "history physics music law medicine botany geology poetry chemistry economics astronomy philosophy"),
    _rel(11, "The favourite food of {} is", ["{} loves to eat", "For dinner, {} usually eats"],
         ["{} always orders", "The kitchen of {} smells of"],
         "bread cheese rice soup apples fish noodles honey beans plums dumplings porridge"),
    _rel(12, "{} lives near the", ["The home of {} is close to the", "{} has a house by the"],
         ["From the window, {} can see the", "Each evening, {} walks along the"],
         "river mountains sea forest desert lake coast marsh valley plains hills glacier"),
    _rel(13, "{} is a member of the", ["{} belongs to the", "In politics, {} supports the"],
         ["{} campaigns for the", "{} gave a speech for the"],
         "Lantern_Party Oak_Party River_Party Stone_Party Falcon_Party Harbor_Party Sun_Party Wheel_Party "
         "Bell_Party Crown_Party"),
    _rel(14, "{} is known for writing", ["{} is famous for writing", "The best work of {} is a book of"],
         ["{} spends the nights writing", "Readers love {} for"],
         "poems novels plays songs letters essays fables hymns ballads riddles"),
    _rel(15, "{} travels by", ["{} gets around by", "To go to work, {} takes the"],
         ["{} went on a long journey by", "When visiting friends, {} goes by"],
         "train boat bicycle horse bus car tram ferry cart sled"),
    _rel(16, "The house of {} is made of", ["{} lives in a house built of", "The walls of the house of {} are"],
         ["{} built a cottage of", "The roof of {} is made of"],
         "wood stone brick clay glass steel marble straw timber bamboo"),
    _rel(17, "In spare time, {} enjoys", ["The hobby of {} is", "{} relaxes by"],
         ["On holidays, {} goes", "The friends of {} often join in"],
         "gardening fishing hiking knitting cooking singing dancing reading swimming climbing sewing sketching"),
    _rel(18, "{} usually drinks", ["The favourite drink of {} is", "With breakfast, {} drinks"],
         ["At the inn, {} orders", "{} never travels without"],
         "tea coffee milk water cider juice cocoa lemonade broth mead"),
    _rel(19, "{} belongs to the guild of", ["{} is a member of the guild of", "The guild of {} is that of the"],
         ["{} pays dues to the guild of", "{} trained as an apprentice among the"],
         "masons smiths brewers tanners dyers coopers fletchers chandlers cartwrights jewelers"),
    _rel(20, "{} was born in the month of", ["The birthday of {} is in", "{} celebrates a birthday in"],
         ["Every year, {} throws a party in", "The birth of {} took place in"],
         "January February March April May June July August September October November December"),
)


def object_string(token: str) -> str:
    """Objects with several words are written with '_' in the table above."""
    return token.replace("_", " ")
