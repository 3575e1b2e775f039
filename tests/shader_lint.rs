//! A lint over naga's IR of every WGSL module the engine compiles, for what makes a kernel slow
//! on a real GPU and that lavapipe cannot show (issue 21; `../shared/notes/decode-kernels.md`
//! §3.1):
//!
//! - **run-time indexed local**: a function-local array indexed by a value the compiler cannot
//!   know (not a constant, nor the counter of a loop with a constant trip count): GPU compilers
//!   keep such arrays in local (stack) memory, not registers;
//! - **run-time trip count**: a loop that loads from storage memory whose trip count is not
//!   made of constants and `override`s: a driver cannot unroll it, so a thread issues one trip's
//!   loads and waits a memory round trip before the next;
//! - **scalar weight load**: a decode matrix kernel loading its weights (`q` in
//!   `format_int8.wgsl` and `format_int4.wgsl`) in pieces smaller than `vec4<u32>`.
//!
//! Today's kernels break these rules where the note says they do; [`KNOWN`] lists each module's
//! findings, and the test fails both when a module gains one and when one goes away (so the list
//! shrinks as the kernels are rewritten, to nothing).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use naga::{AddressSpace, Block, Expression, Function, Handle, LocalVariable, Module, Statement, TypeInner};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Rule {
    RuntimeIndexedLocal,
    RuntimeTripCount,
    ScalarWeightLoad,
}
use Rule::*;

/// The weight values' binding in both formats' files.
const WEIGHTS: &str = "q";

/// The kernels of a decoded token's matrices.
const DECODE_MATRIX_KERNELS: [&str; 5] = ["matmul", "matmul_short", "geglu", "recurrent_in", "rg_lru_gates"];

#[derive(Debug)]
struct Finding {
    function: String,
    rule: Rule,
    what: String,
}

/// The findings over one module; `decode_matrix` also checks how it loads its weights.
fn lint(module: &Module, decode_matrix: bool) -> Vec<Finding> {
    let mut findings = Vec::new();
    // A callee precedes its callers in naga's arena, so one pass knows every callee's loads.
    let mut loads_storage = HashSet::new();
    // Only what an entry point calls runs: a shared file's other functions are not linted here.
    let called = called_functions(module);
    let functions = module.functions.iter().filter(|(h, _)| called.contains(h)).map(|(h, f)| (Some(h), f));
    let entry_points = module.entry_points.iter().map(|e| (None, &e.function));
    for (handle, function) in functions.chain(entry_points) {
        let mut linter = FunctionLint { module, function, loads_storage: &loads_storage, findings: &mut findings };
        linter.block(&function.body, &HashSet::new());
        if decode_matrix {
            linter.weight_loads();
        }
        if let Some(handle) = handle {
            if linter.block_loads_storage(&function.body) {
                loads_storage.insert(handle);
            }
        }
    }
    findings
}

struct FunctionLint<'a> {
    module: &'a Module,
    function: &'a Function,
    /// The functions that load from storage memory, themselves or through their callees.
    loads_storage: &'a HashSet<Handle<Function>>,
    findings: &'a mut Vec<Finding>,
}

