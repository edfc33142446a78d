"""Train genmesh's shipped default model: a tiny Llama on the Python language reference (pydoc_data.topics).

Usage (from the repository root)::

    python scripts/train_tiny_llama.py --out models/genmesh-tiny-llama --minutes 20 --seed 0 --threads 1

The output directory has the Hugging Face layout (config.json, model.safetensors, tokenizer.json,
tokenizer_config.json, generation_config.json) plus a README.md model card. With ``--steps`` the run is
exactly reproducible for a seed; with only ``--minutes`` the step count is fixed after timing a few steps.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

try:
    from services.inference.chat_template import DEFAULT_CHAT_TEMPLATE
    from services.inference.models.llama import LlamaConfig, LlamaForCausalLM
except ImportError:  # run as a plain script without the project installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from services.inference.chat_template import DEFAULT_CHAT_TEMPLATE
    from services.inference.models.llama import LlamaConfig, LlamaForCausalLM

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SAMPLE_PROMPTS = ("The with statement", "A class definition", "The import statement")


@dataclass(slots=True)
class TrainConfig:
    """Settings of one training run; validated on creation."""

    out: Path
    minutes: float = 20.0
    steps: int | None = None
    seed: int = 0
    threads: int | None = None
    vocab_size: int = 4096
    hidden_size: int = 256
    layers: int = 6
    heads: int = 8
    kv_heads: int = 4
    intermediate_size: int = 688
    context: int = 512
    batch: int = 8
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup: int = 50
    weight_decay: float = 0.1
    log_every: int = 25

    def __post_init__(self) -> None:
        if self.steps is None and not self.minutes > 0:
            raise ValueError("--minutes must be positive when --steps is not given")
        if self.steps is not None and self.steps <= 0:
            raise ValueError("--steps must be positive")
        if self.threads is not None and self.threads <= 0:
            raise ValueError("--threads must be positive")
        if self.vocab_size < 300:
            raise ValueError("--vocab-size must be at least 300 (256 bytes plus specials)")
        if self.batch <= 0 or self.context < 16:
            raise ValueError("--batch must be positive and --context at least 16")


def corpus() -> list[str]:
    """The documents: every topic of the stdlib's Python language reference, in sorted order."""
    from pydoc_data.topics import topics

    return [topics[name].strip() for name in sorted(topics) if topics[name].strip()]


