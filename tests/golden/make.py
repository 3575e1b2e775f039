#!/usr/bin/env python3
"""Generate golden fixtures for the Griffin / RecurrentGemma forward pass.

The reference is Google DeepMind's official `recurrentgemma` package (its
JAX/Flax implementation, `recurrentgemma.jax`), run in float32 on CPU.

For every case this script
  1. builds a small `recurrentgemma.jax.Griffin`, initialises its params with
     the official initialisers and then perturbs EVERY parameter with seeded
     noise (the official init leaves norms, biases and gate biases at zero,
     which would hide bugs);
  2. writes the weights as a Hugging Face `recurrent_gemma` checkpoint
     (`model.safetensors` + `config.json`), mirroring
     transformers' `convert_recurrent_gemma_to_hf.py` / DM `conversion.py`;
  3. runs the official model twice:
       * full sequence: one `Griffin.apply` over all T tokens,
         segment_pos = arange(T), cache=None            -> `logits`
       * decode: `Griffin.init_cache` then one `Griffin.apply` per token with
         the cache and segment_pos=[[t]]                 -> `logits_decode`
     and writes `expected.safetensors` (`tokens`, `logits`, `logits_decode`);
  4. checks: finite logits, 0.5 < std(logits) < 15, |logits - logits_decode|
     <= 1e-4, the HF file reloaded and mapped back to the Flax tree gives
     bit-identical params and bit-identical logits, and an independent float64
     numpy re-implementation that reads ONLY the HF tensors (HF layout
     conventions, DM window semantics) matches the official logits.

Re-run with `python3 tests/golden/make.py`; everything is seeded.
Requirements: pip install recurrentgemma jax flax safetensors numpy typeguard==2.13.3
"""

import json
import os
import platform
import sys
import zlib
from importlib import metadata

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402
from flax import traverse_util  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

import recurrentgemma  # noqa: E402,F401
import recurrentgemma.jax as rg  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

HERE = os.path.dirname(os.path.abspath(__file__))

BOS_ID = 2
CONV_WIDTH = 4
SOFT_CAP = 30.0

CASES = [
    dict(
        name="window_long",
        width=64,
        num_heads=2,
        lru_width=64,
        num_layers=6,
        vocab=256,
        window=8,
        seq_len=48,
        seed=1001,
        embed_mult=2.5,
    ),
    dict(
        name="lru_wide",
        width=96,
        num_heads=4,
        lru_width=128,
        num_layers=3,
        vocab=256,
        window=16,
        seq_len=40,
        seed=2002,
        embed_mult=2.5,
    ),
    dict(
        name="head64",
        width=128,
        num_heads=2,
        lru_width=128,
        num_layers=3,
        vocab=512,
        window=12,
        seq_len=40,
        seed=3003,
        embed_mult=2.5,
    ),
]


# --------------------------------------------------------------------------
# Versions
# --------------------------------------------------------------------------
def versions():
    out = {"python": platform.python_version()}
    for pkg in [
        "recurrentgemma",
        "jax",
        "jaxlib",
        "flax",
        "numpy",
        "safetensors",
        "ml_dtypes",
        "typeguard",
        "jaxtyping",
        "einops",
    ]:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    out["jax_backend"] = jax.default_backend()
    out["jax_default_matmul_precision"] = "highest"
    return out


# --------------------------------------------------------------------------
# Model construction
# --------------------------------------------------------------------------
def block_types(num_layers):
    pat = [
        rg.TemporalBlockType.RECURRENT,
        rg.TemporalBlockType.RECURRENT,
        rg.TemporalBlockType.ATTENTION,
    ]
    return tuple(pat[i % 3] for i in range(num_layers))


def make_config(c, window=None):
    return rg.GriffinConfig(
        vocab_size=c["vocab"],
        width=c["width"],
        mlp_expanded_width=3 * c["width"],
        num_heads=c["num_heads"],
        block_types=block_types(c["num_layers"]),
        embeddings_scale_by_sqrt_dim=True,
        attention_window_size=c["window"] if window is None else window,
        logits_soft_cap=SOFT_CAP,
        lru_width=c["lru_width"],
        scan_type=rg.ScanType.LINEAR_NATIVE,
    )


