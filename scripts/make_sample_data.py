#!/usr/bin/env python3
"""Writes the sample fine-tuning data in data/homebattery/ (committed).

Domain: customer support for the Brightcell Home 10, a fictional home battery
made by the fictional Brightcell Energy. Every fact below is invented for this
file; the text is original. Records are built deterministically from the
facts and phrasing templates with a seeded random.Random, so rerunning the
script reproduces the committed files byte for byte:

  chat.jsonl             {"messages": [...]} conversations, single and
                         multi-turn, some with a system prompt
  instruction.jsonl      {"instruction", "input"?, "output"} (Alpaca style)
  validation_chat.jsonl  held-out conversations (other seed, same facts)
  qa_chat.jsonl          short single-turn questions and answers, every
                         phrasing of every fact plus "which code means ...?"
                         questions, no system prompt (fast to train on)

    python3 scripts/make_sample_data.py [--out data/homebattery]
"""
import argparse
import json
import os
import random

PRODUCT = "Brightcell Home 10"
HUB = "Brightcell Hub"
APP = "Brightcell app"

SPECS = {
    "capacity": "10.2 kWh of usable energy",
    "power": "5 kW continuous and 7.6 kW for up to 10 seconds",
    "chemistry": "lithium iron phosphate (LFP) cells",
    "temperature": "-10 °C to 50 °C, with charging allowed between 0 °C and 45 °C",
    "warranty": "10 years or 6,000 full cycles, whichever comes first, with at least 70% capacity retained",
    "expansion": "up to three units on one Hub, for 30.6 kWh in total",
    "clearance": "30 cm of free space on each side and 60 cm in front",
}

SPEC_QUESTIONS = {
    "capacity": ["How much energy can the {p} store?", "What's the usable capacity of my {p}?",
                 "how many kWh does the {p} hold"],
    "power": ["How much power can the {p} deliver at once?", "Can the {p} run my oven and kettle together?",
              "what is the max output of the {p}"],
    "chemistry": ["What kind of battery cells are in the {p}?", "Is the {p} lithium ion?"],
    "temperature": ["Can I install the {p} in an unheated garage?", "What temperatures can the {p} handle?"],
    "warranty": ["How long is the warranty on the {p}?", "What does the {p} warranty cover?"],
    "expansion": ["Can I add a second battery later?", "How many {p} units can I connect together?"],
    "clearance": ["How much space does the {p} need around it?", "Can I put boxes next to my battery?"],
}

SPEC_ANSWERS = {
    "capacity": "The {p} stores {v}. How long that lasts depends on your load: a typical evening use of about 1.5 kW would run for roughly six to seven hours.",
    "power": "It delivers {v}. That covers most household combinations, but very large loads such as an oven plus an electric shower at the same time can exceed it; the system then draws the rest from the grid, or sheds load during an outage.",
    "chemistry": "The {p} uses {v}. LFP cells are very stable thermally and keep their capacity well over many cycles.",
    "temperature": "The unit operates from {v}. An unheated garage is usually fine; if it gets colder than 0 °C the battery pauses charging (error E205) until it warms up.",
    "warranty": "The warranty lasts {v}. It requires installation by a certified installer and the Hub staying online so the battery can report its health.",
    "expansion": "Yes: you can connect {v}. A certified installer has to add the unit so the Hub can balance the batteries.",
    "clearance": "Keep {v}. The unit cools itself through the side vents, so please do not store boxes or lean anything against it.",
}

