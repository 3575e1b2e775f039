// Matrix × a chunk of activation vectors (RMSNorm optionally fused in front, see
// matrix_rows.wgsl), f32 accumulation, with a fused epilogue:
//
//   v[t][r] = total[t][r] · scale[r] + bias[r]
//   epilogue 0: y[t][r] = v            1: y[t][r] += v   (residual add)
//            2: y[t][r] = cap · tanh(v / cap)            (logit soft-cap)
//
// y rows are y_offset + r in rows y_stride long. A workgroup computes THREADS / lanes rows for up to
// TOKEN_TILE tokens (its tile, group.y), so weights are read once per tile during prefill and decode
// reads each weight exactly once. token_source 1 takes only the tokens whose logits are wanted.

struct Params {
    m: MatrixRows,
    y_stride: u32,
    y_offset: u32,
    epilogue: u32,
    // 0: the chunk's tokens; 1: only the tokens whose logits are wanted (chunk.head_*).
    token_source: u32,
    cap: f32,
}

@group(0) @binding(6) var<storage, read_write> y: array<f32>;   // [tokens, y_stride]

@compute @workgroup_size(THREADS)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) group: vec3<u32>) {
    var first = 0u;
    var count = chunk.n_tokens;
    if params.token_source == 1u {
        first = chunk.head_first;
        count = chunk.head_count;
    }
    let tile_start = group.y * TOKEN_TILE;
    if tile_start >= count {
        return;
    }
    let tile_tokens = min(TOKEN_TILE, count - tile_start);
    tile_partials(li, group.x, first + tile_start, tile_tokens);

    let rows = rows_per_group();
    for (var job = li; job < rows * tile_tokens; job += THREADS) {
        let t = job / rows;
        let local_row = job % rows;
        let row = group.x * rows + local_row;
        if row >= params.m.rows {
            continue;
        }
        let value = row_total(t, local_row, 0u, row);
        let out = (tile_start + t) * params.y_stride + params.y_offset + row;
        switch params.epilogue {
            case 1u: { y[out] += value; }
            case 2u: { y[out] = params.cap * tanh(clamp(value / params.cap, -10.0, 10.0)); }
            default: { y[out] = value; }
        }
    }
}