def make_model(cfg):
    return rg.Griffin(
        cfg,
        gradient_checkpointing=False,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
    )


def perturb(params, c):
    """Adds seeded noise to every parameter (name-based noise scales)."""
    flat = traverse_util.flatten_dict(params, sep="/")
    out = {}
    for name in sorted(flat):
        p = np.asarray(flat[name], dtype=np.float32)
        rng = np.random.default_rng([c["seed"], zlib.crc32(name.encode())])
        n = rng.standard_normal(p.shape)
        leaf = name.split("/")
        last = leaf[-1]
        parent = leaf[-2] if len(leaf) >= 2 else ""
        if last == "input_embedding":
            q = c["embed_mult"] * p + 0.3 * float(np.std(p)) * n
        elif last == "scale":  # RMSNorm scales (zero-centred)
            q = p + 0.15 * n
        elif last == "a_param":
            q = p + 0.5 * n
        elif parent == "conv_1d" and last == "w":
            q = p + 0.35 * n  # official init std 0.05 -> make all taps matter
        elif parent == "conv_1d" and last == "b":
            q = p + 0.1 * n
        elif parent in ("input_gate", "a_gate") and last == "b":
            q = p + 0.5 * n
        elif last in ("b", "bias"):
            q = p + 0.1 * n
        elif last in ("w", "kernel"):
            q = p + 0.3 * float(np.std(p)) * n
        else:
            raise ValueError(f"unhandled parameter {name}")
        out[name] = q.astype(np.float32)
    return traverse_util.unflatten_dict(out, sep="/")


# --------------------------------------------------------------------------
# DM Flax <-> HF mapping (mirrors transformers convert_recurrent_gemma_to_hf.py
# applied to the DM torch state dict produced by DM conversion.py)
# --------------------------------------------------------------------------
def flax_to_hf(params):
    """params: the Flax 'params' tree. Returns {hf_name: np.float32 array}."""
    P = params
    hf = {}
    hf["model.embed_tokens.weight"] = P["embedder"]["input_embedding"]
    hf["model.final_norm.weight"] = P["final_norm"]["scale"]
    i = 0
    while f"blocks.{i}" in P:
        b = P[f"blocks.{i}"]
        pre = f"model.layers.{i}."
        hf[pre + "temporal_pre_norm.weight"] = b["temporal_pre_norm"]["scale"]
        hf[pre + "channel_pre_norm.weight"] = b["channel_pre_norm"]["scale"]
        m = b["mlp_block"]
        w, bb = m["ffw_up"]["w"], m["ffw_up"]["b"]  # [2, D, F], [2, 1, 1, F]
        hf[pre + "mlp_block.gate_proj.weight"] = w[0].T
        hf[pre + "mlp_block.gate_proj.bias"] = bb[0, 0, 0]
        hf[pre + "mlp_block.up_proj.weight"] = w[1].T
        hf[pre + "mlp_block.up_proj.bias"] = bb[1, 0, 0]
        hf[pre + "mlp_block.down_proj.weight"] = m["ffw_down"]["kernel"].T
        hf[pre + "mlp_block.down_proj.bias"] = m["ffw_down"]["bias"]
        tb = pre + "temporal_block."
        if "recurrent_block" in b:
            r = b["recurrent_block"]
            for lin in ("linear_x", "linear_y", "linear_out"):
                hf[tb + lin + ".weight"] = r[lin]["kernel"].T
                hf[tb + lin + ".bias"] = r[lin]["bias"]
            # DM w[k, c] -> HF [c, 0, k]   (HF: v[:, None, :].transpose(0, 2))
            hf[tb + "conv_1d.weight"] = np.transpose(r["conv_1d"]["w"][:, None, :], (2, 1, 0))
            hf[tb + "conv_1d.bias"] = r["conv_1d"]["b"]
            lru = r["rg_lru"]
            hf[tb + "rg_lru.recurrent_param"] = lru["a_param"]
            hf[tb + "rg_lru.input_gate_weight"] = lru["input_gate"]["w"]
            hf[tb + "rg_lru.input_gate_bias"] = lru["input_gate"]["b"]
            hf[tb + "rg_lru.recurrent_gate_weight"] = lru["a_gate"]["w"]
            hf[tb + "rg_lru.recurrent_gate_bias"] = lru["a_gate"]["b"]
        elif "attention_block" in b:
            a = b["attention_block"]
            hf[tb + "q_proj.weight"] = a["proj_q"]["kernel"].T
            hf[tb + "k_proj.weight"] = a["proj_k"]["kernel"].T
            hf[tb + "v_proj.weight"] = a["proj_v"]["kernel"].T
            hf[tb + "o_proj.weight"] = a["proj_final"]["kernel"].T
            hf[tb + "o_proj.bias"] = a["proj_final"]["bias"]
        else:
            raise ValueError(f"unknown block type in blocks.{i}")
        i += 1
    return {k: np.ascontiguousarray(np.asarray(v, dtype=np.float32)) for k, v in hf.items()}


