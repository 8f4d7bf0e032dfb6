"""Tiny Llama models built locally (no hub): a byte-level BPE tokenizer trained with `tokenizers` on the
dataset's own text, and a randomly initialized `LlamaForCausalLM`. Used by tests, benchmarks and the
CPU fine-tuning path.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

SPECIALS = ("<s>", "</s>", "<pad>", "<unk>")
CHAT_TEMPLATE = (
    "<s>{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SIZES = {  # name -> (hidden, intermediate, layers, heads); vocab comes from the tokenizer
    "micro": (32, 64, 2, 4),
    "small": (128, 344, 4, 4),
    "25m": (512, 1376, 6, 8),
}


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2000, chat_template: bool = False):
    """A byte-level BPE `PreTrainedTokenizerFast` trained on `texts` (any text round-trips)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_llama(texts: Iterable[str], out_dir: str | Path, size: str = "micro", vocab_size: int = 2000,
                     chat_template: bool = False, seed: int = 0, progress: bool = True) -> Path:
    """Train a tokenizer on `texts`, build a random Llama of `size` (see SIZES), save both to `out_dir`.

    `progress`: transformers' "Writing model shards" bar, under the package's rule (`progress.library_bars`).

    Example:
        >>> build_tiny_llama(["User 1 watched Alien (1979)."], "/tmp/tiny")  # doctest: +SKIP
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from adaptrec_prompts.utils.progress import library_bars

    hidden, inter, layers, heads = SIZES[size]
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size, chat_template=chat_template)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=inter,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    out = Path(out_dir)
    with library_bars(progress):
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    return out


def prompt_corpus(rows, template) -> list[str]:
    """Rendered Stage-3 prompts with their answers (each row's own history as its similar user): text to
    train a tiny tokenizer on, so the prompt boilerplate and titles tokenize compactly."""
    from adaptrec_prompts.programs.chat_adapters import eval_adapter
    from adaptrec_prompts.programs.recommender import NextItemRecommender

    rec, adapter = NextItemRecommender(template), eval_adapter()
    texts = []
    for r in rows:
        inputs = rec.inputs(r["history_titles"], r["candidate_titles"], [(r["history_titles"], r["target_title"])])
        number = r["candidate_item_ids"].index(r["target_item_id"]) + 1
        messages = adapter.format_finetune_data(rec.recommend.signature, [], inputs,
                                                {"answer": rec.answer_text(number, r["target_title"])})["messages"]
        texts.append("\n\n".join(m["content"] for m in messages))
    return texts


def build_tiny_model(data: str | Path, out: str | Path, *, size: str = "micro", texts: int = 200,
                     vocab_size: int = 2000, chat_template: bool = True, seed: int = 0, progress: bool = True) -> Path:
    """A tiny random Llama for a prepared folder, built offline (`adaptrec model tiny` as a call): a BPE
    tokenizer trained on `texts` rendered Stage-3 prompts of its training split, and a randomly initialised
    `LlamaForCausalLM` of `size` ("micro", "small", "25m"; see `SIZES`). For plumbing, not for quality:
    it ranks at random. Load it with `make_lm(f"hf:{path}")`.

    Args:
        data: a prepared folder (`prepare_dataset`); its domain picks the prompt wording.
        out: the model folder to write (config.json, weights, tokenizer).
        texts: training prompts the tokenizer is trained on (the first ones of the split).
        chat_template: give the tokenizer a chat template (what DSPy's chat prompts need; on by default here,
            off by default for `adaptrec model tiny`, whose `--chat` turns it on).

    Returns:
        `out`.

    Example:
        >>> path = build_tiny_model("artifacts/ml-100k", "artifacts/models/tiny")  # doctest: +SKIP
        >>> lm = make_lm(f"hf:{path}")  # doctest: +SKIP
    """
    from adaptrec_prompts.data.prepare import load_manifest, load_prepared
    from adaptrec_prompts.data.render import manifest_template
    from adaptrec_prompts.errors import ConfigError

    if size not in SIZES:
        raise ConfigError(f"size={size!r} is not a tiny model size; use one of {', '.join(SIZES)}")
    if texts < 1:
        raise ConfigError(f"texts must be >= 1 (training prompts for the tokenizer), got {texts}")
    train = load_prepared(data)["train"]
    corpus = prompt_corpus(train.select(range(min(texts, train.num_rows))), manifest_template(load_manifest(data)))
    return build_tiny_llama(corpus, out, size=size, vocab_size=vocab_size, chat_template=chat_template, seed=seed,
                            progress=progress)
