#!/usr/bin/env python3
"""Reference runs on a tiny multimodal Gemma 3 (Gemma3ForConditionalGeneration),
for tests/lora/test_gemma3_multimodal.cpp.

    ref_gemma3_mm.py make --out OUT
        OUT/hub/        a tiny random Gemma3ForConditionalGeneration (text_config:
                        hidden 64, 3 layers, 4 heads, 2 kv heads, head_dim 32, as
                        tests/variants.json's gemma3; a 1-layer SigLIP tower,
                        image 28, patch 14, 4 tokens per image) as transformers 5
                        save_pretrained writes it: "language_model.model.*",
                        "vision_tower.*", "multi_modal_projector.*" (the layout
                        of the 4.50 hub checkpoints too), plus
                        preprocessor_config.json and processor_config.json
        OUT/nested/     the same tensors under transformers 4.52 .. 4.57's names:
                        "model.language_model.*", "model.vision_tower.vision_model.*",
                        "model.multi_modal_projector.*"
        OUT/ref.safetensors   "input_ids" [T] and the base's float32 "logits" [T, V]
                        (eager attention, text only)
        OUT/train/      a PEFT LoRA run on the language model only (r 8, alpha 16,
                        target_modules TRAIN_TARGETS): init_adapter/ (random A and
                        B), train.jsonl, ref.json and final_adapter/ as
                        tests/python/ref_train.py's runs (16 steps, AdamW, cosine),
                        and ref.safetensors: "input_ids" and the trained model's
                        "logits" (unmerged), "merged_logits" (merge_and_unload)
        OUT/peft/       adapter/: a PEFT adapter with random A and B on PEFT_TARGETS
                        (r 4, alpha 8), ref.safetensors: its "input_ids", "logits"
    ref_gemma3_mm.py check-adapter --out OUT --adapter DIR
        PeftModel.from_pretrained(OUT/hub, DIR) (an adapter loratune wrote) must
        hold exactly PEFT's keys, adapt no vision module, and give the logits of
        DIR/../ours.safetensors ("input_ids", "logits", loratune's) within 1e-4.
    ref_gemma3_mm.py check-merge --out OUT --merged DIR --base hub|nested
        DIR (loratune merge of OUT/train's trained adapter onto OUT/<base>) must
        load as Gemma3ForConditionalGeneration without missing or unexpected
        keys, give OUT/train's merged_logits within 1e-4, and hold every vision
        tower / projector tensor of OUT/<base> under its name with the same bytes.
Each check prints one line and exits 1 on failure.
"""
import argparse
import json
import os
import shutil
import sys
import warnings

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import Gemma3Config, Gemma3ForConditionalGeneration
from peft import LoraConfig, PeftModel, get_peft_model

from ref_train import ACCUM, LR, MICRO, STEPS, WD, make_examples, randomize_lora, run_steps, \
    write_ref_json

warnings.filterwarnings("ignore")

# The language model's projections only: the SigLIP tower has q_proj, k_proj,
# v_proj too, and all-linear would take its fc1/fc2/out_proj as well.
TRAIN_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
PEFT_TARGETS = r".*language_model.*\.(q_proj|v_proj|down_proj)"
VOCAB = 300
# Token ids the tests feed: below the image/boi/eoi ids (297..299).
MAX_TEXT_ID = 297


def tiny_config():
    text = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                query_pre_attn_scalar=32, sliding_window=40, sliding_window_pattern=3,
                max_position_embeddings=256, rope_theta=1e6, rope_local_base_freq=1e4,
                rope_scaling={"rope_type": "linear", "factor": 8.0})
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, image_size=28, patch_size=14)
    return Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                        boi_token_index=297, eoi_token_index=298, image_token_index=299)


def load(model_dir):
    return Gemma3ForConditionalGeneration.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager")


def logits_of(model, ids):
    with torch.no_grad():
        return model(input_ids=ids[None]).logits[0].float().contiguous()