def hf_to_flax(hf, num_layers):
    """Inverse of flax_to_hf, written independently from the HF side."""
    P = {
        "embedder": {"input_embedding": hf["model.embed_tokens.weight"]},
        "final_norm": {"scale": hf["model.final_norm.weight"]},
    }
    for i in range(num_layers):
        pre = f"model.layers.{i}."
        tb = pre + "temporal_block."
        b = {
            "temporal_pre_norm": {"scale": hf[pre + "temporal_pre_norm.weight"]},
            "channel_pre_norm": {"scale": hf[pre + "channel_pre_norm.weight"]},
            "mlp_block": {
                "ffw_up": {
                    "w": np.stack(
                        [hf[pre + "mlp_block.gate_proj.weight"].T, hf[pre + "mlp_block.up_proj.weight"].T]
                    ),
                    "b": np.stack(
                        [hf[pre + "mlp_block.gate_proj.bias"], hf[pre + "mlp_block.up_proj.bias"]]
                    )[:, None, None, :],
                },
                "ffw_down": {
                    "kernel": hf[pre + "mlp_block.down_proj.weight"].T,
                    "bias": hf[pre + "mlp_block.down_proj.bias"],
                },
            },
        }
        if tb + "q_proj.weight" in hf:
            b["attention_block"] = {
                "proj_q": {"kernel": hf[tb + "q_proj.weight"].T},
                "proj_k": {"kernel": hf[tb + "k_proj.weight"].T},
                "proj_v": {"kernel": hf[tb + "v_proj.weight"].T},
                "proj_final": {"kernel": hf[tb + "o_proj.weight"].T, "bias": hf[tb + "o_proj.bias"]},
            }
        else:
            r = {}
            for lin in ("linear_x", "linear_y", "linear_out"):
                r[lin] = {"kernel": hf[tb + lin + ".weight"].T, "bias": hf[tb + lin + ".bias"]}
            r["conv_1d"] = {"w": hf[tb + "conv_1d.weight"][:, 0, :].T, "b": hf[tb + "conv_1d.bias"]}
            r["rg_lru"] = {
                "a_param": hf[tb + "rg_lru.recurrent_param"],
                "input_gate": {"w": hf[tb + "rg_lru.input_gate_weight"], "b": hf[tb + "rg_lru.input_gate_bias"]},
                "a_gate": {"w": hf[tb + "rg_lru.recurrent_gate_weight"], "b": hf[tb + "rg_lru.recurrent_gate_bias"]},
            }
            b["recurrent_block"] = r
        P[f"blocks.{i}"] = b
    return jax.tree_util.tree_map(lambda x: np.ascontiguousarray(np.asarray(x, np.float32)), P)


