//! One typed constructor per kernel. Each takes its inputs by name (buffers, shapes, the
//! matrix), builds its uniform block, binds its buffers in its shader's `@binding` order (written
//! here and in the shader, nowhere else) and says how many workgroups a chunk needs. The command
//! list ([`super::forward`]) and the kernel tests both build their dispatches through these.

use super::cost::{Bytes, Cost, VocabPasses};
use super::kernels::*;
use super::matrix::{GpuMatrix, MatrixFormat};
use super::GpuContext;

/// How many workgroups a dispatch needs for a chunk of `n` tokens (of which `head` get logits).
#[derive(Clone, Copy, Debug)]
pub enum Groups {
    Fixed(u32, u32),
    /// `(x, n)`: one workgroup row per token.
    PerToken(u32),
    /// `(n, y)`: one workgroup column per token.
    TokenMajor(u32),
    /// `(x, ⌈n / TOKEN_TILE⌉)` for matmuls over the chunk's tokens.
    TokenTiles(u32),
    /// `(x, ⌈head / TOKEN_TILE⌉)` for the logits matmuls.
    HeadTiles(u32),
    /// `(x, ⌈n / tokens⌉)`, or `(x, ⌈head / tokens⌉)` with `head`: tiles of `tokens` tokens (the
    /// tiled matrix kernel's [`TILE_TOKENS`]).
    Tiles {
        x: u32,
        tokens: u32,
        head: bool,
    },
}

impl Groups {
    pub fn size(self, n: u32, head: u32) -> (u32, u32) {
        match self {
            Groups::Fixed(x, y) => (x, y),
            Groups::PerToken(x) => (x, n),
            Groups::TokenMajor(y) => (n, y),
            Groups::TokenTiles(x) => (x, n.div_ceil(TOKEN_TILE)),
            Groups::HeadTiles(x) => (x, head.div_ceil(TOKEN_TILE)),
            Groups::Tiles { x, tokens, head: false } => (x, n.div_ceil(tokens)),
            Groups::Tiles { x, tokens, head: true } => (x, head.div_ceil(tokens)),
        }
    }
}

/// One dispatch, ready to record.
pub struct Op {
    pipeline: PipelineKey,
    bind_group: wgpu::BindGroup,
    groups: Groups,
    cost: Cost,
}

impl Op {
    /// The kernel's name (its shader file's).
    pub fn kernel_name(&self) -> &'static str {
        self.pipeline.key.kernel.source().0
    }

    /// Bytes of weights this dispatch reads over `n` tokens.
    pub fn weight_bytes_read(&self, n: u32) -> u64 {
        self.cost.weights.over(n)
    }

    /// Which pipeline it runs.
    pub fn pipeline(&self) -> PipelineId {
        self.pipeline.key
    }

    /// What the dispatch costs a GPU, from its kernel's constants.
    pub fn cost(&self) -> &Cost {
        &self.cost
    }

    /// Workgroups it runs for a chunk of `n` tokens of which `head` get logits.
    pub fn workgroups(&self, n: u32, head: u32) -> u32 {
        let (x, y) = self.groups.size(n, head);
        x * y
    }
}

/// Records `ops` for a chunk of `n` tokens of which `head` get logits, skipping empty dispatches
/// and pipeline switches that change nothing.
pub fn record<'o>(pass: &mut wgpu::ComputePass, ops: impl IntoIterator<Item = &'o Op>, n: u32, head: u32) {
    let mut current = None;
    for op in ops {
        let (x, y) = op.groups.size(n, head);
        if x == 0 || y == 0 {
            continue;
        }
        if current != Some(op.pipeline.key) {
            pass.set_pipeline(&op.pipeline.pipeline);
            current = Some(op.pipeline.key);
        }
        pass.set_bind_group(0, &op.bind_group, &[]);
        pass.dispatch_workgroups(x, y, 1);
    }
}

/// RMSNorm in front of a matrix: its (zero-centred) weight and ε.
#[derive(Clone, Copy)]
pub struct Norm<'a> {
    pub weight: &'a wgpu::Buffer,
    pub eps: f32,
}

/// What a matmul does with `v = W·x̂ + b` (`matmul.wgsl`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Output {
    /// `y = v`
    Store,
    /// `y += v` (the residual stream)
    Add,
    /// `y = cap · tanh(v / cap)`, for the tokens that get logits only
    SoftCapLogits(f32),
}