impl FunctionLint<'_> {
    fn report(&mut self, rule: Rule, what: String) {
        let function = self.function.name.clone().unwrap_or_else(|| "<entry point>".into());
        self.findings.push(Finding { function, rule, what });
    }

    fn local_name(&self, v: Handle<LocalVariable>) -> String {
        self.function.local_variables[v].name.clone().unwrap_or_else(|| format!("{v:?}"))
    }

    /// Walks `block`; `counters` are the counters of the enclosing loops with constant trip
    /// counts, which a compiler unrolling them knows.
    fn block(&mut self, block: &Block, counters: &HashSet<Handle<LocalVariable>>) {
        for statement in block.iter() {
            match statement {
                Statement::Emit(range) => {
                    for e in range.clone() {
                        if let Expression::Access { base, index } = self.function.expressions[e] {
                            self.check_index(base, index, counters);
                        }
                    }
                }
                Statement::Block(inner) => self.block(inner, counters),
                Statement::If { accept, reject, .. } => {
                    self.block(accept, counters);
                    self.block(reject, counters);
                }
                Statement::Switch { cases, .. } => {
                    for case in cases {
                        self.block(&case.body, counters);
                    }
                }
                Statement::Loop { body, continuing, break_if } => {
                    let constant = self.constant_trip_count(body, continuing, *break_if, counters);
                    if !constant && (self.block_loads_storage(body) || self.block_loads_storage(continuing)) {
                        let condition = exit_condition(body, *break_if);
                        let tested = condition.map(|c| self.loaded_locals(c)).unwrap_or_default();
                        let what = match tested.iter().find(|v| self.loop_counters(body, continuing).contains(v)) {
                            Some(&v) => format!("loop over `{}`", self.local_name(v)),
                            None => "loop without a counter".into(),
                        };
                        self.report(RuntimeTripCount, what);
                    }
                    let mut inner = counters.clone();
                    if constant {
                        inner.extend(self.loop_counters(body, continuing));
                    }
                    self.block(body, &inner);
                    self.block(continuing, &inner);
                }
                _ => {}
            }
        }
    }

    fn check_index(
        &mut self,
        base: Handle<Expression>,
        index: Handle<Expression>,
        counters: &HashSet<Handle<LocalVariable>>,
    ) {
        let Some(v) = self.local_root(base) else { return };
        let ty = &self.module.types[self.function.local_variables[v].ty].inner;
        if matches!(ty, TypeInner::Array { .. }) && !self.is_constant(index, counters) {
            let what = format!("`{}`", self.local_name(v));
            self.report(RuntimeIndexedLocal, what);
        }
    }

    /// The local variable a pointer expression points into, if any.
    fn local_root(&self, mut e: Handle<Expression>) -> Option<Handle<LocalVariable>> {
        loop {
            match self.function.expressions[e] {
                Expression::LocalVariable(v) => return Some(v),
                Expression::Access { base, .. } | Expression::AccessIndex { base, .. } => e = base,
                _ => return None,
            }
        }
    }

    /// The global variable a pointer expression points into, with the accesses on the way.
    fn global_root(&self, mut e: Handle<Expression>) -> Option<(Handle<naga::GlobalVariable>, usize)> {
        let mut depth = 0;
        loop {
            match self.function.expressions[e] {
                Expression::GlobalVariable(g) => return Some((g, depth)),
                Expression::Access { base, .. } | Expression::AccessIndex { base, .. } => {
                    e = base;
                    depth += 1;
                }
                _ => return None,
            }
        }
    }

    /// Whether `e` is known when the shader is compiled: made of literals, constants, overrides
    /// and the counters of enclosing loops with constant trip counts.
    fn is_constant(&self, e: Handle<Expression>, counters: &HashSet<Handle<LocalVariable>>) -> bool {
        let all = |es: &[Handle<Expression>]| es.iter().all(|&e| self.is_constant(e, counters));
        match &self.function.expressions[e] {
            Expression::Literal(_) | Expression::Constant(_) | Expression::Override(_) | Expression::ZeroValue(_) => {
                true
            }
            Expression::Load { pointer } => match self.function.expressions[*pointer] {
                Expression::LocalVariable(v) => counters.contains(&v),
                _ => false,
            },
            Expression::Binary { left, right, .. } => all(&[*left, *right]),
            Expression::Unary { expr, .. } | Expression::As { expr, .. } => self.is_constant(*expr, counters),
            Expression::Splat { value, .. } => self.is_constant(*value, counters),
            Expression::Swizzle { vector, .. } => self.is_constant(*vector, counters),
            Expression::AccessIndex { base, .. } => self.is_constant(*base, counters),
            Expression::Access { base, index } => all(&[*base, *index]),
            Expression::Select { condition, accept, reject } => all(&[*condition, *accept, *reject]),
            Expression::Compose { components, .. } => all(components),
            Expression::Math { arg, arg1, arg2, arg3, .. } => {
                all(&[*arg]) && [arg1, arg2, arg3].iter().all(|a| a.is_none_or(|a| self.is_constant(a, counters)))
            }
            _ => false,
        }
    }

    /// The loop's trip count is known at compile time: its exit condition (a leading
    /// `if … { break }`, or `break if`) is made of constants and of counters that only the loop
    /// changes and that start from constants.
    fn constant_trip_count(
        &self,
        body: &Block,
        continuing: &Block,
        break_if: Option<Handle<Expression>>,
        counters: &HashSet<Handle<LocalVariable>>,
    ) -> bool {
        let Some(condition) = exit_condition(body, break_if) else { return false };
        let own = self.loop_counters(body, continuing);
        let starts_constant = own.iter().all(|&v| {
            let init = self.function.local_variables[v].init;
            init.is_none_or(|e| self.is_constant(e, counters))
                && self.stores_outside(v, body, continuing).iter().all(|&value| self.is_constant(value, counters))
        });
        let mut known = counters.clone();
        known.extend(own);
        starts_constant && self.is_constant(condition, &known)
    }

    /// The local variables `e` loads.
    fn loaded_locals(&self, e: Handle<Expression>) -> Vec<Handle<LocalVariable>> {
        let mut locals = Vec::new();
        let mut pending = vec![e];
        while let Some(e) = pending.pop() {
            let expression = &self.function.expressions[e];
            if let Expression::Load { pointer } = *expression {
                locals.extend(self.direct_local(pointer));
            }
            match expression {
                Expression::Binary { left, right, .. } => pending.extend([*left, *right]),
                Expression::Unary { expr, .. } | Expression::As { expr, .. } => pending.push(*expr),
                Expression::Select { condition, accept, reject } => pending.extend([*condition, *accept, *reject]),
                _ => {}
            }
        }
        locals
    }

    /// The local variables the loop stores to.
    fn loop_counters(&self, body: &Block, continuing: &Block) -> BTreeSet<Handle<LocalVariable>> {
        let mut stores = Vec::new();
        collect_stores(body, &mut stores);
        collect_stores(continuing, &mut stores);
        stores.iter().filter_map(|&(pointer, _)| self.direct_local(pointer)).collect()
    }

    /// The values stored to `v` outside the loop.
    fn stores_outside(&self, v: Handle<LocalVariable>, body: &Block, continuing: &Block) -> Vec<Handle<Expression>> {
        let (mut all, mut inside) = (Vec::new(), Vec::new());
        collect_stores(&self.function.body, &mut all);
        collect_stores(body, &mut inside);
        collect_stores(continuing, &mut inside);
        let inside: HashSet<_> = inside.into_iter().collect();
        all.into_iter()
            .filter(|store| !inside.contains(store) && self.direct_local(store.0) == Some(v))
            .map(|(_, value)| value)
            .collect()
    }

    fn direct_local(&self, pointer: Handle<Expression>) -> Option<Handle<LocalVariable>> {
        match self.function.expressions[pointer] {
            Expression::LocalVariable(v) => Some(v),
            _ => None,
        }
    }

    /// Whether `block` loads from storage memory, itself or through a call.
    fn block_loads_storage(&self, block: &Block) -> bool {
        block.iter().any(|statement| match statement {
            Statement::Emit(range) => range.clone().any(|e| match self.function.expressions[e] {
                Expression::Load { pointer } => self.global_root(pointer).is_some_and(|(g, _)| {
                    matches!(self.module.global_variables[g].space, AddressSpace::Storage { .. })
                }),
                _ => false,
            }),
            Statement::Call { function, .. } => self.loads_storage.contains(function),
            Statement::Block(inner) => self.block_loads_storage(inner),
            Statement::If { accept, reject, .. } => {
                self.block_loads_storage(accept) || self.block_loads_storage(reject)
            }
            Statement::Switch { cases, .. } => cases.iter().any(|c| self.block_loads_storage(&c.body)),
            Statement::Loop { body, continuing, .. } => {
                self.block_loads_storage(body) || self.block_loads_storage(continuing)
            }
            _ => false,
        })
    }

    /// Every load of the weights must bring a whole `vec4<u32>`.
    fn weight_loads(&mut self) {
        let mut scalar = 0;
        for (_, e) in self.function.expressions.iter() {
            let Expression::Load { pointer } = *e else { continue };
            let Some((g, depth)) = self.global_root(pointer) else { continue };
            let global = &self.module.global_variables[g];
            if global.name.as_deref() != Some(WEIGHTS) {
                continue;
            }
            let element = match self.module.types[global.ty].inner {
                TypeInner::Array { base, .. } => &self.module.types[base].inner,
                ref other => other,
            };
            let vec4_u32 = matches!(
                element,
                TypeInner::Vector { size: naga::VectorSize::Quad, scalar } if *scalar == naga::Scalar::U32
            );
            if !(vec4_u32 && depth == 1) {
                scalar += 1;
            }
        }
        if scalar > 0 {
            self.report(ScalarWeightLoad, format!("{scalar} loads of `{WEIGHTS}` narrower than vec4<u32>"));
        }
    }
}