def nested_name(k):
    """transformers 5's saved name -> transformers 4.52 .. 4.57's."""
    if k.startswith("language_model.model."):
        return "model.language_model." + k[len("language_model.model."):]
    if k.startswith("language_model.lm_head."):
        return k[len("language_model."):]
    if k.startswith("vision_tower."):
        return "model.vision_tower.vision_model." + k[len("vision_tower."):]
    return "model." + k


def is_vision(k):
    return "vision_tower." in k or "multi_modal_projector." in k


def make_models(out):
    torch.manual_seed(1234)
    model = Gemma3ForConditionalGeneration(tiny_config()).eval()
    with torch.no_grad():  # norms away from their zero init, so a wrong offset shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.randn(p.shape) * 0.2)
    hub = f"{out}/hub"
    shutil.rmtree(hub, ignore_errors=True)
    model.save_pretrained(hub)
    with open(f"{hub}/preprocessor_config.json", "w") as f:
        json.dump({"image_processor_type": "Gemma3ImageProcessor", "image_seq_length": 4,
                   "size": {"height": 28, "width": 28}}, f, indent=2)
    with open(f"{hub}/processor_config.json", "w") as f:
        json.dump({"image_seq_length": 4, "processor_class": "Gemma3Processor"}, f, indent=2)
    names = list(load_file(f"{hub}/model.safetensors"))
    assert any(n.startswith("language_model.model.layers.") for n in names), names[:5]
    assert any(n.startswith("vision_tower.") for n in names), names[:5]
    nested = f"{out}/nested"
    shutil.rmtree(nested, ignore_errors=True)
    os.makedirs(nested)
    for f in os.listdir(hub):
        if f != "model.safetensors":
            shutil.copy(f"{hub}/{f}", nested)
    sd = load_file(f"{hub}/model.safetensors")
    save_file({nested_name(k): v for k, v in sd.items()}, f"{nested}/model.safetensors",
              metadata={"format": "pt"})
    for d in (hub, nested):  # transformers itself loads both without complaint
        _, info = Gemma3ForConditionalGeneration.from_pretrained(d, output_loading_info=True)
        bad = {k: v for k, v in info.items() if v}
        assert not bad, (d, bad)


def ids_for(seed, n=23):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, MAX_TEXT_ID, (n,), generator=g)


def adapted(out, name, torch_seed, r, targets, g):
    """A fresh OUT/NAME and the hub model under a PEFT LoRA of rank r (alpha 2r) on
    `targets`, its A and B drawn from generator g."""
    d = f"{out}/{name}"
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    torch.manual_seed(torch_seed)
    cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, lora_dropout=0.0,
                     task_type="CAUSAL_LM")
    model = get_peft_model(load(f"{out}/hub"), cfg)
    randomize_lora(model, g)
    return d, model


def make_train(out):
    g = torch.Generator().manual_seed(107)
    d, model = adapted(out, "train", 7, 8, TRAIN_TARGETS, g)
    model.save_pretrained(f"{d}/init_adapter")
    examples = make_examples(STEPS * ACCUM * MICRO, MAX_TEXT_ID, g)
    with open(f"{d}/train.jsonl", "w") as f:
        for e in examples:
            f.write(json.dumps(e) + "\n")
    params = [p for p in model.parameters() if p.requires_grad]
    steps = run_steps(model, examples, torch.optim.AdamW(params, lr=LR, weight_decay=WD))
    model.eval()
    model.save_pretrained(f"{d}/final_adapter")
    write_ref_json(d, steps)
    ids = ids_for(11)
    logits = logits_of(model, ids)
    merged = logits_of(model.merge_and_unload(), ids)
    save_file({"input_ids": ids, "logits": logits, "merged_logits": merged},
              f"{d}/ref.safetensors")
    print(f"train: losses {steps[0]['loss']:.4f} -> {steps[-1]['loss']:.4f}")


