//! Structured output: replies held to a JSON schema or a Lark grammar are valid by construction,
//! on the CPU reference and on the GPU engine, whatever the (random) model wants to say.

mod common;

use common::{tiny, tokenizer_path};
use pollster::block_on;
use rgweb::chat::session::{ChatSession, Finish, Generator};
use rgweb::chat::{GemmaTokenizer, OutputFormat, SamplingParams};
use rgweb::gpu::engine::load_engine;
use rgweb::gpu::GpuContext;
use rgweb::weights::load::load_model;
use serde_json::{json, Value};

fn tokenizer() -> GemmaTokenizer {
    GemmaTokenizer::from_file(tokenizer_path()).unwrap()
}

fn cpu() -> Generator {
    Generator::cpu(load_model(&tiny().int8).unwrap(), SamplingParams::default()).unwrap()
}

fn gpu() -> Generator {
    let context = block_on(GpuContext::new()).expect("a GPU adapter (Mesa lavapipe in CI)");
    Generator::gpu(load_engine(context, &tiny().int8).unwrap(), SamplingParams::default()).unwrap()
}

/// Enums, bounded strings and arrays, integer ranges, nested objects, no extra properties (the
/// schema BENCHMARKS.md times too).
fn nested_schema() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/pet.schema.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Checks `value` against the keywords `nested_schema` uses, written from the JSON Schema
/// specification: a reference independent of the grammar engine. Returns what is wrong.
fn violations(schema: &Value, value: &Value, path: &str, found: &mut Vec<String>) {
    let mut fail = |what: String| found.push(format!("{path}: {what}"));
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            fail(format!("{value} is not one of {allowed:?}"));
        }
    }
    let n = |key: &str| schema.get(key).and_then(Value::as_f64);
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let Some(object) = value.as_object() else { return fail(format!("{value} is not an object")) };
            let properties = schema["properties"].as_object().unwrap();
            for required in schema["required"].as_array().unwrap() {
                if !object.contains_key(required.as_str().unwrap()) {
                    fail(format!("lacks {required}"));
                }
            }
            for (key, item) in object {
                match properties.get(key) {
                    Some(inner) => violations(inner, item, &format!("{path}.{key}"), found),
                    None if schema["additionalProperties"] == json!(false) => {
                        found.push(format!("{path}: extra property {key:?}"))
                    }
                    None => {}
                }
            }
        }
        Some("array") => {
            let Some(items) = value.as_array() else { return fail(format!("{value} is not an array")) };
            let len = items.len() as f64;
            if n("minItems").is_some_and(|m| len < m) || n("maxItems").is_some_and(|m| len > m) {
                fail(format!("{len} items"));
            }
            for (i, item) in items.iter().enumerate() {
                violations(&schema["items"], item, &format!("{path}[{i}]"), found);
            }
        }
        Some("string") => {
            let Some(text) = value.as_str() else { return fail(format!("{value} is not a string")) };
            let len = text.chars().count() as f64;
            if n("minLength").is_some_and(|m| len < m) || n("maxLength").is_some_and(|m| len > m) {
                fail(format!("{text:?} has {len} characters"));
            }
        }
        Some("integer") => {
            // JSON Schema's integers are numbers without a fraction: `-0` and `1.0` are ones.
            let Some(x) = value.as_f64().filter(|x| x.fract() == 0.0) else {
                return fail(format!("{value} is not an integer"));
            };
            if n("minimum").is_some_and(|m| x < m) || n("maximum").is_some_and(|m| x > m) {
                fail(format!("{x} is out of range"));
            }
        }
        Some("boolean") if !value.is_boolean() => fail(format!("{value} is not a boolean")),
        _ => {}
    }
}

