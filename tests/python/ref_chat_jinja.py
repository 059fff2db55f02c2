"""Renders small Jinja snippets in transformers' chat-template environment.

Usage: ref_chat_jinja.py IN.json OUT.json
  IN:  [{"source": str, "context": {...}}, ...]
  OUT: [{"text": str} or {"error": str}, ...]
The environment is transformers' own (_compile_jinja_template: sandboxed,
trim_blocks, lstrip_blocks, loopcontrols, tojson override, raise_exception,
namespace), so test_jinja compares against exactly what apply_chat_template
would render.
"""
import json
import sys

from transformers.utils.chat_template_utils import _compile_jinja_template


def main():
    cases = json.load(open(sys.argv[1], encoding="utf-8"))
    out = []
    for case in cases:
        try:
            out.append({"text": _compile_jinja_template(case["source"]).render(**case["context"])})
        except Exception as e:  # the expected error of a refusing snippet
            out.append({"error": f"{type(e).__name__}: {e}"})
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
