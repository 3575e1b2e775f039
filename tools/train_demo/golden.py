#!/usr/bin/env python3
"""The trained demo's golden: Google DeepMind's official `recurrentgemma.jax.Griffin` on the weights
as shipped (models/demo-kjv/, expanded to the full 256,000-row table), in float32 on the CPU.

    python3 tools/train_demo/golden.py        # after train.py; writes tests/golden/trained/

The passage is BOS plus the first PASSAGE tokens of the held-out text: it crosses the 128-token
window twice. A [T, 256,000] float32 table would be 80 MB, so `expected.safetensors` keeps:
  tokens     I32 [T]
  columns    I32 [K]     the ids whose logits are kept: every id of the passage, the top 8 of every
                         position, 1,024 other trained ids and 256 untrained (zero-row) ids, seeded
  logits     F32 [T, K]  the official full-sequence logits at those columns
  logsumexp  F32 [T]     over all 256,000 logits: the whole distribution's normaliser
`meta.json` adds the official held-out negative log-likelihood of the first PREFIX tokens (the
official decode path, token by token) and the unigram one of the same tokens from training-set
counts, which the Rust tests compare `rg perplexity` with.

Checks (it fails if one does not hold): the official decode path gives the full-sequence logits
(≤ 1e-3), an independent float64 numpy forward that reads the Hugging Face tensors agrees (≤ 2e-3),
and untrained ids' logits are exactly 0.
"""

import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import train  # noqa: E402
from make import check, hf_to_flax, np_reference  # noqa: E402  (tests/golden/make.py)

jax.config.update("jax_default_matmul_precision", "highest")

OUT = os.path.join(train.ROOT, "tests", "golden", "trained")
PASSAGE = 320
PREFIX = 512


def read_compact(path):
    """{name: float32 or int32 array} from the compact safetensors file train.py writes."""
    with open(path, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    dtypes = {"BF16": ml_dtypes.bfloat16, "F32": np.float32, "I32": np.int32}
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        a, b = e["data_offsets"]
        x = np.frombuffer(raw[8 + n + a:8 + n + b], dtypes[e["dtype"]]).reshape(e["shape"])
        out[name] = x if x.dtype == np.int32 else x.astype(np.float32)
    return out


def main():
    compact = read_compact(os.path.join(train.OUT, "weights.safetensors"))
    with open(os.path.join(train.OUT, "config.json")) as f:
        cfg_json = json.load(f)
    used = compact.pop("model.embed_tokens.ids")
    table = np.zeros((train.FULL_VOCAB, train.SHAPE["width"]), np.float32)
    table[used] = compact.pop("model.embed_tokens.rows")
    hf = dict(compact, **{"model.embed_tokens.weight": table})
    params = hf_to_flax(hf, train.SHAPE["num_layers"])
    model = train.griffin(train.FULL_VOCAB)

    tokenizer = Tokenizer.from_file(train.TOKENIZER)
    with open(train.HELDOUT_TXT) as f:
        heldout_ids = tokenizer.encode(f.read(), add_special_tokens=False).ids
    tokens = np.asarray([train.BOS] + heldout_ids[:PASSAGE - 1], np.int32)
    T = len(tokens)

    logits, _ = model.apply({"params": params}, jnp.asarray(tokens[None]), jnp.arange(T)[None], None,
                            return_logits=True, return_cache=False)
    logits = np.asarray(logits[0], np.float32)

    @jax.jit
    def decode_logits(p, seq):
        def step(cache, xs):
            token, pos = xs
            out, cache = model.apply({"params": p}, token[None, None], pos[None, None], cache,
                                     return_logits=True, return_cache=True)
            return cache, out[0, 0]
        cache = model.init_cache(batch_size=1, dtype=jnp.float32)
        return jax.lax.scan(step, cache, (seq, jnp.arange(seq.shape[0], dtype=jnp.int32)))[1]

    decoded = np.asarray(decode_logits(params, jnp.asarray(tokens)), np.float32)
    decode_diff = float(np.abs(decoded - logits).max())
    check(decode_diff <= 1e-3, f"official decode vs full-sequence logits: {decode_diff:.2e} <= 1e-3")
    ref = np_reference(hf, cfg_json, tokens)
    ref_diff = float(np.abs(ref - logits).max())
    check(ref_diff <= 2e-3, f"numpy float64 reference vs official: {ref_diff:.2e} <= 2e-3")
    unused = np.setdiff1d(np.arange(train.FULL_VOCAB), used)
    check(bool(np.all(logits[:, unused] == 0.0)), "untrained ids' logits are exactly 0")

    rng = np.random.default_rng(7)
    top = np.argsort(-logits, axis=-1)[:, :8].ravel()
    columns = np.unique(np.concatenate([
        tokens, top, rng.choice(used, 1024, replace=False), rng.choice(unused, 256, replace=False)]))
    lse = np.log(np.exp(logits.astype(np.float64) - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)

    os.makedirs(OUT, exist_ok=True)
    save_file({"tokens": tokens, "columns": columns.astype(np.int32),
               "logits": np.ascontiguousarray(logits[:, columns]), "logsumexp": lse.astype(np.float32)},
              os.path.join(OUT, "expected.safetensors"))

    # The held-out prefix `rg perplexity --max-tokens PREFIX` scores, through the decode path.
    seq = jnp.asarray([train.BOS] + heldout_ids[:PREFIX], jnp.int32)
    prefix_logits = np.asarray(decode_logits(params, seq[:-1]), np.float64)
    m = prefix_logits.max(-1, keepdims=True)
    logp = prefix_logits - (np.log(np.exp(prefix_logits - m).sum(-1, keepdims=True)) + m)
    prefix_nll = float(-np.mean(logp[np.arange(PREFIX), np.asarray(seq[1:])]))
    c = train.corpus(tokenizer, np.random.default_rng(train.SEED))
    prefix_unigram_nll = train.unigram(c["stream"], heldout_ids[:PREFIX])
    check(prefix_nll < prefix_unigram_nll - np.log(2.0),
          f"held-out prefix perplexity {np.exp(prefix_nll):.2f} < half the unigram one, "
          f"{np.exp(prefix_unigram_nll):.1f}")

    from importlib import metadata
    meta = {
        "generator": "tools/train_demo/golden.py",
        "reference": "recurrentgemma.jax.Griffin (official), float32, CPU, scan LINEAR_NATIVE, "
                     "weights models/demo-kjv expanded to 256,000 rows (bf16 values)",
        "versions": {p: metadata.version(p) for p in ("recurrentgemma", "jax", "flax", "numpy")},
        "passage_tokens": T,
        "columns": int(len(columns)),
        "max_abs_decode_minus_full": decode_diff,
        "max_abs_numpy_f64_minus_official": ref_diff,
        "logits_std": float(logits[:, used].std()),
        "heldout_prefix": {
            "tokens": PREFIX,
            "nll": prefix_nll,
            "perplexity": float(np.exp(prefix_nll)),
            "unigram_nll": prefix_unigram_nll,
            "unigram_perplexity": float(np.exp(prefix_unigram_nll)),
        },
    }
    with open(os.path.join(OUT, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
