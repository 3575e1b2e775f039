#!/usr/bin/env python3
"""Trains the demo model: a small Griffin (RecurrentGemma's architecture) on the King James Bible.

One command, seeded, CPU only, under an hour on a 2-core machine:

    pip install recurrentgemma jax flax optax safetensors numpy tokenizers typeguard==2.13.3
    python3 tools/train_demo/train.py            # writes models/demo-kjv/ and the golden

The model is Google DeepMind's official `recurrentgemma.jax.Griffin`, trained with optax.

Corpus: the King James Version from Debian's `bible-kjv-text` (public domain text; the package's
retrieval program, `bible-kjv`, is GPL-2+ and is only run, not shipped). Each chapter is one
document, wrapped in the Gemma chat template: a short user turn naming the chapter, then a model turn
with its verses, one per line, and `<end_of_turn>`. Every 48th chapter (25 of 1,189, 2.1 %) is held
out, never trained on; their text is `tests/data/demo-heldout.txt`.

Vocabulary: the real Gemma tokenizer and its full 256,000-row table. Only the rows of ids that occur
in the training text are trained; every other row stays zero, so its logit is exactly 0 and the
full softmax's normaliser is logsumexp(used logits, log(number of unused ids)). The loss uses that
normaliser, so the exported 256,000-row table behaves exactly as trained.

Outputs:
  models/demo-kjv/weights.safetensors  the body (bf16, Hugging Face names) plus the used embedding
                                       rows `model.embed_tokens.rows` (bf16) and their ids
                                       `model.embed_tokens.ids` (I32); `rg expand` rebuilds the
                                       full checkpoint
  models/demo-kjv/config.json          the Hugging Face config (vocab 256,000)
  models/demo-kjv/training.json        shape, steps, tokens seen, time, losses, held-out documents
  tests/data/demo-heldout.txt          the held-out chapters in the chat template
  tests/golden/trained/                the official logits on the shipped weights (see golden.py)
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

import recurrentgemma.jax as rg  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "golden"))
import make  # noqa: E402  (tests/golden/make.py: the Flax -> Hugging Face mapping the goldens use)

OUT = os.path.join(ROOT, "models", "demo-kjv")
HELDOUT_TXT = os.path.join(ROOT, "tests", "data", "demo-heldout.txt")
TOKENIZER = os.path.join(ROOT, "vendor", "gemma-tokenizer", "tokenizer.json")

FULL_VOCAB = 256_000
BOS = 2
SEED = 0

# The shape: the real block pattern (recurrent, recurrent, attention) twice, MQA with one KV head,
# RoPE on half of each head, a 128-token window that every held-out chapter crosses several times.
SHAPE = dict(width=128, num_layers=6, num_heads=2, lru_width=128, mlp_expanded_width=384, window=128)
BATCH, SEQ = 8, 512
STEPS = 1100
PEAK_LR, WARMUP, FINAL_LR_FRACTION = 2e-3, 40, 0.05
HELDOUT_EVERY, HELDOUT_OFFSET = 48, 24

PROMPTS = [
    "{ref}",
    "Read me {ref}.",
    "Recite {ref}, please.",
    "What does {ref} say?",
]
PASSAGE_WORDS, PASSAGE_VERSES = 25, 4


# --------------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------------
def kjv_text():
    """The whole KJV as printed by Debian's `bible` program, one chapter header per chapter."""
    work = tempfile.mkdtemp()
    try:
        for pkg in ("bible-kjv-text", "bible-kjv"):
            subprocess.run(["apt-get", "download", pkg], cwd=work, check=True, capture_output=True)
        for deb in sorted(f for f in os.listdir(work) if f.endswith(".deb")):
            subprocess.run(["dpkg-deb", "-x", deb, "root"], cwd=work, check=True)
        lib = os.path.join(work, "root", "usr", "lib")
        # The program looks for the data file relative to the working directory.
        out = subprocess.run(
            [os.path.join(work, "root", "usr", "bin", "bible"), "-d", "bible.data", "-l", "100000",
             "gen1:1-rev22:21"],
            cwd=lib, check=True, capture_output=True, text=True,
        ).stdout
        versions = subprocess.run(
            ["dpkg-deb", "-f", next(f for f in sorted(os.listdir(work)) if f.startswith("bible-kjv-text")),
             "Version"], cwd=work, check=True, capture_output=True, text=True).stdout.strip()
        return out, versions
    finally:
        shutil.rmtree(work)