/// The functions the entry points call, directly or not.
fn called_functions(module: &Module) -> HashSet<Handle<Function>> {
    let calls = |block: &Block, out: &mut Vec<Handle<Function>>| {
        walk(block, &mut |statement| {
            if let Statement::Call { function, .. } = statement {
                out.push(*function);
            }
        })
    };
    let mut pending = Vec::new();
    for entry in &module.entry_points {
        calls(&entry.function.body, &mut pending);
    }
    let mut called = HashSet::new();
    while let Some(f) = pending.pop() {
        if called.insert(f) {
            calls(&module.functions[f].body, &mut pending);
        }
    }
    called
}

/// Calls `visit` on every statement of `block`, nested ones included.
fn walk(block: &Block, visit: &mut impl FnMut(&Statement)) {
    for statement in block.iter() {
        visit(statement);
        match statement {
            Statement::Block(inner) => walk(inner, visit),
            Statement::If { accept, reject, .. } => {
                walk(accept, visit);
                walk(reject, visit);
            }
            Statement::Switch { cases, .. } => cases.iter().for_each(|c| walk(&c.body, visit)),
            Statement::Loop { body, continuing, .. } => {
                walk(body, visit);
                walk(continuing, visit);
            }
            _ => {}
        }
    }
}

/// What ends a loop: a leading `if … { break }` (as naga lowers `for` and `while`), or `break if`.
fn exit_condition(body: &Block, break_if: Option<Handle<Expression>>) -> Option<Handle<Expression>> {
    break_if.or_else(|| {
        body.iter().find(|s| !matches!(s, Statement::Emit(_))).and_then(|s| match s {
            Statement::If { condition, accept, reject } => {
                let is_break = |b: &Block| b.len() == 1 && matches!(b.iter().next(), Some(Statement::Break));
                (is_break(accept) && reject.is_empty() || accept.is_empty() && is_break(reject)).then_some(*condition)
            }
            _ => None,
        })
    })
}