/// 50 seeds at temperature 1: every reply parses, validates, and ends by itself.
fn check_always_valid(make: fn() -> Generator) {
    let schema = nested_schema();
    let mut session = ChatSession::new(make(), tokenizer());
    session.set_output(&OutputFormat::Json { schema: Some(schema.clone()) }, "response_format").unwrap();
    for seed in 0..50 {
        let params = SamplingParams { temperature: 1.0, seed, ..SamplingParams::default() };
        session.generator().set_sampling(params).unwrap();
        session.reset();
        let start = std::time::Instant::now();
        let reply = block_on(session.send("Describe a pet as JSON.", 400, |_: &str| true)).unwrap();
        println!("seed {seed}: {} tokens in {:?}", reply.ids.len(), start.elapsed());
        assert_eq!(reply.finish, Finish::Stop, "seed {seed}: {:?}", reply.text);
        let value: Value = serde_json::from_str(&reply.text)
            .unwrap_or_else(|e| panic!("seed {seed}: not JSON ({e}): {:?}", reply.text));
        let mut found = Vec::new();
        violations(&schema, &value, "$", &mut found);
        assert!(found.is_empty(), "seed {seed}: {found:?} in {}", reply.text);
    }
}

#[test]
fn json_schema_replies_always_validate_on_the_cpu() {
    check_always_valid(cpu);
}

#[test]
fn json_schema_replies_always_validate_on_the_gpu() {
    check_always_valid(gpu);
}

/// The GPU's mask is the CPU's: the same greedy reply, token for token, under a schema and under
/// a grammar (the random model's own first choice is never valid JSON, so the mask decides).
#[test]
fn the_gpu_holds_the_same_mask_as_the_cpu() {
    let formats = [
        OutputFormat::Json { schema: Some(nested_schema()) },
        OutputFormat::Json { schema: None },
        OutputFormat::Grammar("start: (\"yes\" | \"no\") \" because \" /[a-z ]{1,20}/ \".\"".into()),
    ];
    for format in formats {
        let mut replies = Vec::new();
        for make in [cpu, gpu] {
            let mut session = ChatSession::new(make(), tokenizer());
            session.set_output(&format, "response_format").unwrap();
            let reply = block_on(session.send("Answer.", 120, |_: &str| true)).unwrap();
            replies.push((reply.ids, reply.text));
        }
        assert_eq!(replies[0], replies[1], "{format:?}");
        let unconstrained = {
            let mut session = ChatSession::new(cpu(), tokenizer());
            block_on(session.send("Answer.", 1, |_: &str| true)).unwrap().ids
        };
        assert_ne!(replies[0].0[..1], unconstrained[..], "{format:?}: the mask changed nothing");
        println!("{format:?}: {:?}", replies[0].1);
    }
}

#[test]
fn a_grammar_reply_is_in_its_language() {
    let mut session = ChatSession::new(cpu(), tokenizer());
    let grammar = "start: (\"yes\" | \"no\") \" because \" /[a-z ]{1,20}/ \".\"";
    session.set_output(&OutputFormat::Grammar(grammar.into()), "response_format").unwrap();
    for seed in 0..10 {
        session.generator().set_sampling(SamplingParams { temperature: 1.0, seed, ..Default::default() }).unwrap();
        let reply = block_on(session.send("Is it?", 100, |_: &str| true)).unwrap();
        let text = reply.text.as_str();
        let rest = text.strip_prefix("yes because ").or_else(|| text.strip_prefix("no because ")).unwrap_or("");
        let reason = rest.strip_suffix('.').unwrap_or_else(|| panic!("seed {seed}: {text:?}"));
        assert!((1..=20).contains(&reason.len()) && reason.chars().all(|c| c.is_ascii_lowercase() || c == ' '));
        assert_eq!(reply.finish, Finish::Stop);
    }
}