def expected_hf_shapes(c):
    D, H, L, V = c["width"], c["num_heads"], c["num_layers"], c["vocab"]
    lru, F, hd = c["lru_width"], 3 * c["width"], c["width"] // c["num_heads"]
    bw = lru // H
    s = {"model.embed_tokens.weight": (V, D), "model.final_norm.weight": (D,)}
    for i in range(L):
        pre = f"model.layers.{i}."
        tb = pre + "temporal_block."
        s.update({
            pre + "temporal_pre_norm.weight": (D,),
            pre + "channel_pre_norm.weight": (D,),
            pre + "mlp_block.gate_proj.weight": (F, D),
            pre + "mlp_block.gate_proj.bias": (F,),
            pre + "mlp_block.up_proj.weight": (F, D),
            pre + "mlp_block.up_proj.bias": (F,),
            pre + "mlp_block.down_proj.weight": (D, F),
            pre + "mlp_block.down_proj.bias": (D,),
        })
        if i % 3 == 2:
            s.update({
                tb + "q_proj.weight": (D, D),
                tb + "k_proj.weight": (hd, D),
                tb + "v_proj.weight": (hd, D),
                tb + "o_proj.weight": (D, D),
                tb + "o_proj.bias": (D,),
            })
        else:
            s.update({
                tb + "linear_x.weight": (lru, D),
                tb + "linear_x.bias": (lru,),
                tb + "linear_y.weight": (lru, D),
                tb + "linear_y.bias": (lru,),
                tb + "linear_out.weight": (D, lru),
                tb + "linear_out.bias": (D,),
                tb + "conv_1d.weight": (lru, 1, CONV_WIDTH),
                tb + "conv_1d.bias": (lru,),
                tb + "rg_lru.recurrent_param": (lru,),
                tb + "rg_lru.input_gate_weight": (H, bw, bw),
                tb + "rg_lru.input_gate_bias": (H, bw),
                tb + "rg_lru.recurrent_gate_weight": (H, bw, bw),
                tb + "rg_lru.recurrent_gate_bias": (H, bw),
            })
    return s


def hf_config(c):
    D = c["width"]
    return {
        "model_type": "recurrent_gemma",
        "architectures": ["RecurrentGemmaForCausalLM"],
        "hidden_size": D,
        "intermediate_size": 2 * 3 * D,  # HF convention: 2 x mlp_expanded_width
        "num_hidden_layers": c["num_layers"],
        "vocab_size": c["vocab"],
        "num_attention_heads": c["num_heads"],
        "num_key_value_heads": 1,
        "head_dim": D // c["num_heads"],
        "lru_width": c["lru_width"],
        "attention_window_size": c["window"],
        "conv1d_width": CONV_WIDTH,
        "logits_soft_cap": SOFT_CAP,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "partial_rotary_factor": 0.5,
        "block_types": ["recurrent", "recurrent", "attention"],
        "embeddings_scale_by_sqrt_dim": True,
        "hidden_activation": "gelu_pytorch_tanh",
        "tie_word_embeddings": True,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": BOS_ID,
        "torch_dtype": "float32",
    }


# --------------------------------------------------------------------------
# Official forward passes
# --------------------------------------------------------------------------
def official_full(model, params, tokens):
    T = tokens.shape[0]
    logits, _ = model.apply(
        {"params": params},
        jnp.asarray(tokens[None], jnp.int32),
        jnp.arange(T, dtype=jnp.int32)[None],
        None,
        return_logits=True,
        return_cache=False,
    )
    return np.asarray(logits[0], dtype=np.float32)


def official_decode(model, params, tokens):
    T = tokens.shape[0]
    cache = model.init_cache(batch_size=1, dtype=jnp.float32)

    @jax.jit
    def step(params, tok, pos, cache):
        return model.apply({"params": params}, tok, pos, cache, return_logits=True, return_cache=True)

    out = []
    for t in range(T):
        tok = jnp.asarray([[tokens[t]]], jnp.int32)
        pos = jnp.asarray([[t]], jnp.int32)
        logits, cache = step(params, tok, pos, cache)
        out.append(np.asarray(logits[0, 0], dtype=np.float32))
    return np.stack(out)


