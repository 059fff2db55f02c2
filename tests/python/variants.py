"""The tiny test variants of tests/variants.json, the one manifest that the
fixture scripts and the C++ tests (test::variants) both read."""
import json
import os

MANIFEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "variants.json")


def _load():
    with open(MANIFEST) as f:
        return json.load(f)["variants"]


def tagged(tag=None):
    """Variant names, sorted; with `tag` only those carrying it ("train", ...)."""
    return sorted(n for n, v in _load().items() if tag is None or tag in v.get("tags", []))


def model_type(name):
    return _load()[name]["model_type"]