/// Every `Store` in `block`, as `(pointer, value)`.
fn collect_stores(block: &Block, out: &mut Vec<(Handle<Expression>, Handle<Expression>)>) {
    walk(block, &mut |statement| {
        if let Statement::Store { pointer, value } = statement {
            out.push((*pointer, *value));
        }
    });
}

fn parse(source: &str) -> Module {
    naga::front::wgsl::parse_str(source).unwrap_or_else(|e| panic!("{}", e.emit_to_string(source)))
}

fn rules(findings: &[Finding]) -> BTreeSet<Rule> {
    findings.iter().map(|f| f.rule).collect()
}

/// The rules each module breaks today. Remove a module's entry as its kernel is rewritten.
const KNOWN: &[(&str, &[Rule])] = &[
    ("matmul.int8", &[RuntimeIndexedLocal, RuntimeTripCount, ScalarWeightLoad]),
    ("matmul.int4", &[RuntimeIndexedLocal, RuntimeTripCount, ScalarWeightLoad]),
    ("matmul_short.int8", &[RuntimeTripCount, ScalarWeightLoad]),
    ("matmul_short.int4", &[RuntimeTripCount, ScalarWeightLoad]),
    ("geglu.int8", &[RuntimeIndexedLocal, RuntimeTripCount, ScalarWeightLoad]),
    ("geglu.int4", &[RuntimeIndexedLocal, RuntimeTripCount, ScalarWeightLoad]),
    ("recurrent_in.int8", &[RuntimeIndexedLocal, RuntimeTripCount, ScalarWeightLoad]),
    ("recurrent_in.int4", &[RuntimeIndexedLocal, RuntimeTripCount, ScalarWeightLoad]),
    ("rg_lru_gates.int8", &[RuntimeIndexedLocal, RuntimeTripCount, ScalarWeightLoad]),
    ("rg_lru_gates.int4", &[RuntimeIndexedLocal, RuntimeTripCount, ScalarWeightLoad]),
    ("rope_kv", &[RuntimeTripCount]),
    ("attention", &[RuntimeIndexedLocal, RuntimeTripCount]),
    ("attention_combine", &[RuntimeTripCount]),
    ("sample", &[RuntimeTripCount]),
    ("matmul_tiled.int8", &[RuntimeIndexedLocal, RuntimeTripCount]),
    ("matmul_tiled.int4", &[RuntimeIndexedLocal, RuntimeTripCount]),
    ("rope_chunk", &[RuntimeTripCount]),
    ("attention_chunk", &[RuntimeTripCount]),
    ("ring_store", &[RuntimeTripCount]),
    ("conv_scan", &[RuntimeTripCount]),
    ("rg_lru_scan", &[RuntimeIndexedLocal, RuntimeTripCount]),
    // gemv.wgsl itself is clean; these are its epilogues' loops over the tokens of a tile and the
    // rows of a workgroup (matmul.wgsl, geglu.wgsl) and over the conv taps (recurrent_in.wgsl),
    // shared with the row kernels.
    ("matmul.int8.gemv", &[RuntimeTripCount]),
    ("matmul.int4.gemv", &[RuntimeTripCount]),
    ("geglu.int8.gemv", &[RuntimeTripCount]),
    ("geglu.int4.gemv", &[RuntimeTripCount]),
    ("recurrent_in.int8.gemv", &[RuntimeIndexedLocal, RuntimeTripCount]),
    ("recurrent_in.int4.gemv", &[RuntimeIndexedLocal, RuntimeTripCount]),
    ("rg_lru_gates.int8.gemv", &[RuntimeTripCount]),
    ("rg_lru_gates.int4.gemv", &[RuntimeTripCount]),
];