def chapters(text):
    """[(book, chapter, [verse, ...])] in canonical order."""
    docs = []
    for line in text.split("\n"):
        header = re.match(r"^(\S.*) (\d+)$", line)
        verse = re.match(r"^\s+(\d+) (.*)$", line)
        if header:
            docs.append((header.group(1), int(header.group(2)), []))
        elif verse:
            docs[-1][2].append(verse.group(2).strip())
        elif line.strip():
            docs[-1][2][-1] += " " + line.strip()
    return docs


def chat_document(book, chapter, verses, rng):
    """A chapter as one conversation: it is read passage by passage (a few verses, about
    PASSAGE_WORDS words), each asked for by reference in a user turn and given in a model turn, so
    a reply is short and ends with `<end_of_turn>`."""
    turns, first = [], 0
    while first < len(verses):
        last = first
        while (last + 1 < len(verses) and last - first + 1 < PASSAGE_VERSES
               and sum(len(v.split()) for v in verses[first:last + 1]) < PASSAGE_WORDS):
            last += 1
        ref = f"{book} {chapter}:{first + 1}" + (f"-{last + 1}" if last > first else "")
        prompt = PROMPTS[rng.integers(len(PROMPTS))].format(ref=ref)
        turns.append(f"<start_of_turn>user\n{prompt}<end_of_turn>\n"
                     f"<start_of_turn>model\n" + "\n".join(verses[first:last + 1]) + "<end_of_turn>\n")
        first = last + 1
    return "".join(turns)


def corpus(tokenizer, rng):
    """The chapters, rendered as chat conversations (drawing their prompts from `rng`), split into
    held-out and training ones; the training ones tokenized and concatenated in an order drawn from
    `rng`, with where each starts."""
    text, kjv_version = kjv_text()
    docs = chapters(text)
    assert len(docs) == 1189, len(docs)
    rendered = [chat_document(b, c, v, rng) for b, c, v in docs]
    heldout = [i for i in range(len(docs)) if i % HELDOUT_EVERY == HELDOUT_OFFSET]
    train = [i for i in range(len(docs)) if i % HELDOUT_EVERY != HELDOUT_OFFSET]
    encoded = tokenizer.encode_batch([rendered[i] for i in train], add_special_tokens=False)
    order = rng.permutation(len(train))
    stream, starts = [], []
    for j in order:
        starts.append(len(stream))
        stream.extend(encoded[j].ids)
    return {
        "docs": docs, "kjv_version": kjv_version, "heldout": heldout,
        "heldout_text": "".join(rendered[i] for i in heldout),
        "stream": np.asarray(stream, np.int32), "starts": np.asarray(starts),
    }