ERRORS = {
    "E101": ("the grid voltage is outside the allowed range",
             "This is usually a problem on the grid side and clears by itself once the voltage is normal again. If it repeats several times a day, ask your electricity network operator to check the supply voltage."),
    "E204": ("the battery temperature is too high",
             "The battery reduces its power until it cools down. Check that the vents are not blocked and that the unit is not in direct afternoon sun; the code clears automatically below 45 °C."),
    "E205": ("the battery is too cold to charge",
             "Charging pauses below 0 °C to protect the cells, while discharging continues. Nothing is wrong with the battery; charging resumes on its own when it warms up."),
    "E310": ("the Hub has lost communication with the battery",
             "Check that the Hub has power and that its light is on. Restart the system from the app under Settings > System > Restart. If the code stays for more than an hour, contact support with your serial number."),
    "E412": ("an insulation fault was detected on the DC side",
             "For safety the battery disconnects itself. Do not open the enclosure or try to reset it repeatedly. Please contact your installer or our support team so a technician can inspect the wiring."),
    "E518": ("a firmware update did not complete",
             "The battery keeps running on the previous firmware. Make sure the Hub has a stable internet connection; the update retries automatically at 02:00, or you can start it in the app under Settings > Firmware."),
    "W020": ("the Hub's Wi-Fi signal is weak",
             "The battery still works, but app data may be delayed. Move the router closer, add a mesh point near the Hub, or connect the Hub with an Ethernet cable."),
}

ERROR_QUESTIONS = ["My {p} shows error {c}. What does that mean?", "The app says {c}, should I be worried?",
                   "what is code {c} on the battery", "I got a {c} alert last night. What do I do?",
                   "Hi, my battery is showing {c} again."]

LEDS = {
    "solid green": "normal operation",
    "breathing green": "the battery is charging",
    "solid blue": "backup power is active because the grid is down",
    "flashing amber": "there is a warning; the app shows the code",
    "solid red": "there is a fault and the battery has stopped; check the app for the error code",
}

HOWTOS = {
    "backup reserve": (["How do I change the backup reserve?", "Can I keep more charge for power cuts?",
                        "where do i set how much battery is saved for outages"],
                       "Open the {a}, go to Settings > Backup reserve and move the slider. The default is 20%. A higher reserve keeps more energy for outages but leaves less for daily self-consumption."),
    "wifi": (["How do I reconnect the Hub to my new router?", "I changed my Wi-Fi password and the app shows offline.",
              "how to put the hub on a different wifi"],
             "Press and hold the button on the {h} for five seconds until its light flashes blue. Then open the {a}, choose Settings > Network > Add network and follow the steps. The battery keeps working while the Hub is offline."),
    "storm watch": (["What is Storm Watch?", "Can the battery charge up before a storm?",
                     "how does storm mode work"],
                    "Storm Watch charges the battery to 100% when a severe weather warning is issued for your area, so you have a full battery if the power goes out. Turn it on in the {a} under Settings > Storm Watch."),
    "modes": (["What's the difference between the operating modes?", "Which mode should I use to save money?",
               "explain self powered vs time of use"],
              "Self-Powered stores your solar surplus and uses it in the evening. Time-of-Use charges when electricity is cheap and discharges during peak prices. Backup-Only keeps the battery full for outages. Most homes with solar save the most with Self-Powered."),
    "cleaning": (["How should I clean the battery?", "Can I hose down the unit?", "does the battery need maintenance"],
                 "The {p} needs no routine maintenance. Wipe the casing with a dry or slightly damp cloth and keep the vents free of dust and leaves. Never use a hose or a pressure washer."),
    "shutdown": (["How do I switch the battery off safely?", "I'm going on holiday, should I turn the battery off?",
                  "how to power down the battery for an electrician"],
                 "You normally do not need to switch it off, even on holiday. If an electrician needs it off, use Settings > System > Shut down in the {a}, then turn off the battery isolator switch on the side of the unit. Reverse the steps to start it again."),
}

SYSTEM_PROMPTS = [
    f"You are the support assistant for Brightcell Energy. Answer questions about the {PRODUCT} clearly and briefly. Never tell customers to open the battery enclosure.",
    f"You help owners of the {PRODUCT} home battery. Be friendly and practical, and suggest contacting a certified installer for anything involving wiring.",
    "You are a customer support agent for a home battery company. Keep answers short and safe.",
]

GREETINGS = ["", "Hi! ", "Hello, ", "Hey there. ", "Good morning. "]
OPENERS = ["", "Thanks for reaching out. ", "Happy to help. ", "Good question. "]
THANKS = ["Thanks, that worked!", "Great, thank you.", "ok thanks", "Perfect, that's what I needed."]
CLOSERS = ["You're welcome! Let us know if anything else comes up.", "Glad it helped. Have a good day!",
           "Anytime. The app will notify you if the battery needs attention."]