/// The recurrent block's input branches (`recurrent_in.wgsl`).
pub struct RecurrentIn<'a> {
    /// `[linear_y; linear_x]`
    pub linear_y_x: &'a GpuMatrix,
    pub norm: Norm<'a>,
    pub x: &'a wgpu::Buffer,
    pub step: &'a wgpu::Buffer,
    /// The conv taps `[lru, K]`, then its bias.
    pub conv: &'a wgpu::Buffer,
    pub conv_width: usize,
    pub history: &'a wgpu::Buffer,
    pub branches: &'a wgpu::Buffer,
}

/// The RG-LRU with its gates (`rg_lru_gates.wgsl`).
pub struct RgLru<'a> {
    /// `[input_gate; recurrent_gate]`, block-diagonal with blocks `gates.cols` wide.
    pub gates: &'a GpuMatrix,
    pub branches: &'a wgpu::Buffer,
    pub step: &'a wgpu::Buffer,
    pub log_a_scale: &'a wgpu::Buffer,
    pub h: &'a wgpu::Buffer,
    pub out: &'a wgpu::Buffer,
}

/// The local attention's shape and key/value ring.
#[derive(Clone, Copy)]
pub struct AttentionShape {
    pub heads: usize,
    pub head_dim: usize,
    pub window: usize,
    /// Ring slots: at least the window plus a chunk.
    pub slots: usize,
}

impl AttentionShape {
    /// Bytes of one token's queries, key and value.
    fn qkv_bytes(&self) -> u64 {
        (self.heads as u64 + 2) * self.head_dim as u64 * 4
    }

    /// The RoPE kernels' parameters (`rope_kv.wgsl`, `rope_chunk.wgsl`).
    fn rope_params(&self, rotary_half: usize) -> RopeParams {
        RopeParams {
            heads: self.heads as u32,
            head_dim: self.head_dim as u32,
            rotary_half: rotary_half as u32,
            slots: self.slots as u32,
        }
    }
}

/// A layer's key and value rings.
#[derive(Clone, Copy)]
pub struct KeyValueRing<'a> {
    pub keys: &'a wgpu::Buffer,
    pub values: &'a wgpu::Buffer,
}

/// The activation buffers of attention over a chunk (`attention.wgsl`, `attention_combine.wgsl`).
pub struct AttentionBuffers<'a> {
    pub qkv: &'a wgpu::Buffer,
    pub partial_a: &'a wgpu::Buffer,
    pub partial_ml: &'a wgpu::Buffer,
    pub out: &'a wgpu::Buffer,
}

/// Builds ops on one device, against one `Chunk` block shared by every op of a command list.
pub struct Ops<'a> {
    pub ctx: &'a GpuContext,
    pub kernels: &'a Kernels,
    pub chunk: &'a wgpu::Buffer,
    /// Bound where an optional input (the norm weight) is absent.
    pub unused: &'a wgpu::Buffer,
    /// What computes the row kernels' products: [`Core::Gemv`] for a plan of one token.
    pub core: Core,
}