def unigram(stream, ids):
    """The unigram NLL of `ids` from the counts in `stream`: add-one over the ids seen there, and
    one more count shared by all unseen ids."""
    counts = np.bincount(stream, minlength=FULL_VOCAB).astype(np.float64)
    seen = int((counts > 0).sum())
    mass = np.where(counts > 0, counts + 1.0, 1.0 / (FULL_VOCAB - seen)) / (counts.sum() + seen + 1.0)
    return float(-np.mean(np.log(mass[np.asarray(ids)])))


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
def griffin(vocab):
    pattern = [rg.TemporalBlockType.RECURRENT, rg.TemporalBlockType.RECURRENT, rg.TemporalBlockType.ATTENTION]
    cfg = rg.GriffinConfig(
        vocab_size=vocab,
        width=SHAPE["width"],
        mlp_expanded_width=SHAPE["mlp_expanded_width"],
        num_heads=SHAPE["num_heads"],
        block_types=tuple(pattern[i % 3] for i in range(SHAPE["num_layers"])),
        embeddings_scale_by_sqrt_dim=True,
        attention_window_size=SHAPE["window"],
        logits_soft_cap=30.0,
        lru_width=SHAPE["lru_width"],
        scan_type=rg.ScanType.LINEAR_NATIVE,
    )
    return rg.Griffin(cfg, gradient_checkpointing=False, dtype=jnp.float32, param_dtype=jnp.float32)


def full_vocab_nll(logits, targets, n_unused):
    """Per-token NLL under the 256,000-way softmax whose unused rows are zero (logit exactly 0)."""
    zeros = jnp.full(logits.shape[:-1] + (1,), jnp.log(float(n_unused)), logits.dtype)
    log_z = jax.nn.logsumexp(jnp.concatenate([logits, zeros], -1), -1)
    return log_z - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]


def hf_config(vocab):
    """The Hugging Face config, as the goldens write it (their MLP is 3 × width, as here)."""
    assert SHAPE["mlp_expanded_width"] == 3 * SHAPE["width"]
    config = make.hf_config(dict(
        width=SHAPE["width"], num_layers=SHAPE["num_layers"], vocab=vocab, num_heads=SHAPE["num_heads"],
        lru_width=SHAPE["lru_width"], window=SHAPE["window"]))
    config["torch_dtype"] = "bfloat16"
    return config


