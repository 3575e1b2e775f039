// Local multi-query attention over a prefill chunk, flash-attention style (an online softmax over
// blocks of keys, nothing per block written out). Query row (t, h) at position P = P0 + t
// (P0 = step.position) attends to the keys max(0, P − W) ≤ p ≤ P:
//
//   s_p = (q_h[t] · k_p) · head_dim^(−1/2)
//   out[t][h] = Σ_p e^(s_p − m) · v_p / Σ_p e^(s_p − m),   m = max_p s_p
//
// taken KEY_TILE keys at a time with a running maximum m, l = Σ e^(s − m) and a = Σ e^(s − m)·v,
// both rescaled by e^(m_old − m_new) when a block raises m; out = a / l. Keys and values p < P0
// come from the ring (slot p mod slots; keys transposed [head_dim, slots], values [slots,
// head_dim]), p ≥ P0 from qkv (row p − P0, the key rotated by rope_chunk.wgsl): the chunk's own
// keys never go through the ring, so the ring needs only the window (ring_store.wgsl writes them
// after this kernel).
//
// Tiling. A workgroup takes QUERY_ROWS query rows: `tokens` (params) consecutive tokens × every
// head (rows beyond tokens · heads or past the chunk idle), against the union of their windows,
// one block of KEY_TILE keys after another. The key/value head is shared by every query head, so
// each key and value is read once per workgroup for all of its rows. LANES = THREADS / QUERY_ROWS
// threads own each row: thread (r = li / LANES, lane = li % LANES). Head dims pass through
// workgroup memory in slices of LANES vec4:
//   - scores: per slice, the rows' q slice (q_tile) and the block's key slice (kv_tile) are
//     staged; thread (r, lane) accumulates s for keys lane + LANES·i (i < 4) of row r;
//   - softmax: the scores go to `scores`; each thread of row r reads the row's block of scores
//     and updates the same m and l (the row's lanes agree), keeping e^(s − m) in registers;
//   - values: per slice, the block's value slice is staged (kv_tile again); thread (r, lane)
//     accumulates vec4 column lane of the slice, so a[s] holds columns (s · LANES + lane) · 4.
// Tile rows are padded by one vec4 (STRIDE) and score rows by one float, against bank conflicts.
// Workgroup memory: q_tile and kv_tile QUERY_ROWS · STRIDE vec4 each, scores QUERY_ROWS ·
// (KEY_TILE + 1) floats, and one u32: 4,608 + 4,608 + 4,224 + 4 = 13,444 bytes.

