//! The figures of a reply and of a loaded engine: one type each for the session that counts them,
//! the package that hands them to JavaScript (`onToken`'s second argument, `stats()`), and the
//! chat page that reads them back from the package's worker. The field names are the package's
//! (`index.d.ts`), written once here.

use serde::{Deserialize, Serialize};

/// A reply's figures, while it streams and once it is done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TurnFigures {
    /// Tokens prefilled for this reply: only its own, the state carries the rest.
    pub prompt_tokens: u64,
    pub generated_tokens: u64,
    /// From the start until the first token was known: the prefill.
    pub time_to_first_token_seconds: f64,
    pub prefill_tokens_per_second: f64,
    /// Tokens after the first over the time since the first.
    pub decode_tokens_per_second: f64,
}

/// `engine.stats()`: the last reply's figures and what the loaded model holds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EngineStats {
    #[serde(flatten)]
    pub turn: TurnFigures,
    /// Tokens the state has read so far in this conversation.
    pub conversation_tokens: u64,
    pub weight_bytes: u64,
    /// How the model's matrices are stored (`int8`, `int4`, `f32`).
    pub weight_format: String,
    pub state_bytes: u64,
    pub gpu_bytes: u64,
    /// The wasm heap of the thread the engine runs on (its worker, in worker mode).
    pub wasm_bytes: u64,
    pub load_seconds: f64,
    pub bytes_from_cache: u64,
    pub vocab_size: u64,
    /// The GPU adapter's name (`cpu` for the CPU reference).
    pub adapter: String,
    /// The sha256 of the model's `manifest.json` as fetched.
    pub model_id: Option<String>,
    /// Whether the engine's GPU device is gone.
    pub device_lost: bool,
    /// Whether a GPU error (a lost device is one) makes every call fail: load the model again.
    pub broken: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_cross_as_the_packages_field_names_and_back() {
        let stats = EngineStats {
            turn: TurnFigures {
                prompt_tokens: 12,
                generated_tokens: 3,
                time_to_first_token_seconds: 0.5,
                prefill_tokens_per_second: 24.0,
                decode_tokens_per_second: 7.5,
            },
            conversation_tokens: 40,
            weight_format: "int4".into(),
            model_id: Some("ab".into()),
            device_lost: true,
            ..EngineStats::default()
        };
        let json = serde_json::to_value(&stats).unwrap();
        let keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        for key in [
            "promptTokens",
            "generatedTokens",
            "timeToFirstTokenSeconds",
            "prefillTokensPerSecond",
            "decodeTokensPerSecond",
            "conversationTokens",
            "weightBytes",
            "weightFormat",
            "stateBytes",
            "gpuBytes",
            "wasmBytes",
            "loadSeconds",
            "bytesFromCache",
            "vocabSize",
            "adapter",
            "modelId",
            "deviceLost",
            "broken",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
        assert_eq!(keys.len(), 18, "{keys:?}");
        assert_eq!(serde_json::from_value::<EngineStats>(json).unwrap(), stats);
        // What an older package leaves out reads as its default, and what it adds is ignored.
        let partial: EngineStats = serde_json::from_str(r#"{"promptTokens": 4, "somethingNew": 1}"#).unwrap();
        assert_eq!(partial.turn.prompt_tokens, 4);
        assert_eq!(partial.model_id, None);
    }
}