impl Ops<'_> {
    /// An op whose uniform block is `params`, made here: `@binding(0)` the block, `(1)` the
    /// chunk, then `rest`. `w` is the matrix, for a matrix kernel.
    fn op<T: bytemuck::Pod>(
        &self,
        kernel: Kernel,
        w: Option<&GpuMatrix>,
        params: &T,
        rest: &[&wgpu::Buffer],
        groups: Groups,
    ) -> Op {
        self.op_on(self.kernels.pipeline(kernel, w.map(|w| w.format)), params, rest, groups)
    }

    /// As [`Self::op`], on `pipeline`.
    fn op_on<T: bytemuck::Pod>(&self, pipeline: PipelineKey, params: &T, rest: &[&wgpu::Buffer], groups: Groups) -> Op {
        let params = self.ctx.uniform(pipeline.key.kernel.source().0, bytemuck::bytes_of(params));
        let mut buffers = vec![&params, self.chunk];
        buffers.extend(rest);
        self.bound(pipeline, &buffers, groups)
    }

    /// `gemv.wgsl`'s shape for the rows `m` of a matrix in `format`, in a plan on it and where it
    /// takes them: the rows of a workgroup must share one block of a block-diagonal matrix.
    fn gemv_shape(&self, m: &MatrixRows, format: MatrixFormat) -> Option<GemvShape> {
        if self.core != Core::Gemv {
            return None;
        }
        let shape = GemvShape::for_cols(m.cols, format)?;
        let rows = shape.rows_per_group(m.halves);
        let one_block = m.block_rows == u32::MAX
            || (shape.tiles == 1 && m.block_rows.is_multiple_of(rows) && m.row_offset.is_multiple_of(rows));
        one_block.then_some(shape)
    }

    /// A row kernel's op on `gemv.wgsl` when [`Self::gemv_shape`] takes `m` (with its
    /// workgroups along x), else on the row kernels' core with `v1_groups_x`.
    #[allow(clippy::too_many_arguments)]
    fn row_op<T: bytemuck::Pod>(
        &self,
        kernel: Kernel,
        w: &GpuMatrix,
        m: &MatrixRows,
        params: &T,
        rest: &[&wgpu::Buffer],
        groups: impl Fn(u32) -> Groups,
        weights: Bytes,
    ) -> Op {
        match self.gemv_shape(m, w.format) {
            Some(shape) => {
                let groups_x = m.rows.div_ceil(shape.rows_per_group(m.halves));
                let pipeline = self.kernels.gemv_pipeline(kernel, w.format, shape);
                let op = self.op_on(pipeline, params, rest, groups(groups_x));
                Op { cost: Cost::gemv(m, weights, shape, groups_x), ..op }
            }
            None => {
                let op = self.op(kernel, Some(w), params, rest, groups(m.row_groups()));
                Op { cost: Cost::rows(m, w.format, weights), ..op }
            }
        }
    }

    /// An op with `@binding(i)` = `buffers[i]`.
    fn bound(&self, pipeline: PipelineKey, buffers: &[&wgpu::Buffer], groups: Groups) -> Op {
        let kernel = pipeline.key.kernel;
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, buffer)| wgpu::BindGroupEntry { binding: i as u32, resource: buffer.as_entire_binding() })
            .collect();
        let bind_group = self.ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel.source().0),
            layout: &pipeline.pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        Op { pipeline, bind_group, groups, cost: Cost::default() }
    }

    /// `x[t] = table[token_t] · embedding_scale` (`embed.wgsl`): one op per row piece.
    pub fn embed(&self, table: &GpuMatrix, tokens: &wgpu::Buffer, x: &wgpu::Buffer, embedding_scale: f32) -> Vec<Op> {
        let blocks = (table.cols / table.format.block_columns()) as u32;
        table
            .parts
            .iter()
            .map(|part| {
                let params = EmbedParams { m: table.part_rows(part), embedding_scale, _pad: [0; 3] };
                let buffers = [&part.values, &table.affine, tokens, x];
                let op = self.op(
                    Kernel::Embed,
                    Some(table),
                    &params,
                    &buffers,
                    Groups::PerToken(blocks.div_ceil(SMALL_THREADS)),
                );
                // Only the piece holding the token reads its row: count the row once.
                let row = if part.row_start == 0 { table.row_bytes() } else { 0 };
                // A lookup of one row, not a matrix product: left out of the load averages.
                let cost = Cost::elementwise(SMALL_THREADS, Bytes::default());
                Op { cost: Cost { weights: Bytes::per_token(row), ..cost }, ..op }
            })
            .collect()
    }

    /// `y ⟵ W · x̂ + b` for the chunk's tokens, x̂ = RMSNorm(x) with `norm` if given (`matmul.wgsl`,
    /// or `matmul_short.wgsl` for rows of one lane): one op per row piece of `w`.
    pub fn matmul(
        &self,
        w: &GpuMatrix,
        norm: Option<Norm>,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        output: Output,
    ) -> Vec<Op> {
        self.matmul_pieces(w, norm, x, y, output, |m, head, params, buffers, bytes| {
            let weights = Bytes::per_tile(bytes, TOKEN_TILE);
            let tiles = |x| if head { Groups::HeadTiles(x) } else { Groups::TokenTiles(x) };
            if m.lanes == 1 {
                // Rows of one lane, in both generations: whole rows per thread, no workgroup
                // memory or barrier (`matmul_short.wgsl`), so a CPU driver pays its per-workgroup
                // cost far less often; a real GPU spends little on rows this short.
                let op = self.op(Kernel::MatmulShort, Some(w), params, buffers, tiles(m.short_groups()));
                return Op { cost: Cost::short_rows(m, w.format, weights), ..op };
            }
            self.row_op(Kernel::Matmul, w, m, params, buffers, tiles, weights)
        })
    }

    /// One op per row piece of `w` computing `y ⟵ W · x̂ + b` with `output`'s epilogue: `make`
    /// builds it from the piece's rows, whether it takes the head tokens, its uniform block, its
    /// buffers after the block and the chunk, and the bytes of weights it reads.
    fn matmul_pieces(
        &self,
        w: &GpuMatrix,
        norm: Option<Norm>,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        output: Output,
        make: impl Fn(&MatrixRows, bool, &MatmulParams, &[&wgpu::Buffer], u64) -> Op,
    ) -> Vec<Op> {
        let (epilogue, cap, head) = match output {
            Output::Store => (Epilogue::Store, 0.0, false),
            Output::Add => (Epilogue::Add, 0.0, false),
            Output::SoftCapLogits(cap) => (Epilogue::SoftCap, cap, true),
        };
        w.parts
            .iter()
            .map(|part| {
                let mut m = w.part_rows(part);
                if let Some(norm) = norm {
                    m = m.with_norm(norm.eps);
                }
                let params = MatmulParams {
                    m,
                    y_stride: w.rows as u32,
                    y_offset: part.row_start as u32,
                    epilogue: epilogue as u32,
                    token_source: head as u32,
                    cap,
                    _pad: [0; 3],
                };
                let norm = norm.map(|n| n.weight).unwrap_or(self.unused);
                let buffers = [&part.values, &w.affine, norm, x, y];
                let norm_bytes = if m.has_norm == 1 { norm.size() } else { 0 };
                make(&m, head, &params, &buffers, w.row_bytes() * part.rows as u64 + norm_bytes)
            })
            .collect()
    }

    /// `hidden = GELU(gate(x̂)) ⊙ up(x̂)` from the stack `[gate; up]` (`geglu.wgsl`).
    pub fn geglu(&self, gate_up: &GpuMatrix, norm: Norm, x: &wgpu::Buffer, hidden: &wgpu::Buffer) -> Op {
        let m = gate_up.pair_rows().with_norm(norm.eps);
        let buffers = [gate_up.values(), &gate_up.affine, norm.weight, x, hidden];
        let weights = Bytes::per_tile(gate_up.bytes() + norm.weight.size(), TOKEN_TILE);
        self.row_op(Kernel::Geglu, gate_up, &m, &PairParams { m }, &buffers, Groups::TokenTiles, weights)
    }

    /// `branches = [GELU(linear_y(x̂)), Conv1D(linear_x(x̂))]` (`recurrent_in.wgsl`).
    pub fn recurrent_in(&self, r: RecurrentIn) -> Op {
        let m = r.linear_y_x.pair_rows().with_norm(r.norm.eps);
        let params = RecurrentInParams { m, width: r.conv_width as u32, _pad: [0; 3] };
        let w = r.linear_y_x;
        let buffers = [w.values(), &w.affine, r.norm.weight, r.x, r.step, r.conv, r.history, r.branches];
        let weights = Bytes::per_tile(w.bytes() + r.norm.weight.size() + r.conv.size(), TOKEN_TILE);
        let op = self.row_op(Kernel::RecurrentIn, w, &m, &params, &buffers, |x| Groups::Fixed(x, 1), weights);
        // Its tiles run in one workgroup, each with a barrier before the conv.
        Op { cost: Cost { tiles_in_sequence: true, barriers: op.cost.barriers + 1, ..op.cost }, ..op }
    }

    /// `out = RG-LRU(conv, gates(conv)) ⊙ GELU(y)` over `branches = [GELU(y), conv]`
    /// (`rg_lru_gates.wgsl`).
    pub fn rg_lru(&self, r: RgLru) -> Op {
        let lru = r.gates.rows / 2;
        let m = r.gates.pair_rows().block_diagonal(r.gates.cols, 2 * lru, lru);
        let buffers = [r.gates.values(), &r.gates.affine, self.unused, r.branches, r.step, r.log_a_scale, r.h, r.out];
        let weights = Bytes::per_tile(r.gates.bytes() + r.log_a_scale.size(), TOKEN_TILE);
        let params = PairParams { m };
        let op = self.row_op(Kernel::RgLruGates, r.gates, &m, &params, &buffers, |x| Groups::Fixed(x, 1), weights);
        // Its tiles run in one workgroup, each with a barrier before the recurrence.
        Op { cost: Cost { tiles_in_sequence: true, barriers: op.cost.barriers + 1, ..op.cost }, ..op }
    }

    /// `y ⟵ W · x̂ + b` for the chunk's tokens (or, soft-capped, the head tokens), x̂ = RMSNorm(x)
    /// with `norm` if given, as [`Self::matmul`] but in tiles of [`TILE_TOKENS`] tokens ×
    /// [`TILE_ROWS`] rows that read each weight once per tile, for prefill (`matmul_tiled.wgsl`):
    /// one op per row piece of `w`, which must [`GpuMatrix::fits_tiles`].
    pub fn matmul_tiled(
        &self,
        w: &GpuMatrix,
        norm: Option<Norm>,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        output: Output,
    ) -> Vec<Op> {
        assert!(w.fits_tiles(), "matmul_tiled takes rows of whole {TILE_K}-column steps, not {}", w.cols);
        self.matmul_pieces(w, norm, x, y, output, |m, head, params, buffers, bytes| {
            let groups = Groups::Tiles { x: m.tile_groups(), tokens: TILE_TOKENS, head };
            let op = self.op(Kernel::MatmulTiled, Some(w), params, buffers, groups);
            Op { cost: Cost::tiled(m, w.format, Bytes::per_tile(bytes, TILE_TOKENS)), ..op }
        })
    }

    /// `hidden = GELU(gate(x̂)) ⊙ up(x̂)` from the stack `[gate; up]`, x̂ = RMSNorm(x), as
    /// [`Self::geglu`] but in tiles of [`TILE_TOKENS`] tokens × [`TILE_ROWS`] / 2 rows of each
    /// half, for prefill (`matmul_tiled.wgsl`, epilogue GeGLU). `gate_up` must
    /// [`GpuMatrix::fits_tiles`].
    pub fn geglu_tiled(&self, gate_up: &GpuMatrix, norm: Norm, x: &wgpu::Buffer, hidden: &wgpu::Buffer) -> Op {
        assert!(gate_up.fits_tiles(), "geglu_tiled takes rows of whole {TILE_K}-column steps, not {}", gate_up.cols);
        let m = gate_up.pair_rows().with_norm(norm.eps);
        let params = MatmulParams {
            m,
            y_stride: m.rows,
            y_offset: 0,
            epilogue: Epilogue::Geglu as u32,
            token_source: 0,
            cap: 0.0,
            _pad: [0; 3],
        };
        let buffers = [gate_up.values(), &gate_up.affine, norm.weight, x, hidden];
        let groups = Groups::Tiles { x: m.tile_groups(), tokens: TILE_TOKENS, head: false };
        let op = self.op(Kernel::MatmulTiled, Some(gate_up), &params, &buffers, groups);
        let weights = Bytes::per_tile(gate_up.bytes() + norm.weight.size(), TILE_TOKENS);
        Op { cost: Cost::tiled(&m, gate_up.format, weights), ..op }
    }

    /// The RG-LRU's gate logits, before σ: `out[t] = [input_gate(c[t]), recurrent_gate(c[t])]`,
    /// `[n, 2·lru]`, over the conv half `c` of `branches = [GELU(y), conv]`, from the stack of the
    /// two block-diagonal gates with square blocks `gates.cols` wide, in tiles of [`TILE_TOKENS`]
    /// tokens (`matmul_tiled.wgsl`, a pair stored as it is stacked). `gates` must
    /// [`GpuMatrix::gates_fit_tiles`].
    pub fn gates_tiled(&self, gates: &GpuMatrix, branches: &wgpu::Buffer, out: &wgpu::Buffer) -> Op {
        assert!(gates.gates_fit_tiles(), "gates_tiled takes blocks of a multiple of {} rows", TILE_ROWS / 2);
        let lru = gates.rows / 2;
        let m = gates.pair_rows().block_diagonal(gates.cols, 2 * lru, lru);
        let params = MatmulParams {
            m,
            y_stride: 2 * lru as u32,
            y_offset: 0,
            epilogue: Epilogue::Store as u32,
            token_source: 0,
            cap: 0.0,
            _pad: [0; 3],
        };
        let buffers = [gates.values(), &gates.affine, self.unused, branches, out];
        let groups = Groups::Tiles { x: m.tile_groups(), tokens: TILE_TOKENS, head: false };
        let op = self.op(Kernel::MatmulTiled, Some(gates), &params, &buffers, groups);
        Op { cost: Cost::tiled(&m, gates.format, Bytes::per_tile(gates.bytes(), TILE_TOKENS)), ..op }
    }

    /// RoPE on the chunk's queries and key, then the key and value into the ring (`rope_kv.wgsl`).
    pub fn rope_kv(
        &self,
        shape: AttentionShape,
        rotary_half: usize,
        step: &wgpu::Buffer,
        inv_freq: &wgpu::Buffer,
        qkv: &wgpu::Buffer,
        ring: KeyValueRing,
    ) -> Op {
        let params = shape.rope_params(rotary_half);
        let buffers = [step, inv_freq, qkv, ring.keys, ring.values];
        let op = self.op(Kernel::RopeKv, None, &params, &buffers, Groups::TokenMajor(shape.heads as u32 + 1));
        Op { cost: Cost::elementwise(SMALL_THREADS, Bytes::per_token(shape.qkv_bytes())), ..op }
    }

    /// Local multi-query attention of the chunk's queries over the window's keys, in key blocks
    /// (`attention.wgsl`), then the blocks combined (`attention_combine.wgsl`).
    pub fn attention(
        &self,
        shape: AttentionShape,
        step: &wgpu::Buffer,
        ring: KeyValueRing,
        a: AttentionBuffers,
    ) -> [Op; 2] {
        let blocks = key_blocks(shape.window);
        let (heads, head_dim) = (shape.heads as u32, shape.head_dim as u32);
        let params = AttentionParams {
            heads,
            head_dim,
            window: shape.window as u32,
            slots: shape.slots as u32,
            scale: (shape.head_dim as f32).powf(-0.5),
            blocks,
            _pad: [0; 2],
        };
        let buffers = [step, a.qkv, ring.keys, ring.values, a.partial_a, a.partial_ml];
        let attention = self.op(Kernel::Attention, None, &params, &buffers, Groups::PerToken(blocks));
        // Per block: each (head, key) thread reads its query and the key one float at a time
        // (head_dim serial loads), then the values' KEY_BLOCK loads per dimension.
        let (block_count, head_count, dims) = (blocks as u64, shape.heads as u64, shape.head_dim as u64);
        let keys = KEY_BLOCK as u64;
        let scores = head_count * keys * dims * 4 * 2;
        let cost = Cost {
            barriers: 2,
            attention_serial_trips: head_dim + KEY_BLOCK,
            ..Cost::elementwise(THREADS, Bytes::per_token(block_count * (scores + keys * dims * 4)))
        };
        let attention = Op { cost, ..attention };
        let params = AttentionCombineParams { heads, head_dim, blocks, _pad: 0 };
        let buffers = [a.partial_a, a.partial_ml, a.out];
        let slices = head_dim.div_ceil(COMBINE_DIMS);
        let combine = self.op(Kernel::AttentionCombine, None, &params, &buffers, Groups::PerToken(heads * slices));
        // Per workgroup: two passes over the blocks' (max, sum), then each thread its share of
        // the blocks' partial sums, each with its block's (max, sum).
        let groups = THREADS / COMBINE_DIMS;
        let per_group = 2 * block_count * 8 + block_count * COMBINE_DIMS as u64 * (4 + 8);
        let cost = Cost {
            attention_serial_trips: 2 * blocks.div_ceil(THREADS) + blocks.div_ceil(groups),
            attention_trips_cached: true,
            barriers: 2 * (THREADS.ilog2() + 2) + 1,
            ..Cost::elementwise(THREADS, Bytes::per_token((head_count * slices as u64) * per_group))
        };
        [attention, Op { cost, ..combine }]
    }

    /// Prefill: RoPE in place on the chunk's queries and key in `qkv` (`rope_chunk.wgsl`),
    /// `x[i], x[i+n] ⟵ x[i]·cos θ_i − x[i+n]·sin θ_i, x[i+n]·cos θ_i + x[i]·sin θ_i` with
    /// `θ_i = (position + t) · inv_freq[i]`, `n = rotary_half`; no ring is written (see
    /// [`Self::ring_store`]).
    pub fn rope_chunk(
        &self,
        shape: AttentionShape,
        rotary_half: usize,
        step: &wgpu::Buffer,
        inv_freq: &wgpu::Buffer,
        qkv: &wgpu::Buffer,
    ) -> Op {
        // No ring: rope_chunk ignores `slots`.
        let params = shape.rope_params(rotary_half);
        let buffers = [step, inv_freq, qkv];
        let op = self.op(Kernel::RopeChunk, None, &params, &buffers, Groups::TokenMajor(shape.heads as u32 + 1));
        Op { cost: Cost::elementwise(SMALL_THREADS, Bytes::per_token(shape.qkv_bytes())), ..op }
    }

    /// Prefill: local multi-query attention of the chunk's queries (after [`Self::rope_chunk`])
    /// in tiles of [`QUERY_ROWS`] query rows against blocks of [`KEY_TILE`] keys with an online
    /// softmax (`attention_chunk.wgsl`): `out[t][h] = Σ_p e^(s_p − m) v_p / Σ_p e^(s_p − m)`,
    /// `s_p = q_h[t] · k_p / √head_dim` over `max(0, P − W) ≤ p ≤ P`, `P = position + t`; keys and
    /// values before the chunk from the ring, the chunk's own from `qkv`.
    pub fn attention_chunk(
        &self,
        shape: AttentionShape,
        step: &wgpu::Buffer,
        ring: KeyValueRing,
        qkv: &wgpu::Buffer,
        out: &wgpu::Buffer,
    ) -> Op {
        assert!(
            shape.head_dim.is_multiple_of(4) && shape.head_dim <= MAX_HEAD_DIM as usize,
            "attention_chunk takes heads of a multiple of 4 dims up to {MAX_HEAD_DIM}, not {}",
            shape.head_dim
        );
        assert!((1..=MAX_HEADS as usize).contains(&shape.heads), "attention_chunk takes 1 to {MAX_HEADS} heads");
        assert!(shape.slots >= shape.window, "the ring must hold the window");
        let tokens = attention_tokens(shape.heads);
        let params = AttentionChunkParams {
            heads: shape.heads as u32,
            head_dim: shape.head_dim as u32,
            window: shape.window as u32,
            slots: shape.slots as u32,
            scale: (shape.head_dim as f32).powf(-0.5),
            tokens,
            _pad: [0; 2],
        };
        let buffers = [step, qkv, ring.keys, ring.values, out];
        let groups = Groups::Tiles { x: 1, tokens, head: false };
        let op = self.op(Kernel::AttentionChunk, None, &params, &buffers, groups);
        // A workgroup stages every key and value of its tokens' windows, KEY_TILE keys at a time,
        // a slice of LANES vectors per barrier.
        let slices = (shape.head_dim as u32).div_ceil(4 * (THREADS / QUERY_ROWS));
        let key_tiles = (shape.window as u32 + tokens).div_ceil(KEY_TILE);
        let window_bytes = (shape.window as u64 + tokens as u64) * shape.head_dim as u64 * 4 * 2;
        let cost = Cost {
            barriers: key_tiles * (4 * slices + 1),
            attention_serial_trips: key_tiles * 2 * slices,
            ..Cost::elementwise(THREADS, Bytes { per_token: shape.qkv_bytes(), per_tile: window_bytes, tile: tokens })
        };
        Op { cost, ..op }
    }

    /// Prefill: the rotated keys and the values of the chunk's last `min(n, slots)` tokens from
    /// `qkv` into the ring, `ring_k[·][p mod slots] = k[t]`, `ring_v[p mod slots] = v[t]` with
    /// `p = position + t`, unless the run is halted (`ring_store.wgsl`). Recorded after
    /// [`Self::attention_chunk`], which reads the keys the ring held.
    pub fn ring_store(&self, shape: AttentionShape, step: &wgpu::Buffer, qkv: &wgpu::Buffer, ring: KeyValueRing) -> Op {
        let params = RingStoreParams {
            heads: shape.heads as u32,
            head_dim: shape.head_dim as u32,
            slots: shape.slots as u32,
            _pad: 0,
        };
        let buffers = [step, qkv, ring.keys, ring.values];
        let op = self.op(Kernel::RingStore, None, &params, &buffers, Groups::TokenMajor(1));
        Op { cost: Cost::elementwise(SMALL_THREADS, Bytes::per_token(2 * shape.head_dim as u64 * 4)), ..op }
    }

    /// Prefill: the raw projections `branches[t] = [y[t], x[t]]` (`[n, 2·lru]`) in place into
    /// `[GELU(y[t]), b + Σ_k w[k] · x[t − (K−1) + k]]`, the inputs before the chunk from `history`
    /// (zero at position 0), which then holds the last K−1 inputs unless the run is halted
    /// (`conv_scan.wgsl`). `conv` is the taps `[lru, K]` then the bias `[lru]`.
    pub fn conv_scan(
        &self,
        step: &wgpu::Buffer,
        conv: &wgpu::Buffer,
        conv_width: usize,
        history: &wgpu::Buffer,
        branches: &wgpu::Buffer,
        lru: usize,
    ) -> Op {
        assert!(
            (1..=MAX_CONV_WIDTH as usize).contains(&conv_width),
            "conv_scan takes Conv1D widths up to {MAX_CONV_WIDTH}"
        );
        let params = ConvScanParams { lru: lru as u32, width: conv_width as u32, _pad: [0; 2] };
        let buffers = [step, conv, history, branches];
        let op =
            self.op(Kernel::ConvScan, None, &params, &buffers, Groups::Fixed((lru as u32).div_ceil(CONV_CHANNELS), 1));
        Op { cost: Cost::elementwise(THREADS, Bytes::per_token(2 * lru as u64 * 4)), ..op }
    }

    /// Prefill: the RG-LRU over the chunk from the gate logits `gates[t] = [gx, ga]` and
    /// `branches[t] = [g, c]` (`rg_lru_scan.wgsl`): `log_a = σ(ga) · log_a_scale`,
    /// `h = e^log_a · h + √(1 − e^(2·log_a)) · σ(gx) · c` (`h = σ(gx) · c` at position 0),
    /// `out[t] = h · g`; `h` is written back unless the run is halted.
    #[allow(clippy::too_many_arguments)]
    pub fn rg_lru_scan(
        &self,
        step: &wgpu::Buffer,
        gates: &wgpu::Buffer,
        branches: &wgpu::Buffer,
        log_a_scale: &wgpu::Buffer,
        h: &wgpu::Buffer,
        out: &wgpu::Buffer,
        lru: usize,
    ) -> Op {
        let params = RgLruScanParams { lru: lru as u32, _pad: [0; 3] };
        let buffers = [step, gates, branches, log_a_scale, h, out];
        let groups = Groups::Fixed((lru as u32).div_ceil(SMALL_THREADS), 1);
        let op = self.op(Kernel::RgLruScan, None, &params, &buffers, groups);
        Op { cost: Cost::elementwise(SMALL_THREADS, Bytes::per_token(4 * lru as u64 * 4)), ..op }
    }

    /// The next token from the last row of logits, into `tokens[0]` and the ring of generated
    /// ids, counted in `counts`; advances the step (`sample.wgsl`). The logits are adjusted by
    /// the bias and the penalties, and held to the mask, when the uniform says so.
    pub fn sample(&self, step: &wgpu::Buffer, logits: &wgpu::Buffer, sampler: &SamplerBuffers) -> Op {
        let s = sampler;
        let buffers = [s.sampling, self.chunk, step, logits, s.tokens, s.generated, s.counts, s.bias, s.mask];
        let op = self.bound(self.kernels.pipeline(Kernel::Sample, None), &buffers, Groups::Fixed(1, 1));
        // What its passes read depends on the sampling settings: `PlanCost` counts them.
        Op { cost: Cost { vocab_passes: VocabPasses::Sampler, ..Cost::elementwise(THREADS, Bytes::default()) }, ..op }
    }
}

/// The sampler's own buffers (`sample.wgsl`).
pub struct SamplerBuffers<'a> {
    /// The sampler's settings, rewritten per submission.
    pub sampling: &'a wgpu::Buffer,
    /// `[CHUNK]` input ids; `[0]` receives each sampled token.
    pub tokens: &'a wgpu::Buffer,
    /// The ring of sampled ids.
    pub generated: &'a wgpu::Buffer,
    /// `[vocab]` u32: how often each id was drawn in this reply (the penalties' counts).
    pub counts: &'a wgpu::Buffer,
    /// `[vocab]` f32: the logit bias of each id.
    pub bias: &'a wgpu::Buffer,
    /// `[vocab / 32]` u32: the ids a constrained reply may draw next, one bit each.
    pub mask: &'a wgpu::Buffer,
}