def train_tokenizer(docs: list[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE tokenizer whose post-processor prepends BOS, like Llama's."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return tok


def token_stream(tok: Tokenizer, docs: list[str]) -> torch.Tensor:
    """All documents as ``<|bos|> doc <|eos|>`` concatenated into one id tensor."""
    eos_id = tok.token_to_id(EOS)
    if eos_id is None:
        raise ValueError(f"the tokenizer has no {EOS} token")
    ids: list[int] = []
    for enc in tok.encode_batch(docs, add_special_tokens=True):
        ids.extend(enc.ids)
        ids.append(eos_id)
    return torch.tensor(ids, dtype=torch.long)


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up then cosine decay to ``min_lr_ratio`` of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, total - cfg.warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.inference_mode()
def greedy_sample(model: LlamaForCausalLM, tok: Tokenizer, prompt: str, new_tokens: int = 48) -> str:
    """Greedy continuation of ``prompt`` using the KV cache."""
    model.eval()
    ids = tok.encode(prompt).ids
    cache = model.new_cache(max_len=len(ids) + new_tokens)
    eos_id = tok.token_to_id(EOS)
    logits = model(torch.tensor([ids]), torch.arange(len(ids)).unsqueeze(0), cache, last_only=True)
    out: list[int] = []
    for _ in range(new_tokens):
        nxt = int(logits[0, -1].argmax())
        if nxt == eos_id:
            break
        out.append(nxt)
        pos = len(ids) + len(out) - 1
        logits = model(torch.tensor([[nxt]]), torch.tensor([[pos]]), cache)
    model.train()
    return tok.decode(ids + out, skip_special_tokens=True)


def build_model(cfg: TrainConfig, tok: Tokenizer) -> LlamaForCausalLM:
    """A freshly initialised model sized by ``cfg``."""
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.context,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tok.token_to_id(BOS),
        eos_token_id=tok.token_to_id(EOS),
        torch_dtype="float16",
        extra={"pad_token_id": tok.token_to_id(PAD)},
    )
    model = LlamaForCausalLM(config)
    model.init_weights(0.02, torch.Generator().manual_seed(cfg.seed))
    return model


def save(model: LlamaForCausalLM, tok: Tokenizer, out: Path) -> None:
    """Write the Hugging Face layout directory (weights stored as float16)."""
    out.mkdir(parents=True, exist_ok=True)
    config = model.config
    tensors = {
        name: t.detach().to(torch.float16).contiguous()
        for name, t in model.state_dict().items()
        if not (config.tie_word_embeddings and name == "lm_head.weight")
    }
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "model.safetensors").chmod(0o644)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    tok.save(str(out / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": config.max_position_embeddings,
        # genmesh's Question/Answer prompt: the model is not instruction-tuned and was always prompted so
        "chat_template": DEFAULT_CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    generation_config = {
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.extra.get("pad_token_id"),
    }
    (out / "generation_config.json").write_text(json.dumps(generation_config, indent=2) + "\n")


def model_card(
    cfg: TrainConfig,
    command: str,
    params: int,
    steps: int,
    minutes: float,
    loss: float,
    tokens: int,
    samples: dict[str, str],
    size_bytes: int,
) -> str:
    """The README.md written next to the weights."""
    lines = [
        "# genmesh-tiny-llama",
        "",
        "A tiny Llama-architecture language model trained from scratch on the Python language reference",
        "that ships with CPython (`pydoc_data.topics`). It exists so genmesh can serve a real model offline;",
        "it continues reference-manual prose and memorises much of its corpus. It is not instruction-tuned.",
        "",
        "## Training",
        "",
        f"- command: `{command}`",
        f"- parameters: {params:,} (tied input/output embeddings)",
        f"- architecture: hidden {cfg.hidden_size}, {cfg.layers} layers, {cfg.heads} heads, {cfg.kv_heads} KV heads, "
        f"SwiGLU {cfg.intermediate_size}, context {cfg.context}, RoPE theta 10000",
        f"- tokenizer: byte-level BPE, vocabulary {cfg.vocab_size}, specials {BOS} {EOS} {PAD}; BOS prepended",
        f"- corpus: {tokens:,} tokens (each topic as `{BOS} text {EOS}`); no held-out split",
        f"- optimiser: AdamW (betas 0.9/0.95, weight decay {cfg.weight_decay}), peak LR {cfg.lr}, "
        f"{cfg.warmup} warm-up steps, cosine to {cfg.min_lr_ratio:g}x, grad clip 1.0",
        f"- batch: {cfg.batch} x {cfg.context} tokens; steps: {steps}; seed {cfg.seed}",
        f"- wall time: {minutes:.1f} minutes on CPU ({cfg.threads or torch.get_num_threads()} thread(s))",
        f"- final training loss (mean of the last {cfg.log_every} steps): {loss:.3f}",
        f"- model.safetensors: {size_bytes / 1e6:.1f} MB (float16)",
        "",
        f"Reproduce exactly with `--steps {steps} --seed {cfg.seed}` on the same torch build and thread count.",
        "",
        "## Greedy samples",
        "",
    ]
    for prompt, text in samples.items():
        lines += [f"Prompt `{prompt}`:", "", "```", text, "```", ""]
    return "\n".join(lines)


def train(cfg: TrainConfig, command: str) -> None:
    """Run the whole pipeline: tokenizer, data, training loop, save, model card."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    start = time.monotonic()
    docs = corpus()
    tok = train_tokenizer(docs, cfg.vocab_size)
    data = token_stream(tok, docs)
    print(f"corpus: {len(docs)} documents, {data.numel():,} tokens, vocab {tok.get_vocab_size()}", flush=True)
    model = build_model(cfg, tok)
    params = model.num_parameters()
    print(f"model: {params:,} parameters", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    positions = torch.arange(cfg.context).expand(cfg.batch, cfg.context)
    offsets = torch.arange(cfg.context + 1)
    budget_s = cfg.minutes * 60 - (time.monotonic() - start)
    total = cfg.steps or 10**9
    losses: list[float] = []
    train_start = time.monotonic()
    model.train()
    step = 0
    while step < total:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, cfg)
        starts = torch.randint(0, data.numel() - cfg.context - 1, (cfg.batch,), generator=gen)
        batch = data[starts.unsqueeze(1) + offsets]
        logits = model(batch[:, :-1], positions)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        step += 1
        if cfg.steps is None and step == 10:
            per_step = (time.monotonic() - train_start) / step
            total = max(step + 1, int(budget_s / per_step))
            print(f"timing: {per_step:.2f} s/step -> {total} steps in the budget", flush=True)
        if step % cfg.log_every == 0 or step == total:
            recent = losses[-cfg.log_every :]
            print(
                f"step {step}/{total} loss {sum(recent) / len(recent):.4f} lr {lr_at(step - 1, total, cfg):.2e} "
                f"elapsed {(time.monotonic() - start) / 60:.1f} min",
                flush=True,
            )
    minutes = (time.monotonic() - start) / 60
    final_loss = sum(losses[-cfg.log_every :]) / len(losses[-cfg.log_every :])
    save(model, tok, cfg.out)
    samples = {p: greedy_sample(model, tok, p) for p in SAMPLE_PROMPTS}
    for prompt, text in samples.items():
        print(f"--- {prompt!r}\n{text}", flush=True)
    size = (cfg.out / "model.safetensors").stat().st_size
    card = model_card(cfg, command, params, step, minutes, final_loss, data.numel(), samples, size)
    (cfg.out / "README.md").write_text(card)
    print(
        f"saved {cfg.out} ({size / 1e6:.1f} MB), {params:,} params, {step} steps, {minutes:.1f} min, "
        f"final loss {final_loss:.4f}",
        flush=True,
    )


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Command-line flags to a TrainConfig."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("models/genmesh-tiny-llama"))
    parser.add_argument("--minutes", type=float, default=20.0, help="total time budget (tokenizer included)")
    parser.add_argument("--steps", type=int, default=None, help="exact step count (overrides --minutes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    args = parser.parse_args(argv)
    try:
        return TrainConfig(
            out=args.out,
            minutes=args.minutes,
            steps=args.steps,
            seed=args.seed,
            threads=args.threads,
            layers=args.layers,
            batch=args.batch,
            lr=args.lr,
        )
    except ValueError as exc:
        parser.error(str(exc))
        raise


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    cfg = parse_args(argv)
    train(cfg, "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]))


if __name__ == "__main__":
    main()
