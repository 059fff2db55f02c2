"""Interop between loratune's safetensors code and the Python reference.

  safetensors_interop.py write <dir>   writes files with safetensors.torch
  safetensors_interop.py check <dir>   verifies files loratune wrote

Tensors are built by a formula both sides share (tests/io/safetensors_bytes.h,
pattern_tensor): element i is (i % 23) - 7; bool i % 3 == 0; unsigned i % 23;
floating ((i % 23) - 7) * 0.25 computed in float64 and cast. Comparison is
bytewise. Prints one JSON line; exits non-zero on any mismatch.
"""
import json
import math
import os
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

DTYPES = {
    "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool, "U16": torch.uint16, "U32": torch.uint32,
    "U64": torch.uint64, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
SHAPES = [(2, 3), (), (0, 4), (7,)]
UNSIGNED = {torch.uint8, torch.uint16, torch.uint32, torch.uint64}


def pattern(dtype, shape):
    n = 1
    for d in shape:
        n *= d
    i = torch.arange(n, dtype=torch.int64)
    if dtype == torch.bool:
        v = (i % 3) == 0
    elif dtype in UNSIGNED:
        v = (i % 23).to(dtype)
    elif dtype.is_floating_point:
        v = ((i % 23) - 7).to(torch.float64).mul(0.25).to(dtype)
    else:
        v = ((i % 23) - 7).to(dtype)
    return v.reshape(shape)


def as_bytes(t):
    return t.contiguous().reshape(-1).view(torch.uint8).tolist() if t.numel() else []


def fail(msg):
    print(json.dumps({"ok": False, "error": msg}))
    sys.exit(1)


def check_tensor(where, name, t):
    want = pattern(t.dtype, tuple(t.shape))
    if as_bytes(t) != as_bytes(want):
        fail(f"{where}: tensor {name!r} ({t.dtype}, {tuple(t.shape)}) differs from the pattern")


def write(out):
    tensors = {}
    for dname, dtype in DTYPES.items():
        for s, shape in enumerate(SHAPES):
            tensors[f"{dname}.{s}"] = pattern(dtype, shape)
    save_file(tensors, os.path.join(out, "py_all.safetensors"),
              metadata={"format": "pt", "origin": "python"})
    # For the byte-for-byte comparison: mixed alignments, one metadata key.
    layout = {"b.weight": pattern(torch.float32, (3, 5)), "a.bias": pattern(torch.bfloat16, (3,)),
              "z": pattern(torch.int64, (2,)), "mask": pattern(torch.bool, (5,)),
              "empty": pattern(torch.float16, (0,)), "scalar": pattern(torch.float64, ())}
    save_file(layout, os.path.join(out, "py_layout.safetensors"), metadata={"format": "pt"})
    print(json.dumps({"ok": True, "written": len(tensors) + len(layout)}))


def check_single(path):
    tensors = load_file(path)
    with safe_open(path, framework="pt") as f:
        if f.metadata().get("format") != "pt":
            fail(f"{path}: metadata {f.metadata()} lacks format=pt")
    for name, t in tensors.items():
        check_tensor(path, name, t)
    return len(tensors)


def build_module(shapes):
    """A module tree whose state_dict keys are exactly `shapes`' names."""
    root = torch.nn.Module()
    for name, (dtype, shape) in shapes.items():
        *path, leaf = name.split(".")
        m = root
        for p in path:
            if not hasattr(m, p):
                m.add_module(p, torch.nn.Module())
            m = getattr(m, p)
        m.register_parameter(leaf, torch.nn.Parameter(torch.zeros(shape, dtype=dtype),
                                                      requires_grad=False))
    return root


def check_sharded(d):
    from huggingface_hub.serialization import load_torch_model
    from transformers.modeling_utils import get_checkpoint_shard_files

    index_path = os.path.join(d, "model.safetensors.index.json")
    with open(index_path, encoding="utf-8") as f:
        text = f.read()
    index = json.loads(text)
    # transformers 5.x writes json.dumps(index, indent=2, sort_keys=True) + "\n".
    if text != json.dumps(index, indent=2, sort_keys=True) + "\n":
        fail(f"{index_path}: not laid out as transformers writes it")
    files, meta = get_checkpoint_shard_files(d, index_path, local_files_only=True)
    shapes, total = {}, 0
    for path in files:
        with safe_open(path, framework="pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                if index["weight_map"].get(name) != os.path.basename(path):
                    fail(f"{index_path}: {name!r} is in {path}, index says {index['weight_map'].get(name)}")
                check_tensor(path, name, t)
                shapes[name] = (t.dtype, tuple(t.shape))
                total += t.numel() * t.element_size()
    if set(shapes) != set(index["weight_map"]):
        fail(f"{index_path}: weight_map names differ from the shards' tensors")
    # transformers returns the index's "metadata" plus the checkpoint keys.
    if meta.get("total_size") != total or index["metadata"]["total_size"] != total:
        fail(f"{index_path}: total_size {meta.get('total_size')} != {total}")
    if set(meta.get("all_checkpoint_keys", [])) != set(shapes):
        fail(f"{index_path}: transformers sees keys {meta.get('all_checkpoint_keys')}")
    params = sum(math.prod(shape) for _, shape in shapes.values())
    if index["metadata"].get("total_parameters") != params:
        fail(f"{index_path}: total_parameters {index['metadata'].get('total_parameters')} != {params}")
    model = build_module(shapes)
    load_torch_model(model, d, strict=True)
    for name, p in model.state_dict().items():
        check_tensor(d, name, p)
    return len(shapes), len(files)


def check(d):
    n_single = check_single(os.path.join(d, "lt_all.safetensors"))
    n_sharded, n_files = check_sharded(os.path.join(d, "lt_sharded"))
    print(json.dumps({"ok": True, "single": n_single, "sharded": n_sharded, "shards": n_files}))


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("write", "check"):
        print(__doc__)
        sys.exit(2)
    (write if sys.argv[1] == "write" else check)(sys.argv[2])