def write_safetensors(path, tensors, metadata):
    """A plain safetensors writer: numpy's bf16 (ml_dtypes) has no name in the safetensors package."""
    names = {np.dtype(ml_dtypes.bfloat16): "BF16", np.dtype(np.float32): "F32", np.dtype(np.int32): "I32"}
    header, offset, blobs = {"__metadata__": metadata}, 0, []
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        raw = a.tobytes()
        header[name] = {"dtype": names[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for raw in blobs:
            f.write(raw)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
def main():
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=STEPS, help="training steps (a smoke test uses a few)")
    ap.add_argument("--out", default=OUT, help="where the weights go")
    ap.add_argument("--trained", help="a params pickle that --keep wrote: export it (training time "
                    "then counts only this run)")
    ap.add_argument("--keep", help="also pickle the trained params here")
    args = ap.parse_args()
    steps, out = args.steps, args.out
    t_start = time.time()
    tokenizer = Tokenizer.from_file(TOKENIZER)
    rng = np.random.default_rng(SEED)
    c = corpus(tokenizer, rng)
    docs, heldout, stream, starts = c["docs"], c["heldout"], c["stream"], c["starts"]
    os.makedirs(os.path.dirname(HELDOUT_TXT), exist_ok=True)
    with open(HELDOUT_TXT, "w") as f:
        f.write(c["heldout_text"])

    used = np.unique(np.concatenate([stream, [BOS]]))
    n_unused = FULL_VOCAB - len(used)
    compact = np.full(FULL_VOCAB, -1, np.int32)
    compact[used] = np.arange(len(used))
    stream_c = compact[stream]
    bos_c = compact[BOS]

    heldout_ids = tokenizer.encode(c["heldout_text"], add_special_tokens=False).ids
    unseen = sorted(set(heldout_ids) - set(used.tolist()))

    unigram_nll = unigram(stream, heldout_ids)

    print(f"corpus: {len(docs)} chapters, {len(docs) - len(heldout)} trained ({len(stream):,} tokens), "
          f"{len(heldout)} held out ({len(heldout_ids):,} tokens); {len(used):,} ids used; "
          f"held-out unigram perplexity {np.exp(unigram_nll):.1f}", flush=True)

    model = griffin(len(used))
    positions = jnp.broadcast_to(jnp.arange(SEQ, dtype=jnp.int32), (BATCH, SEQ))
    params = model.init(jax.random.PRNGKey(SEED), jnp.zeros((BATCH, SEQ), jnp.int32), positions)["params"]
    n_params = int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
    n_embed = int(params["embedder"]["input_embedding"].size)

    schedule = optax.warmup_cosine_decay_schedule(
        0.0, PEAK_LR, min(WARMUP, steps - 1), steps, end_value=PEAK_LR * FINAL_LR_FRACTION)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0),
                            optax.adamw(schedule, b1=0.9, b2=0.98, weight_decay=0.01))
    opt_state = optimizer.init(params)

    def loss_fn(p, inputs, targets):
        logits, _ = model.apply({"params": p}, inputs, positions, None, return_logits=True, return_cache=False)
        return jnp.mean(full_vocab_nll(logits, targets, n_unused))

    @jax.jit
    def train_step(p, s, inputs, targets):
        loss, grads = jax.value_and_grad(loss_fn)(p, inputs, targets)
        updates, s = optimizer.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    def batch():
        """Half the rows open a conversation (BOS, then a chapter from its start, running on into
        the next ones); half start at a random token with an empty state."""
        rows = np.empty((BATCH, SEQ + 1), np.int32)
        for r in range(BATCH):
            if r % 2 == 0:
                s = starts[rng.integers(len(starts))]
                s = min(s, len(stream_c) - SEQ)
                rows[r, 0] = bos_c
                rows[r, 1:] = stream_c[s:s + SEQ]
            else:
                s = rng.integers(len(stream_c) - SEQ - 1)
                rows[r] = stream_c[s:s + SEQ + 1]
        return jnp.asarray(rows[:, :-1]), jnp.asarray(rows[:, 1:])

    losses = []
    t_train = time.time()
    if args.trained:
        import pickle
        with open(args.trained, "rb") as f:
            params, losses = pickle.load(f)
    for step in range(len(losses), steps):
        inputs, targets = batch()
        params, opt_state, loss = train_step(params, opt_state, inputs, targets)
        losses.append(float(loss))
        if step % 20 == 0 or step == steps - 1:
            el = time.time() - t_train
            print(f"step {step:4d}  loss {np.mean(losses[-20:]):.3f}  {el:6.0f} s", flush=True)
    train_seconds = time.time() - t_train
    if args.keep:
        import pickle
        with open(args.keep, "wb") as f:
            pickle.dump((jax.device_get(params), losses), f)

    # Ship bf16: everything after this point (held-out loss, golden) uses the rounded weights.
    params = jax.tree_util.tree_map(
        lambda x: np.asarray(x, np.float32).astype(ml_dtypes.bfloat16), jax.device_get(params))
    params_f32 = jax.tree_util.tree_map(lambda x: x.astype(np.float32), params)

    # Held-out NLL with the official model on the weights as shipped: one conversation from BOS,
    # decoded token by token through the official cache (its Conv1D takes one token at a time once
    # it has a cache), as `rg perplexity` scores a text. The table is the used rows plus one zero
    # row standing for every id unseen in training; each of the other zero rows adds exp(0) to Z.
    table = np.concatenate([params_f32["embedder"]["input_embedding"],
                            np.zeros((1, SHAPE["width"]), np.float32)])
    eval_params = dict(params_f32, embedder={"input_embedding": table})
    eval_model = griffin(len(used) + 1)
    unseen_slot = len(used)
    seq = jnp.asarray(np.where(compact[[BOS] + heldout_ids] >= 0, compact[[BOS] + heldout_ids], unseen_slot),
                      jnp.int32)

    @jax.jit
    def decode_nll(p, seq):
        def step(cache, xs):
            token, pos, target = xs
            logits, cache = eval_model.apply({"params": p}, token[None, None], pos[None, None], cache,
                                             return_logits=True, return_cache=True)
            return cache, full_vocab_nll(logits[0, 0], target, n_unused - 1)
        cache = eval_model.init_cache(batch_size=1, dtype=jnp.float32)
        n = seq.shape[0] - 1
        return jax.lax.scan(step, cache, (seq[:-1], jnp.arange(n, dtype=jnp.int32), seq[1:]))[1]

    t_eval = time.time()
    nll = np.asarray(decode_nll(eval_params, seq), np.float64)
    print(f"held-out scored in {time.time() - t_eval:.0f} s", flush=True)
    heldout_nll = float(np.mean(nll))
    print(f"held-out perplexity {np.exp(heldout_nll):.2f} (unigram {np.exp(unigram_nll):.1f})", flush=True)

    # Export.
    os.makedirs(out, exist_ok=True)
    body = make.flax_to_hf(jax.tree_util.tree_map(np.asarray, params_f32))
    rows = body.pop("model.embed_tokens.weight")
    tensors = {k: v.astype(ml_dtypes.bfloat16) for k, v in body.items()}
    tensors["model.embed_tokens.rows"] = rows.astype(ml_dtypes.bfloat16)
    tensors["model.embed_tokens.ids"] = used.astype(np.int32)
    write_safetensors(os.path.join(out, "weights.safetensors"), tensors,
                      {"format": "rg-compact-embedding", "vocab_size": str(FULL_VOCAB)})
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(hf_config(FULL_VOCAB), f, indent=2)
        f.write("\n")
    from importlib import metadata
    record = {
        "generator": "tools/train_demo/train.py",
        "corpus": {
            "source": f"Debian bible-kjv-text {c['kjv_version']} (King James Version, 1611/1769), "
                      "printed by Debian bible-kjv's `bible -l 100000 gen1:1-rev22:21`",
            "licence": "public domain text (the translation's copyright has expired); see the package's "
                       "copyright file",
            "documents": len(docs),
            "heldout_documents": [f"{docs[i][0]} {docs[i][1]}" for i in heldout],
            "heldout_rule": f"chapter index i (0-based, canonical order) with i % {HELDOUT_EVERY} == {HELDOUT_OFFSET}",
            "train_tokens": int(len(stream)),
            "heldout_tokens": len(heldout_ids),
            "used_ids": int(len(used)),
            "heldout_ids_unseen_in_training": len(unseen),
        },
        "shape": SHAPE,
        "parameters": {"total_trained": n_params, "embedding_rows_trained": n_embed,
                       "body": n_params - n_embed},
        "training": {
            "steps": steps, "batch": BATCH, "seq": SEQ, "tokens_seen": steps * BATCH * SEQ,
            "peak_lr": PEAK_LR, "warmup": WARMUP, "optimizer": "adamw(b1=0.9, b2=0.98, wd=0.01), clip 1.0, "
            "warmup + cosine", "seed": SEED, "train_seconds": round(train_seconds, 1),
            "total_seconds": round(time.time() - t_start, 1),
            "loss_first_20": float(np.mean(losses[:20])), "loss_last_20": float(np.mean(losses[-20:])),
            "machine": f"{os.cpu_count()} CPUs, JAX {jax.__version__} on {jax.default_backend()}",
        },
        "heldout": {"nll": heldout_nll, "perplexity": float(np.exp(heldout_nll)),
                    "unigram_nll": unigram_nll, "unigram_perplexity": float(np.exp(unigram_nll)),
                    "weights": "bf16 as shipped, official recurrentgemma.jax forward in f32"},
        "versions": {p: metadata.version(p) for p in ("recurrentgemma", "jax", "flax", "optax", "tokenizers")},
    }
    with open(os.path.join(out, "training.json"), "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    print(json.dumps(record["training"], indent=2))
    print(f"wrote {out}; total {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