# --------------------------------------------------------------------------
# Independent float64 numpy reference reading ONLY the HF tensors.
# HF conventions: Linear W[out,in] (y = W x + b); conv HF[c,0,k], tap k=3 is the
# current token; block-diagonal gates x @ W[h] (input-major); DM window [t-W, t].
# --------------------------------------------------------------------------
def np_reference(hf, cfg_json, tokens):
    g = lambda k: hf[k].astype(np.float64)  # noqa: E731
    D = cfg_json["hidden_size"]
    H = cfg_json["num_attention_heads"]
    hd = cfg_json["head_dim"]
    L = cfg_json["num_hidden_layers"]
    W = cfg_json["attention_window_size"]
    lru = cfg_json["lru_width"]
    bw = lru // H
    T = len(tokens)
    eps = cfg_json["rms_norm_eps"]

    def rms(x, w):
        return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * (1.0 + w)

    def gelu(z):
        return 0.5 * z * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (z + 0.044715 * z**3)))

    def sigmoid(z):
        return 1.0 / (1.0 + np.exp(-z))

    def softplus(z):
        return np.logaddexp(0.0, z)

    def rope(x, pos):  # x [T, n, hd]; rotate first half, halves layout
        half = hd // 2
        xr, xp = x[..., :half], x[..., half:]
        q = half // 2
        inv = 1.0 / (10000.0 ** (2.0 * np.arange(q) / half))
        ang = pos[:, None, None] * inv[None, None, :]
        s, c = np.sin(ang), np.cos(ang)
        a, b = xr[..., :q], xr[..., q:]
        return np.concatenate([a * c - b * s, b * c + a * s, xp], -1)

    E = g("model.embed_tokens.weight")
    scale = float(np.float32(ml_dtypes.bfloat16(np.sqrt(D))))
    x = E[tokens] * scale  # [T, D]
    pos = np.arange(T, dtype=np.float64)
    for i in range(L):
        pre = f"model.layers.{i}."
        tb = pre + "temporal_block."
        u = rms(x, g(pre + "temporal_pre_norm.weight"))
        if tb + "q_proj.weight" in hf:
            q = (u @ g(tb + "q_proj.weight").T).reshape(T, H, hd)
            k = (u @ g(tb + "k_proj.weight").T).reshape(T, 1, hd)
            v = u @ g(tb + "v_proj.weight").T  # [T, hd]
            q, k = rope(q, pos), rope(k, pos)[:, 0]
            s = np.einsum("tnh,sh->nts", q, k) * hd**-0.5
            tt, ss = np.arange(T)[:, None], np.arange(T)[None, :]
            allowed = (ss <= tt) & (tt <= ss + W)
            s = np.where(allowed[None], s, -np.inf)
            s = s - s.max(-1, keepdims=True)
            p = np.exp(s)
            p /= p.sum(-1, keepdims=True)
            o = np.einsum("nts,sh->tnh", p, v).reshape(T, H * hd)
            h1 = o @ g(tb + "o_proj.weight").T + g(tb + "o_proj.bias")
        else:
            y = gelu(u @ g(tb + "linear_y.weight").T + g(tb + "linear_y.bias"))
            xb = u @ g(tb + "linear_x.weight").T + g(tb + "linear_x.bias")  # [T, lru]
            cw = g(tb + "conv_1d.weight")[:, 0, :]  # [lru, 4]
            K = cw.shape[1]
            cv = np.tile(g(tb + "conv_1d.bias"), (T, 1))
            for t in range(T):
                for kk in range(K):
                    src = t - (K - 1) + kk
                    if src >= 0:
                        cv[t] += cw[:, kk] * xb[src]
            cb = cv.reshape(T, H, bw)
            gx = sigmoid(np.einsum("thi,hij->thj", cb, g(tb + "rg_lru.input_gate_weight"))
                         + g(tb + "rg_lru.input_gate_bias")).reshape(T, lru)
            ga = sigmoid(np.einsum("thi,hij->thj", cb, g(tb + "rg_lru.recurrent_gate_weight"))
                         + g(tb + "rg_lru.recurrent_gate_bias")).reshape(T, lru)
            log_a = -8.0 * ga * softplus(g(tb + "rg_lru.recurrent_param"))
            a = np.exp(log_a)
            mult = np.sqrt(1.0 - np.exp(2.0 * log_a))
            h = np.zeros(lru)
            o = np.zeros((T, lru))
            for t in range(T):
                xn = cv[t] * gx[t] * (1.0 if t == 0 else mult[t])
                h = xn if t == 0 else a[t] * h + xn
                o[t] = h
            h1 = (o * y) @ g(tb + "linear_out.weight").T + g(tb + "linear_out.bias")
        x = x + h1
        u = rms(x, g(pre + "channel_pre_norm.weight"))
        gate = gelu(u @ g(pre + "mlp_block.gate_proj.weight").T + g(pre + "mlp_block.gate_proj.bias"))
        up = u @ g(pre + "mlp_block.up_proj.weight").T + g(pre + "mlp_block.up_proj.bias")
        x = x + (gate * up) @ g(pre + "mlp_block.down_proj.weight").T + g(pre + "mlp_block.down_proj.bias")
    x = rms(x, g("model.final_norm.weight"))
    logits = x @ E.T
    cap = cfg_json["logits_soft_cap"]
    return np.tanh(logits / cap) * cap


