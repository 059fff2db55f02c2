#!/usr/bin/env python3
"""Reference logits from transformers for the tiny test models.

For every model directory under --models (written by scripts/make_tiny_model.py)
writes OUT/<variant>.safetensors holding, with transformers' eager attention:

  ids_<T>          int64 [T]      random token ids, T in --lengths
  f32_<T>          float32 [T,V]  logits of the float32 model
  bf16_<T>         float32 [T,V]  logits of the model loaded with dtype=bfloat16
  pad_ids          int64 [2,P]    a batch of two sequences, the second left-padded
  pad_mask         int64 [2,P]    its attention_mask (1 keep, 0 pad)
  pad_pos          int64 [2,P]    position ids as generate() makes them
  pad_f32          float32 [2,P,V] float32 logits of that batch

One process for all models so transformers is imported once.
"""
import argparse
import os
import sys


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True, help="directory of model directories")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--lengths", default="1,17,300")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)

    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    os.makedirs(args.out, exist_ok=True)
    lengths = [int(x) for x in args.lengths.split(",")]
    variants = sorted(d for d in os.listdir(args.models)
                      if os.path.exists(os.path.join(args.models, d, "config.json")))
    if not variants:
        print(f"no models under {args.models}", file=sys.stderr)
        return 1
    for variant in variants:
        path = os.path.join(args.models, variant)
        out = {}
        models = {}
        for key, dtype in (("f32", torch.float32), ("bf16", torch.bfloat16)):
            m = AutoModelForCausalLM.from_pretrained(path, dtype=dtype,
                                                     attn_implementation="eager")
            models[key] = m.eval()
        vocab = models["f32"].config.vocab_size
        gen = torch.Generator().manual_seed(args.seed)
        with torch.no_grad():
            for t in lengths:
                ids = torch.randint(3, vocab, (1, t), generator=gen)
                out[f"ids_{t}"] = ids[0].clone()
                for key, m in models.items():
                    out[f"{key}_{t}"] = m(input_ids=ids).logits[0].float().contiguous()
            # Left padding: sequence 0 fills the batch, sequence 1 is shorter.
            p, short = 17, 10
            ids = torch.randint(3, vocab, (2, p), generator=gen)
            mask = torch.ones(2, p, dtype=torch.int64)
            mask[1, : p - short] = 0
            ids[1, : p - short] = 0
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            out["pad_ids"], out["pad_mask"], out["pad_pos"] = ids, mask, pos
            out["pad_f32"] = models["f32"](input_ids=ids, attention_mask=mask,
                                           position_ids=pos).logits.float().contiguous()
        save_file(out, os.path.join(args.out, f"{variant}.safetensors"))
        print(f"wrote {variant}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