def make_peft(out):
    d, model = adapted(out, "peft", 8, 4, PEFT_TARGETS, torch.Generator().manual_seed(108))
    model.eval()
    model.save_pretrained(f"{d}/adapter")
    ids = ids_for(12)
    save_file({"input_ids": ids, "logits": logits_of(model, ids)}, f"{d}/ref.safetensors")


def make(a):
    os.makedirs(a.out, exist_ok=True)
    make_models(a.out)
    ids = ids_for(10)
    save_file({"input_ids": ids, "logits": logits_of(load(f"{a.out}/hub").eval(), ids)},
              f"{a.out}/ref.safetensors")
    make_train(a.out)
    make_peft(a.out)


def check_adapter(a):
    from peft.utils import get_peft_model_state_dict
    model = PeftModel.from_pretrained(load(f"{a.out}/hub"), a.adapter).eval()
    saved = set(load_file(f"{a.adapter}/adapter_model.safetensors"))
    want = set(get_peft_model_state_dict(model).keys())
    vision = [n for n, m in model.named_modules() if hasattr(m, "lora_A") and is_vision(n)]
    if saved != want or vision:
        print(f"adapter: key mismatch: missing {sorted(want - saved)[:3]} unexpected "
              f"{sorted(saved - want)[:3]}; adapted vision modules {vision[:3]}")
        sys.exit(1)
    ref = load_file(os.path.join(os.path.dirname(a.adapter.rstrip("/")), "ours.safetensors"))
    diff = (logits_of(model, ref["input_ids"]) - ref["logits"]).abs().max().item()
    print(f"PEFT on loratune's adapter: {len(saved)} keys match, no vision module adapted, "
          f"max |logit diff| {diff:.3e}")
    sys.exit(0 if diff <= 1e-4 else 1)


def raw_tensors(path_dir):
    """name -> (dtype string, shape, raw bytes) of every tensor in a model dir."""
    out = {}
    for f in sorted(os.listdir(path_dir)):
        if not f.endswith(".safetensors"):
            continue
        with safe_open(f"{path_dir}/{f}", "pt") as st:
            for k in st.keys():
                t = st.get_tensor(k)
                out[k] = (str(t.dtype), tuple(t.shape), t.contiguous().view(torch.uint8).numpy()
                          .tobytes() if t.numel() else b"")
    return out


def check_merge(a):
    base_dir = f"{a.out}/{a.base}"
    model, info = Gemma3ForConditionalGeneration.from_pretrained(
        a.merged, dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    ref = load_file(f"{a.out}/train/ref.safetensors")
    diff = (logits_of(model.eval(), ref["input_ids"]) - ref["merged_logits"]).abs().max().item()
    base, merged = raw_tensors(base_dir), raw_tensors(a.merged)
    vision = [k for k in base if is_vision(k)]
    differ = [k for k in vision if merged.get(k) != base[k]]
    print(f"merged {a.base}: {type(model).__name__}, loading problems {bad or 'none'}, "
          f"max |logit diff| vs PEFT merge_and_unload {diff:.3e}, {len(vision)} vision/projector "
          f"tensors, {len(differ)} differ {differ[:3]}")
    ok = not bad and diff <= 1e-4 and vision and not differ
    sys.exit(0 if ok else 1)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--out", required=True)
    c = sub.add_parser("check-adapter")
    c.add_argument("--out", required=True)
    c.add_argument("--adapter", required=True)
    c = sub.add_parser("check-merge")
    c.add_argument("--out", required=True)
    c.add_argument("--merged", required=True)
    c.add_argument("--base", required=True, choices=["hub", "nested"])
    a = p.parse_args()
    torch.set_num_threads(1)
    {"make": make, "check-adapter": check_adapter, "check-merge": check_merge}[a.cmd](a)


if __name__ == "__main__":
    main()
