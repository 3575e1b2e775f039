// RMSNorm with a zero-centred scale, one workgroup per token:
//
//   y[t][i] = x[t][i] · rsqrt(mean_j(x[t][j]²) + eps) · (1 + w[i])

struct Params {
    width: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<uniform> chunk: Chunk;
@group(0) @binding(2) var<storage, read> w: array<f32>;        // [width]
@group(0) @binding(3) var<storage, read> x: array<f32>;        // [tokens, width]
@group(0) @binding(4) var<storage, read_write> y: array<f32>;  // [tokens, width]

var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) group: vec3<u32>) {
    let t = group.x;
    if t >= chunk.n_tokens {
        return;
    }
    let base = t * params.width;
    var sum = 0.0;
    for (var i = li; i < params.width; i += 256u) {
        sum += x[base + i] * x[base + i];
    }
    partial[li] = sum;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride /= 2u) {
        if li < stride {
            partial[li] += partial[li + stride];
        }
        workgroupBarrier();
    }
    let inv_rms = 1.0 / sqrt(partial[0] / f32(params.width) + params.eps);
    for (var i = li; i < params.width; i += 256u) {
        y[base + i] = x[base + i] * inv_rms * (1.0 + w[i]);
    }
}
