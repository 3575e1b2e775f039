//! Stop strings (OpenAI's `stop`): the reply ends where one of them first appears, and neither it
//! nor anything after it is part of the reply. Text streams out as it is generated, except a tail
//! that could still turn into a stop string: that is held back until the next piece settles it.

use crate::{Error, Result};

/// Most stop strings one request may give, and the longest one in bytes: each piece of text is
/// searched for all of them, so both are bounded.
pub const MAX_STOP_STRINGS: usize = 16;
pub const MAX_STOP_BYTES: usize = 256;

/// A request's stop strings, checked once when they are made: at most [`MAX_STOP_STRINGS`],
/// each non-empty and at most [`MAX_STOP_BYTES`] long.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StopStrings(Vec<String>);

impl StopStrings {
    pub fn new(stops: Vec<String>) -> Result<Self> {
        if stops.len() > MAX_STOP_STRINGS {
            return Err(Error::Input(format!("stop: {} strings, at most {MAX_STOP_STRINGS}", stops.len())));
        }
        if let Some(index) = stops.iter().position(|s| s.is_empty() || s.len() > MAX_STOP_BYTES) {
            return Err(Error::Input(format!(
                "stop[{index}] must be a non-empty string of at most {MAX_STOP_BYTES} bytes"
            )));
        }
        Ok(StopStrings(stops))
    }
}

/// The reply's text as it streams, cut at the first stop string.
#[derive(Debug, Default)]
pub struct StopText {
    stops: Vec<String>,
    /// Text not handed out yet: a suffix that is the start of some stop string.
    held: String,
    /// The text handed out so far: the reply.
    emitted: String,
    hit: bool,
}

impl StopText {
    pub fn new(stops: &StopStrings) -> Self {
        StopText { stops: stops.0.clone(), ..Default::default() }
    }

    /// Takes the next piece of the reply; returns the text that can be handed out now (empty
    /// while it is held back, and for everything after a stop string).
    pub fn push(&mut self, piece: &str) -> String {
        if self.hit {
            return String::new();
        }
        self.held.push_str(piece);
        let first_stop = self.stops.iter().filter_map(|stop| self.held.find(stop.as_str())).min();
        let out = match first_stop {
            Some(at) => {
                self.hit = true;
                let out = self.held[..at].to_string();
                self.held.clear();
                out
            }
            None => {
                let keep = self.undecided_tail();
                let out = self.held[..self.held.len() - keep].to_string();
                self.held.drain(..self.held.len() - keep);
                out
            }
        };
        self.emitted.push_str(&out);
        out
    }

    /// The reply ended without a stop string: what was held back is part of it after all.
    pub fn finish(&mut self) -> String {
        let out = std::mem::take(&mut self.held);
        self.emitted.push_str(&out);
        out
    }

    /// Whether a stop string ended the reply.
    pub fn hit(&self) -> bool {
        self.hit
    }

    /// The reply: everything handed out.
    pub fn text(&self) -> &str {
        &self.emitted
    }

    /// Bytes at the end of `held` that begin some stop string (the longest such suffix).
    fn undecided_tail(&self) -> usize {
        let held = self.held.as_str();
        (1..=held.len())
            .rev()
            .filter(|&n| held.is_char_boundary(held.len() - n))
            .find(|&n| self.stops.iter().any(|stop| stop.starts_with(&held[held.len() - n..])))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, String, bool) {
        let mut filter = StopText::new(&StopStrings::new(stops.iter().map(|s| s.to_string()).collect()).unwrap());
        let mut out: Vec<String> = pieces.iter().map(|p| filter.push(p)).collect();
        out.push(filter.finish());
        (out, filter.text().to_string(), filter.hit())
    }

    #[test]
    fn cuts_at_a_stop_string_split_across_pieces() {
        let (out, text, hit) = run(&["\n\nUser:"], &["Hello", " there.\n", "\nUs", "er: more", " ignored"]);
        assert_eq!(text, "Hello there.");
        assert!(hit);
        // "\n" and "\nUs" were held until they turned out to be the stop string.
        assert_eq!(out, ["Hello", " there.", "", "", "", ""]);
    }

    #[test]
    fn a_held_tail_that_is_not_a_stop_is_released() {
        let (out, text, hit) = run(&["END"], &["the E", "nd", " of it EN"]);
        assert_eq!(out, ["the ", "End", " of it ", "EN"]);
        assert_eq!(text, "the End of it EN");
        assert!(!hit);
    }

    #[test]
    fn the_earliest_of_several_stops_wins() {
        let (_, text, _) = run(&["world", "lo"], &["hello world"]);
        assert_eq!(text, "hel");
    }

    #[test]
    fn multibyte_text_is_cut_on_character_boundaries() {
        let (out, text, hit) = run(&["東京!"], &["行こう東", "京", "へ"]);
        assert_eq!(out, ["行こう", "", "東京へ", ""]);
        assert_eq!(text, "行こう東京へ");
        assert!(!hit);
    }

    #[test]
    fn bad_stop_lists_are_errors_that_name_the_field() {
        assert!(StopStrings::new(vec![String::new()]).unwrap_err().to_string().contains("stop[0]"));
        assert!(StopStrings::new(vec!["x".repeat(MAX_STOP_BYTES + 1)]).is_err());
        assert!(StopStrings::new(vec!["x".into(); MAX_STOP_STRINGS + 1]).unwrap_err().to_string().contains("stop:"));
        assert_eq!(run(&[], &["a", "b"]).1, "ab");
    }
}