/// A bad schema or grammar is one error naming the field; the session goes on as before.
#[test]
fn bad_formats_are_refused_and_the_session_goes_on() {
    let mut session = ChatSession::new(cpu(), tokenizer());
    let bad = [
        (OutputFormat::Json { schema: Some(json!({"type": "object", "minProperties": "x"})) }, "response_format"),
        (OutputFormat::Json { schema: Some(json!(42)) }, "response_format must be a JSON schema"),
        (OutputFormat::Json { schema: Some(json!({"type": "integer", "minimum": 5, "maximum": 1})) }, ""),
        (OutputFormat::Grammar("start: (".into()), "response_format"),
        (OutputFormat::Grammar("start: other".into()), "response_format"),
        (OutputFormat::Grammar("x".repeat(300_000)), "at most"),
    ];
    for (format, message) in bad {
        let error = session.set_output(&format, "response_format").unwrap_err().to_string();
        assert!(error.contains("response_format") && error.contains(message), "{format:?}: {error}");
    }
    // Nothing was left set: the next reply is free text, as before.
    let free = block_on(session.send("Hello", 4, |_: &str| true)).unwrap();
    let mut fresh = ChatSession::new(cpu(), tokenizer());
    assert_eq!(free.ids, block_on(fresh.send("Hello", 4, |_: &str| true)).unwrap().ids);
}

/// Schemas built to explode are refused, or compiled within the engine's limits, never a hang.
#[test]
fn explosive_schemas_are_bounded() {
    let mut session = ChatSession::new(cpu(), tokenizer());
    let mut deep = json!({"type": "integer"});
    for _ in 0..100 {
        deep = json!({"type": "array", "items": deep});
    }
    let huge_enum: Vec<String> = (0..20_000).map(|i| format!("value number {i}")).collect();
    let explosive = [
        deep,
        json!({"enum": huge_enum}),
        json!({"type": "string", "pattern": "^(a|aa|aaa)*(b|bb){1,400}[a-z]{100,300}$"}),
        json!({"type": "string", "pattern": "^((((a+)+)+)+)+$", "maxLength": 10_000}),
    ];
    for schema in explosive {
        let start = std::time::Instant::now();
        let outcome = session.set_output(&OutputFormat::Json { schema: Some(schema) }, "response_format");
        println!("{:?} after {:?}", outcome.as_ref().err().map(ToString::to_string), start.elapsed());
        if outcome.is_ok() {
            let reply = block_on(session.send("Go.", 64, |_: &str| true));
            println!("a reply of {:?}", reply.map(|r| r.ids.len()));
        }
    }
}

#[test]
fn response_formats_read_as_openai_and_webllm_write_them() {
    let read = |v: Value| OutputFormat::from_response_format(&v, "request.response_format");
    assert_eq!(read(json!({"type": "text"})).unwrap(), OutputFormat::Text);
    assert_eq!(read(json!({"type": "json_object"})).unwrap(), OutputFormat::Json { schema: None });
    let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
    assert_eq!(
        read(json!({"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": true}})).unwrap(),
        OutputFormat::Json { schema: Some(schema.clone()) }
    );
    assert_eq!(
        read(json!({"type": "json_object", "schema": schema.to_string()})).unwrap(),
        OutputFormat::Json { schema: Some(schema) }
    );
    assert_eq!(
        read(json!({"type": "grammar", "grammar": "start: \"a\""})).unwrap(),
        OutputFormat::Grammar("start: \"a\"".into())
    );
    for (bad, field) in [
        (json!("json"), "request.response_format must be an object"),
        (json!({"type": "xml"}), "request.response_format.type"),
        (json!({"type": "json_schema"}), "request.response_format.json_schema"),
        (json!({"type": "json_schema", "json_schema": {"schema": "{}"}}), "request.response_format.json_schema.schema"),
        (json!({"type": "json_object", "schema": "{not json"}), "request.response_format.schema is not JSON"),
        (json!({"type": "grammar", "grammar": 3}), "request.response_format.grammar must be a string"),
    ] {
        let error = read(bad.clone()).unwrap_err().to_string();
        assert!(error.contains(field), "{bad}: {error}");
    }
}