struct Params {
    heads: u32,
    head_dim: u32,
    window: u32,
    slots: u32,
    scale: f32,
    // Tokens per workgroup: max(1, QUERY_ROWS / heads).
    tokens: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<uniform> chunk: Chunk;
@group(0) @binding(2) var<storage, read> step: Step;
@group(0) @binding(3) var<storage, read> qkv: array<vec4<f32>>;        // [tokens, heads + 2, head_dim / 4]
@group(0) @binding(4) var<storage, read> ring_k: array<f32>;           // [head_dim, slots]
@group(0) @binding(5) var<storage, read> ring_v: array<vec4<f32>>;     // [slots, head_dim / 4]
@group(0) @binding(6) var<storage, read_write> out: array<vec4<f32>>;  // [tokens, heads, head_dim / 4]

// Threads per query row, and vec4 columns per slice.
const LANES: u32 = THREADS / QUERY_ROWS;
// The most slices of a head.
const SLICES: u32 = MAX_HEAD_DIM / (4u * LANES);
const STRIDE: u32 = LANES + 1u;
const SCORE_STRIDE: u32 = KEY_TILE + 1u;
const NONE: f32 = -3.0e38;

var<workgroup> start_position: u32;
var<workgroup> q_tile: array<vec4<f32>, QUERY_ROWS * STRIDE>;
var<workgroup> kv_tile: array<vec4<f32>, KEY_TILE * STRIDE>;
var<workgroup> scores: array<f32, QUERY_ROWS * SCORE_STRIDE>;

// Vec4 column `col` of key p (zero past `last` or past the head), from the ring or the chunk.
fn key_columns(p: u32, last: u32, p0: u32, col: u32, cols: u32) -> vec4<f32> {
    if p > last || col >= cols {
        return vec4<f32>(0.0);
    }
    if p < p0 {
        let n = params.slots;
        let slot = p % n;
        let d = 4u * col;
        let k = d * n + slot;
        return vec4<f32>(ring_k[k], ring_k[k + n], ring_k[k + 2u * n], ring_k[k + 3u * n]);
    }
    return qkv[((p - p0) * (params.heads + 2u) + params.heads) * cols + col];
}

// Vec4 column `col` of value p, the same way.
fn value_columns(p: u32, last: u32, p0: u32, col: u32, cols: u32) -> vec4<f32> {
    if p > last || col >= cols {
        return vec4<f32>(0.0);
    }
    if p < p0 {
        return ring_v[(p % params.slots) * cols + col];
    }
    return qkv[((p - p0) * (params.heads + 2u) + params.heads + 1u) * cols + col];
}

@compute @workgroup_size(THREADS)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) group: vec3<u32>) {
    let heads = params.heads;
    let cols = params.head_dim / 4u;
    let slices = (cols + LANES - 1u) / LANES;
    let t_first = group.y * params.tokens;
    let t_end = min(t_first + params.tokens, chunk.n_tokens);
    if t_first >= t_end {
        return;
    }
    if li == 0u {
        start_position = step.position;
    }
    let p0 = workgroupUniformLoad(&start_position);
    // The union of the tile's windows.
    let first_key = (p0 + t_first) - min(p0 + t_first, params.window);
    let last_key = p0 + t_end - 1u;

    let r = li / LANES;
    let lane = li % LANES;
    let t = t_first + r / heads;
    let h = r % heads;
    let live = r < params.tokens * heads && t < t_end;
    let position = p0 + t;
    let lowest = position - min(position, params.window);

    // This row's q, vec4 column s · LANES + lane in q[s], staged slice by slice.
    var q = array<vec4<f32>, SLICES>();
    let q_row = (t * (heads + 2u) + h) * cols;
    for (var s = 0u; s < SLICES; s++) {
        let col = s * LANES + lane;
        if live && col < cols {
            q[s] = qkv[q_row + col];
        }
    }

    var m = NONE;
    var l = 0.0;
    var a = array<vec4<f32>, SLICES>();
    // Staging: key j = li % KEY_TILE, column li / KEY_TILE (neighbouring threads on neighbouring
    // slots of the transposed key ring); value j = li / LANES, column li % LANES (on neighbouring
    // columns of one value).
    let key_j = li % KEY_TILE;
    let key_col = li / KEY_TILE;
    let value_j = li / LANES;
    let value_col = li % LANES;
    for (var block = first_key; block <= last_key; block += KEY_TILE) {
        var dots = vec4<f32>(0.0);
        for (var s = 0u; s < SLICES; s++) {
            if s < slices {
                workgroupBarrier();
                q_tile[r * STRIDE + lane] = q[s];
                let key = key_columns(block + key_j, last_key, p0, s * LANES + key_col, cols);
                kv_tile[key_j * STRIDE + key_col] = key;
                workgroupBarrier();
                for (var c = 0u; c < LANES; c++) {
                    let qc = q_tile[r * STRIDE + c];
                    dots += vec4<f32>(
                        dot(qc, kv_tile[lane * STRIDE + c]),
                        dot(qc, kv_tile[(lane + LANES) * STRIDE + c]),
                        dot(qc, kv_tile[(lane + 2u * LANES) * STRIDE + c]),
                        dot(qc, kv_tile[(lane + 3u * LANES) * STRIDE + c])
                    );
                }
            }
        }
        let score_row = r * SCORE_STRIDE;
        scores[score_row + lane] = dots.x * params.scale;
        scores[score_row + lane + LANES] = dots.y * params.scale;
        scores[score_row + lane + 2u * LANES] = dots.z * params.scale;
        scores[score_row + lane + 3u * LANES] = dots.w * params.scale;
        workgroupBarrier();

        // The online softmax of row r over the block's keys in its window.
        var block_max = NONE;
        for (var j = 0u; j < KEY_TILE; j++) {
            let p = block + j;
            if p >= lowest && p <= position {
                block_max = max(block_max, scores[score_row + j]);
            }
        }
        let m_new = max(m, block_max);
        let rescale = exp(m - m_new);
        m = m_new;
        var weights = array<f32, KEY_TILE>();
        var sum = 0.0;
        for (var j = 0u; j < KEY_TILE; j++) {
            let p = block + j;
            let visible = p >= lowest && p <= position;
            weights[j] = select(0.0, exp(scores[score_row + j] - m_new), visible);
            sum += weights[j];
        }
        l = l * rescale + sum;

        for (var s = 0u; s < SLICES; s++) {
            if s < slices {
                workgroupBarrier();
                let value = value_columns(block + value_j, last_key, p0, s * LANES + value_col, cols);
                kv_tile[value_j * STRIDE + value_col] = value;
                workgroupBarrier();
                var acc = a[s] * rescale;
                for (var j = 0u; j < KEY_TILE; j++) {
                    acc += weights[j] * kv_tile[j * STRIDE + lane];
                }
                a[s] = acc;
            }
        }
    }

    if live {
        let out_row = (t * heads + h) * cols;
        for (var s = 0u; s < SLICES; s++) {
            let col = s * LANES + lane;
            if col < cols {
                out[out_row + col] = a[s] / l;
            }
        }
    }
}