# --------------------------------------------------------------------------
def check(cond, msg):
    print(("  ok   " if cond else "  FAIL ") + msg)
    if not cond:
        raise SystemExit(f"check failed: {msg}")


def run_case(c):
    name = c["name"]
    print(f"\n=== case {name} ===")
    out_dir = os.path.join(HERE, name)
    os.makedirs(out_dir, exist_ok=True)
    T, V = c["seq_len"], c["vocab"]
    assert c["width"] % c["num_heads"] == 0 and c["lru_width"] % c["num_heads"] == 0

    cfg = make_config(c)
    model = make_model(cfg)

    rng = np.random.default_rng([c["seed"], 7])
    tokens = rng.integers(0, V, size=T).astype(np.int32)
    tokens[0] = BOS_ID

    variables = model.init(
        jax.random.PRNGKey(c["seed"]),
        jnp.asarray(tokens[None]),
        jnp.arange(T, dtype=jnp.int32)[None],
    )
    params = perturb(jax.device_get(variables["params"]), c)

    # --- HF export ---
    hf = flax_to_hf(params)
    shapes = expected_hf_shapes(c)
    check(set(hf) == set(shapes), f"HF tensor names match griffin.md §2.1 ({len(hf)} tensors)")
    bad = [k for k in hf if tuple(hf[k].shape) != shapes[k]]
    check(not bad, f"HF tensor shapes match griffin.md §2.1 {bad[:3]}")
    n_attn = sum(1 for i in range(c["num_layers"]) if i % 3 == 2)
    n_rec = c["num_layers"] - n_attn
    check(len(hf) == 21 * n_rec + 13 * n_attn + 2, "tensor count = 21*rec + 13*attn + 2")
    check("lm_head.weight" not in hf, "no lm_head.weight written (tied)")

    cfg_json = hf_config(c)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg_json, f, indent=2)
        f.write("\n")
    model_path = os.path.join(out_dir, "model.safetensors")
    save_file(hf, model_path, metadata={"format": "pt"})

    # --- official forward passes ---
    logits = official_full(model, params, tokens)
    logits_decode = official_decode(model, params, tokens)

    check(logits.shape == (T, V) and logits_decode.shape == (T, V), f"logits shape {logits.shape}")
    check(bool(np.all(np.isfinite(logits))) and bool(np.all(np.isfinite(logits_decode))), "logits finite")
    std = float(np.std(logits))
    absmax = float(np.max(np.abs(logits)))
    frac_big = float(np.mean(np.abs(logits) > 15.0))
    print(f"  logits std {std:.3f}, max|logit| {absmax:.3f}, frac |logit|>15: {frac_big:.4f}")
    check(0.5 < std < 15.0, f"0.5 < std(logits) = {std:.3f} < 15")
    dec_diff = float(np.max(np.abs(logits - logits_decode)))
    check(dec_diff <= 1e-4, f"max|logits - logits_decode| = {dec_diff:.3e} <= 1e-4")

    # --- round trip: reload HF file -> Flax tree -> official forward ---
    hf_back = load_file(model_path)
    check(all(hf_back[k].dtype == np.float32 for k in hf_back), "all stored tensors are F32")
    params_back = hf_to_flax(hf_back, c["num_layers"])
    fa = traverse_util.flatten_dict(params)
    fb = traverse_util.flatten_dict(params_back)
    check(set(fa) == set(fb), "round-trip Flax tree has the same leaves")
    same = all(fa[k].shape == fb[k].shape and np.array_equal(fa[k], fb[k]) for k in fa)
    check(same, "round-trip Flax params bit-identical")
    logits_rt = official_full(model, params_back, tokens)
    check(np.array_equal(logits, logits_rt), "official logits from reloaded HF file bit-identical")

    # --- independent numpy (f64) reference from the HF tensors ---
    ref = np_reference(hf_back, cfg_json, tokens)
    ref_diff = float(np.max(np.abs(ref - logits)))
    check(ref_diff < 2e-3, f"numpy f64 reference (HF layout) vs official: max diff {ref_diff:.3e} < 2e-3")

    # --- diagnostic: the window must matter in this fixture ---
    model_nowin = make_model(make_config(c, window=T + 1))
    logits_nowin = official_full(model_nowin, params, tokens)
    win_diff = np.max(np.abs(logits - logits_nowin), axis=-1)
    first_affected = int(np.argmax(win_diff > 1e-5)) if np.any(win_diff > 1e-5) else -1
    print(f"  window diagnostic: max|logits(W={c['window']}) - logits(no window)| = "
          f"{float(win_diff.max()):.3f}; first differing position {first_affected} "
          f"(expected W+1 = {c['window'] + 1})")
    check(float(win_diff.max()) > 1e-2, "window changes the logits (fixture exercises it)")
    check(first_affected == c["window"] + 1, "window keeps keys [t-W, t] (first change at t = W+1)")

    save_file(
        {
            "tokens": tokens.astype(np.int32),
            "logits": logits.astype(np.float32),
            "logits_decode": logits_decode.astype(np.float32),
        },
        os.path.join(out_dir, "expected.safetensors"),
    )

    for fn in ("config.json", "model.safetensors", "expected.safetensors"):
        os.chmod(os.path.join(out_dir, fn), 0o644)
    sizes = {fn: os.path.getsize(os.path.join(out_dir, fn))
             for fn in ("config.json", "model.safetensors", "expected.safetensors")}
    print(f"  files: {sizes}")
    return {
        "case": {k: v for k, v in c.items()},
        "mlp_expanded_width": 3 * c["width"],
        "head_dim": c["width"] // c["num_heads"],
        "embed_scale_bf16": float(np.float32(ml_dtypes.bfloat16(np.sqrt(c["width"])))),
        "tokens": tokens.tolist(),
        "logits_std": std,
        "logits_absmax": absmax,
        "max_abs_logits_minus_logits_decode": dec_diff,
        "max_abs_numpy_f64_ref_minus_logits": ref_diff,
        "max_abs_window_vs_no_window": float(win_diff.max()),
        "roundtrip_bit_identical": True,
        "file_sizes": sizes,
    }


def main():
    v = versions()
    print("versions:")
    for k, val in v.items():
        print(f"  {k}: {val}")
    results = {}
    for c in CASES:
        results[c["name"]] = run_case(c)
    meta = {
        "generator": "tests/golden/make.py",
        "reference": "recurrentgemma.jax.Griffin (Google DeepMind official package), float32, CPU, "
                     "scan_type LINEAR_NATIVE",
        "versions": v,
        "full_forward": "Griffin.apply({'params': p}, tokens[1,T], segment_pos=arange(T)[None], cache=None)",
        "decode": "cache = Griffin.init_cache(batch_size=1, dtype=float32); for t: "
                  "logits, cache = Griffin.apply({'params': p}, tokens[:, t:t+1], [[t]], cache)",
        "cases": results,
    }
    with open(os.path.join(HERE, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    print("\nall checks passed; wrote", os.path.join(HERE, "meta.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
