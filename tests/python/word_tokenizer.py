"""A minimal tokenizer for tiny models trained on pre-tokenized data.

`loratune train` loads a model's tokenizer even for `format: tokenized` data
(for the pad id and the model card), so the random test models get this one:
a BPE with no merges over the plain words "w3".."w{vocab_size-1}" and the
special tokens <unk>=0, <s>=1, </s>=2.
"""
import json


def write_word_tokenizer(model_dir, vocab_size):
    """Writes tokenizer.json and tokenizer_config.json into `model_dir`."""
    from tokenizers import Tokenizer, models as tm
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"w{i}": i for i in range(3, vocab_size)})
    tok = Tokenizer(tm.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.save(f"{model_dir}/tokenizer.json")
    with open(f"{model_dir}/tokenizer_config.json", "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
                   "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}, f)
