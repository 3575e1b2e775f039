// The MLP's gated GELU from one stacked matrix [gate; up] (RMSNorm fused in front, see
// matrix_rows.wgsl):
//
//   hidden[t][r] = gelu_tanh(gate[t][r]) · up[t][r]
//   gate[t][r]   = total[t][r] · scale[r] + bias[r],   up[t][r] = the same for row r + F
//
// A pair kernel: each workgroup computes THREADS / 2 / lanes rows of both halves for up to TOKEN_TILE tokens.

struct Params {
    m: MatrixRows,
}

@group(0) @binding(6) var<storage, read_write> hidden: array<f32>;   // [tokens, F]

@compute @workgroup_size(THREADS)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) group: vec3<u32>) {
    let tile_start = group.y * TOKEN_TILE;
    if tile_start >= chunk.n_tokens {
        return;
    }
    let tile_tokens = min(TOKEN_TILE, chunk.n_tokens - tile_start);
    tile_partials(li, group.x, tile_start, tile_tokens);

    let rows = rows_per_group();
    for (var job = li; job < rows * tile_tokens; job += THREADS) {
        let t = job / rows;
        let local_row = job % rows;
        let row = group.x * rows + local_row;
        if row < params.m.rows {
            let gate = row_total(t, local_row, 0u, row);
            let up = row_total(t, local_row, 1u, row);
            hidden[(tile_start + t) * params.m.rows + row] = gelu_tanh(gate) * up;
        }
    }
}