def fmt(s):
    return s.format(p=PRODUCT, h=HUB, a=APP)


def qa_pairs():
    """(question, answer) for every fact, every phrasing."""
    out = []
    for k, qs in SPEC_QUESTIONS.items():
        for q in qs:
            out.append((fmt(q), SPEC_ANSWERS[k].format(p=PRODUCT, v=SPECS[k])))
    for code, (meaning, action) in ERRORS.items():
        for q in ERROR_QUESTIONS:
            out.append((q.format(p=PRODUCT, c=code), f"Code {code} means {meaning}. {action}"))
    for colour, meaning in LEDS.items():
        for q in (f"The light on my battery is {colour}. Is that normal?", f"what does a {colour} light mean"):
            out.append((q, f"A {colour} light means {meaning}."))
    for _, (qs, answer) in HOWTOS.items():
        for q in qs:
            out.append((q, fmt(answer)))
    return out


# More phrasings, used only in qa_chat.jsonl (qa_pairs() feeds the other
# files, which must not change): so that every fact is asked in several ways,
# and error codes also the other way round ("which code means ...?").
EXTRA_SPEC_QUESTIONS = {
    "capacity": ["What is the storage capacity of the {p}?", "how big is the battery in the {p}"],
    "power": ["How many kilowatts can the {p} supply?", "What is the peak power of the {p}?"],
    "chemistry": ["Which cell chemistry does the {p} use?"],
    "temperature": ["Will the {p} work in a cold shed in winter?"],
    "warranty": ["What warranty comes with the {p}?", "how many cycles does the warranty cover"],
    "expansion": ["What is the largest system I can build with the {p}?"],
    "clearance": ["How far from other things does the {p} have to stand?"],
}
EXTRA_ERROR_QUESTIONS = ["What does {c} mean on the {p}?"]
REVERSE_ERROR_QUESTIONS = ["Which error code means that {m}?", "what code does the app show when {m}"]
EXTRA_LED_QUESTIONS = ["My {p} light is {colour}. What is it telling me?", "why is the battery light {colour}",
                       "What does {colour} on the status light mean?"]
EXTRA_HOWTO_QUESTIONS = {
    "backup reserve": ["What is the default backup reserve?"],
    "wifi": ["How do I connect the Hub to Wi-Fi?"],
    "storm watch": ["How do I turn on Storm Watch?"],
    "modes": ["Which operating mode is best with solar panels?"],
    "cleaning": ["Is it okay to pressure wash the battery?"],
    "shutdown": ["How do I turn the battery off?"],
}


def extra_pairs():
    """(question, answer) for the phrasings above, answers as in qa_pairs()."""
    out = []
    for k, qs in EXTRA_SPEC_QUESTIONS.items():
        for q in qs:
            out.append((fmt(q), SPEC_ANSWERS[k].format(p=PRODUCT, v=SPECS[k])))
    for code, (meaning, action) in ERRORS.items():
        for q in EXTRA_ERROR_QUESTIONS:
            out.append((q.format(p=PRODUCT, c=code), f"Code {code} means {meaning}. {action}"))
        for q in REVERSE_ERROR_QUESTIONS:
            out.append((q.format(m=meaning), f"That is code {code}: {meaning}. {action}"))
    for colour, meaning in LEDS.items():
        for q in EXTRA_LED_QUESTIONS:
            out.append((q.format(p=PRODUCT, colour=colour), f"A {colour} light means {meaning}."))
    for k, qs in EXTRA_HOWTO_QUESTIONS.items():
        for q in qs:
            out.append((fmt(q), fmt(HOWTOS[k][1])))
    return out


def qa_chat_records(rng, pairs, copies):
    """Each (question, answer) `copies` times as a one-turn chat, the question
    with a random greeting (or lower-cased), in shuffled order."""
    out = []
    for q, a in pairs:
        for _ in range(copies):
            greeting = rng.choice(GREETINGS)
            question = greeting + q if greeting else rng.choice([q, q[0].lower() + q[1:]])
            out.append({"messages": [{"role": "user", "content": question},
                                     {"role": "assistant", "content": a}]})
    rng.shuffle(out)
    return out


