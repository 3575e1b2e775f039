//! Multi-turn chat: each turn prefills only its new tokens, and the reply is exactly what a
//! prefill of the whole conversation would give — on the CPU reference and on the GPU engine.

mod common;

use common::{tiny, tokenizer_path};
use pollster::block_on;
use rgweb::chat::session::{ChatSession, Generator};
use rgweb::chat::{is_stop_token, GemmaTokenizer, SamplingParams};
use rgweb::gpu::engine::load_engine;
use rgweb::gpu::GpuContext;
use rgweb::weights::load::load_model;

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

const MESSAGES: [&str; 2] = ["Hello! Who are you?", "Tell me more about 東京 🤖."];

/// Runs the two-message chat, then checks the second reply against a fresh prefill of the whole
/// conversation's ids.
fn check_state_reuse(make: fn() -> Generator) -> Vec<Vec<u32>> {
    let mut session = ChatSession::new(make(), tokenizer());
    let mut conversation = Vec::new();
    let mut replies = Vec::new();
    for message in MESSAGES {
        let turn = session.turn_ids(message).unwrap();
        let mut streamed = String::new();
        let reply = block_on(session.send(message, 10, |text| {
            streamed.push_str(text);
            true
        }))
        .unwrap();
        assert_eq!(reply.prefilled, turn.len(), "only the new turn is prefilled");
        assert_eq!(reply.text, streamed);
        conversation.extend(&turn);
        if replies.len() + 1 == MESSAGES.len() {
            let mut fresh = make();
            let eos = fresh.eos_token_id();
            let whole = block_on(fresh.generate(&conversation, 10, |id| id == eos || is_stop_token(id), |_| Ok(true)));
            assert_eq!(whole.unwrap(), reply.ids, "state reuse equals prefilling the whole conversation");
        }
        conversation.extend(&reply.ids);
        replies.push(reply.ids);
    }
    assert_eq!(session.generator().position(), conversation.len());
    replies
}

#[test]
fn turns_reuse_the_state_on_the_cpu() {
    check_state_reuse(cpu);
}

#[test]
fn turns_reuse_the_state_on_the_gpu_and_match_the_cpu() {
    assert_eq!(check_state_reuse(gpu), check_state_reuse(cpu));
}

#[test]
fn stop_ends_the_reply_and_keeps_the_state_consistent() {
    let mut session = ChatSession::new(cpu(), tokenizer());
    let mut pieces = 0;
    let reply = block_on(session.send(MESSAGES[0], 50, |_| {
        pieces += 1;
        pieces < 3
    }))
    .unwrap();
    assert!(reply.ids.len() < 50, "stopped after 3 pieces of text: {:?}", reply.ids);
    // Every token shown was fed, and nothing else: the state matches the visible conversation.
    let position = session.generator().position();
    assert_eq!(position, reply.prefilled + reply.ids.len());
    let next = block_on(session.send(MESSAGES[1], 4, |_| true)).unwrap();
    assert_eq!(session.generator().position(), position + next.prefilled + next.ids.len());
}

fn check_regenerate(make: fn() -> Generator) {
    let mut session = ChatSession::new(make(), tokenizer());
    block_on(session.send(MESSAGES[0], 6, |_| true)).unwrap();
    let hot = SamplingParams { temperature: 1.2, top_k: 0, top_p: 1.0, seed: 1 };
    session.generator().set_sampling(hot).unwrap();
    let before = session.generator().position();
    let first = block_on(session.send(MESSAGES[1], 8, |_| true)).unwrap();
    // Same seed again from the same state: the same reply (on the GPU the draw depends only on
    // the seed and the token count, both restored; on the CPU the sampler is made anew).
    session.generator().set_sampling(hot).unwrap();
    let again = block_on(session.regenerate(8, |_| true)).unwrap();
    assert_eq!((&again.ids, &again.text, again.prefilled), (&first.ids, &first.text, first.prefilled));
    session.generator().set_sampling(SamplingParams { seed: 2, ..hot }).unwrap();
    let other = block_on(session.regenerate(8, |_| true)).unwrap();
    assert_ne!(other.ids, first.ids, "another seed, another reply");
    assert_eq!(session.generator().position(), before + other.prefilled + other.ids.len());
}

#[test]
fn regenerate_replays_from_the_state_before_the_reply_on_the_cpu() {
    check_regenerate(cpu);
}

#[test]
fn regenerate_replays_from_the_state_before_the_reply_on_the_gpu() {
    check_regenerate(gpu);
}