#[test]
fn every_module_breaks_only_the_rules_it_is_known_to() {
    let known: BTreeMap<&str, BTreeSet<Rule>> =
        KNOWN.iter().map(|(name, rules)| (*name, rules.iter().copied().collect())).collect();
    let mut report = String::new();
    let mut mismatches = Vec::new();
    for (name, source) in rgweb::gpu::kernels::all_modules() {
        let kernel = name.split('.').next().unwrap_or_default();
        let findings = lint(&parse(&source), DECODE_MATRIX_KERNELS.contains(&kernel));
        for f in &findings {
            report += &format!("{name}: {}: {:?} {}\n", f.function, f.rule, f.what);
        }
        if name.ends_with(".gemv") {
            let core: Vec<&Finding> = findings.iter().filter(|f| f.function != "main").collect();
            assert!(core.is_empty(), "{name}: gemv.wgsl and the format's chunk functions break a rule: {core:?}");
        }
        let found = rules(&findings);
        if found != known.get(name.as_str()).cloned().unwrap_or_default() {
            mismatches.push(format!("(\"{name}\", &{:?}),", found));
        }
    }
    eprint!("{report}");
    assert!(mismatches.is_empty(), "KNOWN should read:\n{}", mismatches.join("\n"));
}

/// Each rule fires on the pattern it names, and stays quiet on the pattern that fixes it.
#[test]
fn the_lint_tells_slow_patterns_from_fast_ones() {
    let check = |body: &str, decode_matrix: bool| {
        let source = format!(
            "const STEPS: u32 = 4u;\noverride TEAM: u32 = 32u;\n\
             @group(0) @binding(0) var<storage, read> v: array<f32>;\n\
             @group(0) @binding(1) var<uniform> n: u32;\n\
             @group(0) @binding(2) var<storage, read> q: array<{}>;\n\
             @group(0) @binding(3) var<storage, read_write> out: array<f32>;\n\
             @compute @workgroup_size(64) fn main(@builtin(local_invocation_index) li: u32) {{\n{body}\n}}",
            if body.contains("VEC4") { "vec4<u32>" } else { "u32" }
        );
        rules(&lint(&parse(&source.replace("VEC4", "")), decode_matrix))
    };
    let none = BTreeSet::new();
    let only = |rule| BTreeSet::from([rule]);

    // Trip counts.
    let runtime_bound = "var s = 0.0; for (var i = 0u; i < n; i++) { s += v[i]; } out[li] = s;";
    assert_eq!(check(runtime_bound, false), only(RuntimeTripCount));
    let runtime_start = "var s = 0.0; for (var i = li; i < 64u; i += 8u) { s += v[i]; } out[li] = s;";
    assert_eq!(check(runtime_start, false), only(RuntimeTripCount));
    let constant = "var s = 0.0; for (var i = 0u; i < STEPS; i++) { s += v[li + i * 64u]; } out[li] = s;";
    assert_eq!(check(constant, false), none);
    let overridden = "var s = 0.0; for (var i = 0u; i < TEAM * 2u; i++) { s += v[li + i * 64u]; } out[li] = s;";
    assert_eq!(check(overridden, false), none);
    let no_storage = "var s = 0.0; for (var i = 0u; i < n; i++) { s += f32(i); } out[li] = s;";
    assert_eq!(check(no_storage, false), none, "a loop that loads nothing is not hot");
    let through_call = "var s = 0.0; for (var i = 0u; i < n; i++) { s += load_v(i); } out[li] = s; }\n\
                        fn load_v(i: u32) -> f32 { return v[i];";
    assert_eq!(check(through_call, false), only(RuntimeTripCount), "a callee's loads count");
    let while_loop = "var i = 0u; var s = 0.0; while i < n { s += v[i]; i++; } out[li] = s;";
    assert_eq!(check(while_loop, false), only(RuntimeTripCount));
    let endless = "var i = 0u; var s = 0.0; loop { s += v[i]; i++; if s > 1.0 { break; } } out[li] = s;";
    assert_eq!(check(endless, false), only(RuntimeTripCount));

    // Private arrays.
    let runtime_index = "var acc = array<f32, 8>(); for (var t = 0u; t < n; t++) { acc[t] += 1.0; } out[li] = acc[0];";
    assert_eq!(check(runtime_index, false), only(RuntimeIndexedLocal));
    let unrolled_index =
        "var acc = array<f32, 8>(); for (var t = 0u; t < 8u; t++) { acc[t] += v[t]; } out[li] = acc[3];";
    assert_eq!(check(unrolled_index, false), none);
    let thread_index = "var acc = array<f32, 8>(); acc[li % 8u] = 1.0; out[li] = acc[0];";
    assert_eq!(check(thread_index, false), only(RuntimeIndexedLocal));

    // Weight loads.
    let scalar = "out[li] = f32(q[li]);";
    assert_eq!(check(scalar, true), only(ScalarWeightLoad));
    assert_eq!(check(scalar, false), none, "only the decode matrix kernels are held to vec4 loads");
    let vector = "let w = q[li]; out[li] = f32(w.x + w.w); VEC4";
    assert_eq!(check(vector, true), none);
    let component = "out[li] = f32(q[li].y); VEC4";
    assert_eq!(check(component, true), only(ScalarWeightLoad), "a component load brings 4 bytes");
}