def clarify_conversation(rng):
    """User describes a symptom; the assistant asks for the code; then answers."""
    code = rng.choice(sorted(ERRORS))
    meaning, action = ERRORS[code]
    symptom = rng.choice(["My battery stopped working this morning.", "The app shows a warning on my battery.",
                          "The light on the battery changed colour and I'm not sure why.",
                          "Something is wrong with my home battery."])
    return [
        {"role": "user", "content": rng.choice(GREETINGS) + symptom},
        {"role": "assistant", "content": "Sorry to hear that. Could you open the " + APP +
         " and tell me the code shown under Alerts? It starts with E or W."},
        {"role": "user", "content": rng.choice(["It says ", "The code is ", "", "I see "]) + code + "."},
        {"role": "assistant", "content": f"Thanks. {code} means {meaning}. {action}"},
    ]


def conversation(rng, pairs):
    kind = rng.random()
    if kind < 0.25:
        msgs = clarify_conversation(rng)
    else:
        q, a = rng.choice(pairs)
        msgs = [{"role": "user", "content": rng.choice(GREETINGS) + q},
                {"role": "assistant", "content": rng.choice(OPENERS) + a}]
        if kind > 0.6:  # a follow-up question, sometimes a thank-you
            if rng.random() < 0.5:
                q2, a2 = rng.choice(pairs)
                msgs += [{"role": "user", "content": "One more thing: " + q2[0].lower() + q2[1:]},
                         {"role": "assistant", "content": a2}]
            msgs += [{"role": "user", "content": rng.choice(THANKS)},
                     {"role": "assistant", "content": rng.choice(CLOSERS)}]
    if rng.random() < 0.4:
        msgs.insert(0, {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    return {"messages": msgs}


TICKETS = [
    ("Battery light is red since the storm last night and the house is on grid power only.", "fault"),
    ("App shows W020 every evening, otherwise fine.", "connectivity"),
    ("I want to add a second Home 10, who can install it?", "sales"),
    ("Error E205 every morning in January, is the unit broken?", "information"),
    ("Hub offline after I replaced my router.", "connectivity"),
    ("E412 appeared and the battery disconnected.", "fault"),
    ("What is the price difference between one and two units?", "sales"),
    ("Firmware update failed twice (E518).", "connectivity"),
    ("How do I change from Time-of-Use to Self-Powered?", "information"),
]


def instruction_record(rng, pairs):
    kind = rng.random()
    if kind < 0.55:
        q, a = rng.choice(pairs)
        style = rng.choice(["Answer the customer's question about the {p}.",
                            "You are a support agent for Brightcell Energy. Reply to the customer.",
                            "Write a helpful, safe answer to this home battery question."])
        if rng.random() < 0.5:
            return {"instruction": fmt(style), "input": q, "output": a}
        return {"instruction": q, "input": "", "output": a}
    if kind < 0.7:
        code = rng.choice(sorted(ERRORS))
        meaning, action = ERRORS[code]
        return {"instruction": f"Explain error code {code} on the {PRODUCT} and what the owner should do.",
                "output": f"{code} means {meaning}. {action}"}
    if kind < 0.85:
        ticket, label = rng.choice(TICKETS)
        return {"instruction": "Classify the support ticket as one of: fault, connectivity, sales, information. Answer with the label only.",
                "input": ticket, "output": label}
    k = rng.choice(sorted(SPECS))
    return {"instruction": f"State the {PRODUCT} specification for: {k}.", "input": "",
            "output": f"{k.capitalize()}: {SPECS[k]}."}


def write(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "data", "homebattery"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    pairs = qa_pairs()
    rng = random.Random(20261201)
    write(os.path.join(args.out, "chat.jsonl"), [conversation(rng, pairs) for _ in range(240)])
    write(os.path.join(args.out, "instruction.jsonl"), [instruction_record(rng, pairs) for _ in range(240)])
    val = random.Random(7)
    write(os.path.join(args.out, "validation_chat.jsonl"), [conversation(val, pairs) for _ in range(30)])
    qa = random.Random(11)
    write(os.path.join(args.out, "qa_chat.jsonl"), qa_chat_records(qa, pairs + extra_pairs(), 2))


if __name__ == "__main__":
    main()
