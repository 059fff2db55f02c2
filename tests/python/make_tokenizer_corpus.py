#!/usr/bin/env python3
"""Writes a deterministic (seeded) corpus of varied text lines for the
tokenizer parity tests: one JSON string per line (lines may contain
newlines). English, French with accents, CJK, Arabic/Hebrew, emoji and ZWJ
sequences, code with tabs and runs of spaces, digits, URLs, special-token
text, empty and whitespace-only strings, NFD combining characters.

usage: make_tokenizer_corpus.py OUT.jsonl [--lines N] [--seed S]
"""
import argparse
import json
import random
import unicodedata

ENGLISH = ("the quick brown fox jumps over the lazy dog while I'm sure they'll say it's what we've "
           "done and you'd agree THE Don't CAN'T won't shouldn't isn't pretty-good state-of-the-art "
           "tokenization is hard; really? yes! (maybe) [citation needed] {braces} <angle> e.g. i.e. etc.").split()
FRENCH = ("élève être déjà où çà Noël garçon français naïve cœur œuvre Ça ÉTÉ à côté île fenêtre "
          "s'il vous plaît l'été qu'il c'est très réservé mangé château hôpital").split()
CJK = ["你好", "世界", "我们", "学习", "机器学习", "こんにちは", "ありがとう", "日本語", "カタカナ", "한국어",
       "안녕하세요", "中文字符", "東京", "漢字", "ひらがな", "。", "、", "！", "？", "「引用」"]
RTL = ["مرحبا", "بالعالم", "العربية", "كتاب", "שלום", "עולם", "עברית", "ספר", "٣٤٥", "،"]
EMOJI = ["😀", "👍", "🎉", "❤️", "👨‍👩‍👧‍👦", "🏳️‍🌈", "👩🏽‍💻", "🇫🇷", "🤖", "✨", "🙏🏻", "1️⃣", "🧑‍🤝‍🧑"]
SPECIAL = ["<|eot_id|>", "<|im_start|>", "<|im_end|>", "<s>", "</s>", "<start_of_turn>", "<end_of_turn>",
           "<|begin_of_text|>", "<|endoftext|>", "<bos>", "<eos>", "<unk>", "<pad>", "<|start_header_id|>",
           "<mask>", "<|reserved_special_token_5|>", "<think>", "</think>"]
CODE = [
    "def f(x):\n\treturn x  +  1\n",
    "for (int i = 0; i < n; ++i) {\n    sum += a[i];\n}",
    "    if x == 3:\n        print('hi')  # comment",
    "SELECT * FROM users WHERE id = 42;",
    "const s = `tmpl ${a}`;\t\t// tabs",
    "x<<=2; y>>=3; z!==w && q||r",
    "#include <stdio.h>\nint main(){return 0;}",
    "\t\t\tindented\t\twith tabs",
    "key:   value\n  - item\n  - other",
]
URLS = ["https://example.com/path?q=1&r=two#frag", "http://localhost:8080/", "www.test.org/a_b-c",
        "mailto:someone@example.fr", "ftp://files.example.net/pub/file.tar.gz"]
WS = ["", " ", "  ", "\n", "\n\n", "\t", " \t \n ", "\r\n", "   \n\n   ", "\u00a0", "\u3000", "\u2009x\u2009",
      "\u200b", "\u180e", "\u2028"]
COMBINING = ["e\u0301", "a\u0300", "n\u0303", "o\u0308", "c\u0327", "A\u030a", "\u1100\u1161\u11a8",
             "i\u0307", "u\u0308\u0301"]
ODD = ["\u00ad", "ﬁ", "ｆｕｌｌｗｉｄｔｈ", "①②③", "x²", "Ω", "ſ", "K", "İstanbul", "ß", "ΣΊΣΥΦΟΣ", "\x7f",
       "\u0000", "\ufeff", "\U0001d400", "½", "٣", "१२३", "…", "—", "''", "’s", "'S", "'LL"]


def number(rng):
    return rng.choice([str(rng.randint(0, 10 ** rng.randint(1, 12))), f"{rng.random() * 1000:.3f}",
                       f"{rng.randint(1, 31)}/{rng.randint(1, 12)}/20{rng.randint(10, 30)}",
                       "1,234,567", "3.14159", "-42", "0x1F", "1e-9", "12345678901234567890"])


def word(rng, pool):
    return rng.choice(pool)


def sentence(rng):
    kind = rng.random()
    parts = []
    n = rng.randint(1, 14)
    pools = [ENGLISH] * 5 + [FRENCH] * 2 + [CJK, RTL, EMOJI, SPECIAL, URLS, COMBINING, ODD]
    for _ in range(n):
        r = rng.random()
        if r < 0.08:
            parts.append(number(rng))
        else:
            parts.append(word(rng, rng.choice(pools)))
    seps = [" "] * 10 + ["", "  ", "\t", "\n", "   ", ", ", ". ", "\n\n", " \n"]
    out = parts[0]
    for p in parts[1:]:
        out += rng.choice(seps) + p
    if kind < 0.1:
        out = out.upper()
    elif kind < 0.15:
        out = unicodedata.normalize("NFD", out)
    elif kind < 0.2:
        out = rng.choice(WS) + out + rng.choice(WS)
    return out


def build(n, seed):
    rng = random.Random(seed)
    lines = []
    lines += WS + SPECIAL + COMBINING + ODD + CODE + URLS + EMOJI
    lines += [s + s for s in SPECIAL[:6]]
    lines += ["Hello world", " Hello", "Hello ", "hello  world", "I'm here. You're there. They'll come.",
              "<s>Hello</s>", " <s> x", "a<|eot_id|>b", "<|im_start|>user\nhi<|im_end|>\n",
              "<start_of_turn>model\nok<end_of_turn>", unicodedata.normalize("NFD", "Élève à l'école française")]
    while len(lines) < n:
        r = rng.random()
        if r < 0.1:
            lines.append(rng.choice(CODE) + rng.choice(["", "\n", "  "]) + rng.choice(CODE))
        elif r < 0.13:
            lines.append(" " * rng.randint(1, 40) + sentence(rng) + " " * rng.randint(0, 5))
        elif r < 0.15:
            lines.append("".join(rng.choice(SPECIAL) for _ in range(rng.randint(1, 4))))
        elif r < 0.17:
            lines.append("\n".join(sentence(rng) for _ in range(rng.randint(2, 6))))
        else:
            lines.append(sentence(rng))
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--lines", type=int, default=2400)
    ap.add_argument("--seed", type=int, default=1234)
    a = ap.parse_args()
    lines = build(a.lines, a.seed)
    with open(a.out, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
