"""Write the recipes' small synthetic data sets, deterministically.

Only the SMS spam recipe has real data (examples/spam-classification/). The other six case
studies of OpenAI's legacy fine-tuning guide have no public data set we may ship, so their
files are generated here from hand-written templates with a fixed seed: running this script
again rewrites exactly the committed bytes (tests/recipes/test_data.py checks that). Every
name, company, product and address in them is invented.

    .venv/bin/python examples/synthetic.py          # rewrite the six files
    .venv/bin/python examples/synthetic.py --check  # exit 1 if a committed file differs
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 7


def jsonl(rows: list[dict[str, object]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def csv_text(rows: list[dict[str, str]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["prompt", "completion"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def unique(make: Callable[[random.Random], dict[str, str]], n: int, rng: random.Random) -> list:
    """n rows from `make`, skipping repeats, so prepare_data finds no duplicates."""
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    for _ in range(n * 50):
        row = make(rng)
        key = json.dumps(row, sort_keys=True)
        if key not in seen:
            seen.add(key)
            rows.append(row)
            if len(rows) == n:
                return rows
    raise RuntimeError(f"only {len(rows)} distinct rows; add templates")


# --- sentiment: tweets labelled positive / negative (CSV, raw labels) -----------------------

SUBJECTS = [
    "the new phone update",
    "my flight to Denver",
    "the coffee at Maple Street Cafe",
    "last night's season finale",
    "the support team at my bank",
    "the concert at the Riverside Arena",
    "my new running jacket",
    "the 8:15 train",
    "the hotel breakfast",
    "the latest Lumen Audio album",
    "the pizza place on 5th",
    "my online grocery order",
    "the city marathon",
    "the new library app",
    "this week's software release",
]
POSITIVE = [
    "Absolutely loved {s}!",
    "{S} made my whole week, thank you",
    "Can't stop smiling about {s}",
    "{S} was even better than I expected. Highly recommend",
    "Big thanks to everyone behind {s}, flawless from start to finish",
    "Honestly {s} is the best thing that happened to me today",
    "Wow, {s} just works. So happy with it",
    "{S} exceeded every expectation #winning",
    "Five stars for {s}, would do it again tomorrow",
    "Shoutout to {s} for turning a rough morning around",
]
NEGATIVE = [
    "{S} was a complete waste of money.",
    "Never again. {S} ruined my evening",
    "Still waiting on a refund for {s}. Terrible",
    "Why is {s} always this slow? So annoyed",
    "{S} broke after one day, really disappointed",
    "Worst experience ever with {s} #fail",
    "I regret paying for {s}, what a letdown",
    "{S} was cold, late and overpriced",
    "Two hours on hold about {s} and nobody cares",
    "Can someone explain how {s} got this bad?",
]


def sentiment(rng: random.Random) -> str:
    def make(r: random.Random) -> dict[str, str]:
        label = r.choice(["positive", "negative"])
        template = r.choice(POSITIVE if label == "positive" else NEGATIVE)
        subject = r.choice(SUBJECTS)
        text = template.format(s=subject, S=subject[0].upper() + subject[1:])
        if r.random() < 0.3:
            text = f"@{r.choice(['lumenaudio', 'maplecafe', 'citytransit', 'northwind'])} {text}"
        return {"prompt": text, "completion": label}

    return csv_text(unique(make, 100, rng))


# --- email triage: four categories, one word each --------------------------------------------

NAMES = [
    "Ana Silva",
    "Ben Carter",
    "Chloe Martin",
    "Dev Patel",
    "Elena Rossi",
    "Farid Haddad",
    "Grace Kim",
    "Hugo Lefebvre",
    "Ines Moreau",
    "Jonas Berg",
    "Kemi Adeyemi",
    "Liam O'Neill",
]
EMAILS: dict[str, list[tuple[str, str]]] = {
    "billing": [
        ("Charged twice this month", "I was charged twice for my {plan} subscription in {month}."),
        ("Invoice {n} looks wrong", "Invoice {n} shows {amount} but my plan costs less."),
        ("Refund request", "Please refund the {amount} taken after I cancelled in {month}."),
        ("Update my card", "My card expired; how do I update the payment details?"),
        ("VAT number missing", "Could you add our VAT number to invoice {n}?"),
    ],
    "technical": [
        ("App crashes on start", "Since the last update the app closes as soon as I open it."),
        ("Cannot log in", "I reset my password twice and still get 'invalid credentials'."),
        ("Sync stopped working", "My files have not synced since {month}; the icon stays grey."),
        ("Error {n} on upload", "Uploading a file over 2 GB fails with error {n}."),
        ("API returns 500", "Our integration gets HTTP 500 from the export endpoint since Monday."),
    ],
    "sales": [
        ("Pricing for 50 seats", "We are a team of 50; do you offer volume pricing on {plan}?"),
        ("Demo request", "Could we book a demo of {plan} for our operations team?"),
        ("Upgrade options", "What do we get if we move from Basic to {plan}?"),
        ("Nonprofit discount", "We are a registered charity; is there a discount on {plan}?"),
        ("Annual contract", "Can we switch to an annual contract and pay by bank transfer?"),
    ],
    "shipping": [
        ("Where is order {n}?", "Order {n} was due on {day} {month} and has not arrived."),
        ("Wrong address", "I typed the wrong street on order {n}; can you change it?"),
        ("Damaged parcel", "The box for order {n} arrived crushed and the device is cracked."),
        ("Tracking not updating", "Tracking for order {n} has said 'in transit' for a week."),
        ("Express delivery", "Can order {n} still be upgraded to express delivery?"),
    ],
}
PLANS = ["Team", "Business", "Pro", "Enterprise"]
MONTHS = ["January", "February", "March", "April", "May", "June"]


def email_triage(rng: random.Random) -> str:
    def make(r: random.Random) -> dict[str, str]:
        category = r.choice(sorted(EMAILS))
        subject, body = r.choice(EMAILS[category])
        slots = {
            "plan": r.choice(PLANS),
            "month": r.choice(MONTHS),
            "n": str(r.randint(10000, 99999)),
            "amount": f"${r.randint(9, 499)}.{r.choice(['00', '50', '99'])}",
            "day": str(r.randint(1, 28)),
        }
        name = r.choice(NAMES)
        sign_off = r.choice(["Thanks", "Best regards", "Cheers", "Kind regards"])
        prompt = (
            f"Subject: {subject.format(**slots)}\nFrom: {name}\n"
            f"Date: 2024-{MONTHS.index(slots['month']) + 1:02d}-{slots['day']:0>2}\n"
            f"Content: {body.format(**slots)} {sign_off}, {name.split()[0]}"
        )
        return {"prompt": prompt, "completion": f" {category}"}

    return jsonl(unique(make, 100, rng))


# --- ad copy from a product description --------------------------------------------------------

# (name, kind, what it is, what it improves, its best feature)
PRODUCTS = [
    (
        "Aurora Desk Lamp",
        "lamp",
        "an LED desk lamp",
        "desk",
        "warm light for reading, cool for work",
    ),
    ("Trailblazer 30L", "backpack", "a waterproof hiking backpack", "hikes", "a hydration sleeve"),
    ("Brewmate Pro", "coffee grinder", "a burr coffee grinder", "mornings", "40 grind settings"),
    ("Silent Step", "treadmill", "a folding under-desk treadmill", "workdays", "a 45 dB motor"),
    ("Nimbus Pillow", "pillow", "a memory-foam pillow", "nights", "a cooling gel layer"),
    ("Pocket Chef", "knife set", "a five-piece knife set", "dinners", "a magnetic walnut block"),
    ("Echo Buds 2", "earbud", "a pair of wireless earbuds", "commute", "active noise cancelling"),
    (
        "Terra Planter",
        "planter",
        "a self-watering ceramic planter",
        "kitchen",
        "a two-week reservoir",
    ),
    ("Glide Board", "skateboard", "an electric skateboard", "rides", "a 20 km range"),
    ("Scribe Tablet", "notebook", "an e-ink note-taking tablet", "notes", "three weeks of battery"),
    ("Harbor Jacket", "jacket", "a recycled-down jacket", "trips", "a pocket it packs into"),
    ("Kettle One", "kettle", "a gooseneck kettle", "tea", "temperature control to the degree"),
]
AD_HOOKS = [
    "Meet {name}, {pitch} you will love.",
    "Upgrade your {use} with {name}.",
    "{name} is here, and your {use} will never be the same.",
    "Say hello to {name}.",
    "Tired of ordinary {kind}s? Try {name}.",
]
AD_BENEFITS = [
    "Its secret is {perk}",
    "Built to last, with {perk}",
    "Designed for real life, with {perk}",
    "Small price, big difference: {perk}",
]
AD_CALLS = [
    "Order today and get free shipping.",
    "Grab yours before they sell out!",
    "Try it risk-free for 30 days.",
    "Available now in three colours.",
    "Your future self will thank you!",
]


def ad_copy(rng: random.Random) -> str:
    def make(r: random.Random) -> dict[str, str]:
        name, kind, pitch, use, perk = r.choice(PRODUCTS)
        detail = r.choice(
            [
                "It ships with a two-year warranty.",
                "It weighs under a kilogram.",
                "It comes in recycled packaging.",
                "It was designed in Lisbon.",
                "It is sold online only.",
                "Warranty: 2 years",
                "Weight: 850 g",
            ]
        )
        prompt = f"{name}\n{name} is {pitch} with {perk}. {detail}\n\n###\n\n"
        slots = {"name": name, "kind": kind, "pitch": pitch, "use": use, "perk": perk}
        ad = " ".join(
            [
                r.choice(AD_HOOKS).format(**slots),
                r.choice(AD_BENEFITS).format(**slots) + ".",
                r.choice(AD_CALLS),
            ]
        )
        return {"prompt": prompt, "completion": f" {ad} END"}

    return jsonl(unique(make, 60, rng))


# --- entity extraction --------------------------------------------------------------------------

PEOPLE = [
    "Maria Lopez",
    "Tom Becker",
    "Aiko Tanaka",
    "Samuel Osei",
    "Priya Nair",
    "Lukas Novak",
    "Sofia Andersson",
    "Omar Khalil",
    "Rosa Jimenez",
    "Daniel Weiss",
]
ORGS = [
    "Northwind Bank",
    "Acme Robotics",
    "Bluefin Energy",
    "Helios Health",
    "Copperleaf Media",
    "Quantix Labs",
    "Riverside Council",
    "Stellar Freight",
]
PLACES = ["Lyon", "Porto", "Osaka", "Nairobi", "Calgary", "Gdansk", "Valencia", "Austin"]
ARTICLES = [
    "{p1} has been named chief executive of {o1}, the company said in {l1} on Tuesday.",
    "{o1} will open a new research centre in {l1}, according to {p1}.",
    "Speaking in {l1}, {p1} said {o1} and {o2} had agreed to merge.",
    "{p1} and {p2} founded {o1} in {l1} in 2015.",
    "{o1} reports record profits as {o2} cuts its forecast",
    "{p1} of {o1} met {p2} to discuss the port expansion in {l1}.",
    "Flooding closes roads across {l1} and {l2}",
    "{p1} won the regional chess title in {l1} after beating {p2}.",
    "{o1} moved its headquarters from {l1} to {l2}.",
    "Shares in {o1} rose after {p1} announced a deal with {o2}.",
]
# Slot prefixes in ARTICLES, in the order the completion lists them.
KINDS = {"p": "person", "o": "organization", "l": "location"}


def entity_extraction(rng: random.Random) -> str:
    def make(r: random.Random) -> dict[str, str]:
        template = r.choice(ARTICLES)
        people, orgs, places = r.sample(PEOPLE, 2), r.sample(ORGS, 2), r.sample(PLACES, 2)
        slots = {
            "p1": people[0],
            "p2": people[1],
            "o1": orgs[0],
            "o2": orgs[1],
            "l1": places[0],
            "l2": places[1],
        }
        lines = []
        for prefix, kind in KINDS.items():
            names = [v for k, v in slots.items() if k[0] == prefix and f"{{{k}}}" in template]
            if names:
                lines.append(f"{kind}: {', '.join(names)}")
        prompt = template.format(**slots) + "\n\n###\n\n"
        return {"prompt": prompt, "completion": " " + "\n".join(lines) + " END"}

    return jsonl(unique(make, 80, rng))


# --- support chatbot (chat messages) -------------------------------------------------------------

CUSTOMERS = [
    ("Ana", "Fiber 300", "NW-200"),
    ("Ben", "Fiber 1000", "NW-500"),
    ("Chloe", "Basic 50", "NW-100"),
    ("Dev", "Fiber 300", "NW-500"),
    ("Elena", "Basic 50", "NW-200"),
]
INTENTS: list[tuple[list[str], str]] = [
    (
        ["My internet is really slow today.", "Why is my connection so slow?"],
        "Sorry about that, {name}. Your {plan} line looks healthy from here, so please restart "
        "your {router}: unplug it for 30 seconds, then plug it back in.",
    ),
    (
        ["How do I reset my password?", "I forgot my account password."],
        "No problem, {name}. Open northwind.example/reset, enter your email and follow the link "
        "we send you; it is valid for one hour.",
    ),
    (
        ["What does my plan cost?", "How much am I paying per month?"],
        "You are on {plan}, {name}. Its monthly price is on the first page of your latest "
        "invoice under My account, Billing.",
    ),
    (
        ["I want to cancel my subscription.", "How can I end my contract?"],
        "I am sorry to see you go, {name}. You can cancel {plan} under My account, Plan, Cancel; "
        "the service runs until the end of the billing month.",
    ),
    (
        ["The light on my router is red.", "My router shows a blinking red light."],
        "A red light on the {router} means it has no signal, {name}. Check that the grey fibre "
        "cable is clicked in firmly; if it stays red, I will book a technician.",
    ),
    (
        ["Can I upgrade to a faster plan?", "Is there anything faster than what I have?"],
        "Yes, {name}. From {plan} you can move up today under My account, Plan, Change; "
        "the new speed is active within an hour.",
    ),
]
SYSTEM = (
    "You are the support assistant of Northwind Internet. Answer in one or two friendly "
    "sentences. Customer: {name}. Plan: {plan}. Router: {router}."
)


def support_chatbot(rng: random.Random) -> str:
    def make(r: random.Random) -> dict[str, object]:
        name, plan, router = r.choice(CUSTOMERS)
        slots = {"name": name, "plan": plan, "router": router}
        messages = [{"role": "system", "content": SYSTEM.format(**slots)}]
        for questions, answer in r.sample(INTENTS, r.choice([1, 1, 2])):
            greeting = r.choice(["", "Hi, ", "Hello, "])
            question = r.choice(questions)
            if greeting and not question.startswith("I "):
                question = greeting + question[0].lower() + question[1:]
            elif greeting:
                question = greeting + question
            messages.append({"role": "user", "content": question})
            messages.append({"role": "assistant", "content": answer.format(**slots)})
        return {"messages": messages}

    return jsonl(unique(make, 60, rng))


# --- product descriptions from attributes (CSV, raw) ------------------------------------------

ITEMS = [
    ("handbag", "leather"),
    ("backpack", "canvas"),
    ("scarf", "wool"),
    ("sneakers", "mesh"),
    ("watch", "steel"),
    ("water bottle", "steel"),
    ("raincoat", "nylon"),
    ("wallet", "leather"),
    ("beanie", "cotton"),
    ("sunglasses", "acetate"),
]
COLORS = ["army green", "navy", "black", "sand", "burgundy", "white", "sky blue"]
SIZES = {"S": "small", "M": "medium", "L": "large"}
OPENERS = [
    "This stylish {size} {color} {item} will add a unique touch to your look.",
    "A {size} {color} {item} in {material} that goes with everything.",
    "Our {color} {item} comes in size {code} and is made from durable {material}.",
    "Meet the {size} {color} {item}, made of {material} for everyday life.",
]
CLOSERS = {
    "low": ["Great value that won't cost you a fortune.", "A price that is easy to love."],
    "mid": ["Made to last for years.", "Worth every cent."],
    "high": ["A true investment piece.", "Crafted for those who want the best."],
}


def product_descriptions(rng: random.Random) -> str:
    def make(r: random.Random) -> dict[str, str]:
        item, material = r.choice(ITEMS)
        color = r.choice(COLORS)
        code = r.choice(sorted(SIZES))
        price = r.choice([19, 29, 49, 79, 99, 149, 249])
        tier = "low" if price < 50 else "mid" if price < 120 else "high"
        prompt = (
            f"Item={item.replace(' ', '_')}, Color={color.replace(' ', '_')}, "
            f"Price=${price}, Size={code}, Material={material}"
        )
        opener = r.choice(OPENERS).format(
            size=SIZES[code], color=color, item=item, material=material, code=code
        )
        return {"prompt": prompt, "completion": f"{opener} {r.choice(CLOSERS[tier])}"}

    return csv_text(unique(make, 80, rng))


FILES: dict[str, Callable[[random.Random], str]] = {
    "sentiment/tweets.csv": sentiment,
    "email-triage/emails.jsonl": email_triage,
    "ad-copy/products.jsonl": ad_copy,
    "entity-extraction/articles.jsonl": entity_extraction,
    "support-chatbot/conversations.jsonl": support_chatbot,
    "product-descriptions/attributes.csv": product_descriptions,
}


def render() -> dict[str, str]:
    """Each file's text; every file has its own generator seeded from SEED and its name."""
    return {name: make(random.Random(f"{SEED}:{name}")) for name, make in FILES.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, don't write")
    args = parser.parse_args()
    stale = []
    for name, text in render().items():
        path = HERE / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
            continue
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(HERE.parent)} ({text.count(chr(10))} lines)")
    if stale:
        print("out of date (run examples/synthetic.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
