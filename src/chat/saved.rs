//! A conversation's state as bytes, to keep (IndexedDB, a file) and restore later, after a reload
//! or on another day: the fixed-size state, the ids it holds and the model it belongs to. Nothing
//! is prefilled again, however long the conversation was.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "RGSTATE\0"
//!      8     4  format version (u32 LE; this is 3)
//!     12    32  the model's identity: sha256 of its manifest
//!     44     1  backend: 0 CPU reference, 1 WebGPU engine (their buffers are laid out differently)
//!     45     1  1 if the history is known
//!     46     2  the backend's state layout (u16 LE): how its buffers are laid out, so that a
//!               build that changes a layout refuses an older one of the same sizes
//!     48     8  position: tokens the state holds
//!     56     4  tokens sampled so far (the GPU sampler's draw counter)
//!     60     4  history length H (= position when known, else 0)
//!     64     4  buffer count B
//!     68    4H  the history's ids
//!      …        B × (u64 LE length, then that many bytes)
//!    end    32  sha256 of everything before it
//! ```
//! Every length is checked against the bytes that are there before anything is allocated, so a
//! hostile or damaged file is one clear error. Older versions are read too: version 2 had the
//! GPU's pending sampled id at offset 60 (every generation now starts from its prompt, so it
//! is skipped); version 1 is version 2 with zero at offset 46, read as layout 1 (the layouts
//! have not changed since).

use sha2::{Digest, Sha256};

use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"RGSTATE\0";
pub const FORMAT_VERSION: u32 = 3;
/// Version 1 is version 2 with its layout field zero and every layout at 1.
const FIRST_LAYOUT: u16 = 1;
const HEADER: usize = 68;
/// Versions 1 and 2 had 4 bytes more: the pending sampled id.
const OLD_PENDING_ID: usize = 4;
const CHECKSUM: usize = 32;
/// More buffers than any model has (2 per layer plus 2).
const MAX_BUFFERS: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    Cpu = 0,
    Gpu = 1,
}

/// A checkpoint's contents, whichever backend took it.
#[derive(Clone, Debug, PartialEq)]
pub struct StateParts {
    pub backend: BackendKind,
    /// The backend's state layout version (`model::STATE_LAYOUT`, `gpu::engine::STATE_LAYOUT`).
    pub layout: u16,
    pub position: u64,
    pub generated: u32,
    pub buffers: Vec<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SavedConversation {
    /// The sha256 of the model's manifest.
    pub model: [u8; 32],
    pub history: Option<Vec<u32>>,
    pub state: StateParts,
}

impl SavedConversation {
    pub fn to_bytes(&self) -> Vec<u8> {
        let history = self.history.as_deref().unwrap_or_default();
        let state = &self.state;
        let buffer_bytes: usize = state.buffers.iter().map(|b| 8 + b.len()).sum();
        let mut out = Vec::with_capacity(HEADER + 4 * history.len() + buffer_bytes + CHECKSUM);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&self.model);
        out.extend_from_slice(&[state.backend as u8, self.history.is_some() as u8]);
        out.extend_from_slice(&state.layout.to_le_bytes());
        out.extend_from_slice(&state.position.to_le_bytes());
        out.extend_from_slice(&state.generated.to_le_bytes());
        out.extend_from_slice(&(history.len() as u32).to_le_bytes());
        out.extend_from_slice(&(state.buffers.len() as u32).to_le_bytes());
        for id in history {
            out.extend_from_slice(&id.to_le_bytes());
        }
        for buffer in &state.buffers {
            out.extend_from_slice(&(buffer.len() as u64).to_le_bytes());
            out.extend_from_slice(buffer);
        }
        let checksum = Sha256::digest(&out);
        out.extend_from_slice(&checksum);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let bad = |why: &str| Error::Input(format!("saved state: {why}"));
        if bytes.len() < 12 || &bytes[..8] != MAGIC {
            return Err(bad("not a saved RecurrentGemma conversation state"));
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if !(1..=FORMAT_VERSION).contains(&version) {
            return Err(bad(&format!("format version {version}; this build reads versions 1 to {FORMAT_VERSION}")));
        }
        let header = if version < 3 { HEADER + OLD_PENDING_ID } else { HEADER };
        if bytes.len() < header + CHECKSUM {
            return Err(bad(&format!("{} bytes is too short", bytes.len())));
        }
        let (body, checksum) = bytes.split_at(bytes.len() - CHECKSUM);
        if Sha256::digest(body).as_slice() != checksum {
            return Err(bad("the checksum does not match: the bytes are damaged or cut short"));
        }
        let mut reader = Reader { bytes: body, at: 12 };
        let model: [u8; 32] = reader.take(32)?.try_into().expect("32 bytes");
        let flags = reader.take(4)?;
        let backend = match flags[0] {
            0 => BackendKind::Cpu,
            1 => BackendKind::Gpu,
            other => return Err(bad(&format!("unknown backend {other}"))),
        };
        let history_known = match flags[1] {
            0 => false,
            1 => true,
            other => return Err(bad(&format!("bad history flag {other}"))),
        };
        let layout = match (version, u16::from_le_bytes([flags[2], flags[3]])) {
            (1, 0) => FIRST_LAYOUT,
            (1, _) => return Err(bad("format version 1 has zero at offset 46")),
            (_, layout) => layout,
        };
        let position = reader.u64()?;
        let generated = reader.u32()?;
        if version < 3 {
            reader.take(OLD_PENDING_ID)?;
        }
        let history_len = reader.u32()?;
        let buffer_count = reader.u32()? as usize;
        if buffer_count > MAX_BUFFERS {
            return Err(bad(&format!("{buffer_count} buffers, at most {MAX_BUFFERS}")));
        }
        if history_known && u64::from(history_len) != position {
            return Err(bad(&format!("its history has {history_len} tokens but its state holds {position}")));
        }
        if !history_known && history_len != 0 {
            return Err(bad("a history is given but marked unknown"));
        }
        // In u32, so that it cannot wrap on wasm32, where usize is 32 bits.
        let history_bytes = history_len
            .checked_mul(4)
            .ok_or_else(|| bad(&format!("a history of {history_len} tokens is longer than 4 GiB")))?;
        let history =
            reader.take(history_bytes as usize)?.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap()));
        let history = history_known.then(|| history.collect());
        let mut buffers = Vec::with_capacity(buffer_count);
        for _ in 0..buffer_count {
            let len = usize::try_from(reader.u64()?).map_err(|_| bad("a buffer longer than memory"))?;
            buffers.push(reader.take(len)?.to_vec());
        }
        if reader.at != body.len() {
            return Err(bad(&format!("{} bytes after the last buffer", body.len() - reader.at)));
        }
        Ok(SavedConversation { model, history, state: StateParts { backend, layout, position, generated, buffers } })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&end| end <= self.bytes.len()).ok_or_else(|| {
            Error::Input(format!("saved state: {n} bytes are needed at offset {}, past its end", self.at))
        })?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SavedConversation {
        SavedConversation {
            model: [7; 32],
            history: Some(vec![2, 106, 1645]),
            state: StateParts {
                backend: BackendKind::Gpu,
                layout: 7,
                position: 3,
                generated: 1,
                buffers: vec![vec![1, 2, 3, 4], Vec::new(), vec![9; 40]],
            },
        }
    }

    #[test]
    fn round_trips_exactly() {
        let saved = sample();
        assert_eq!(SavedConversation::from_bytes(&saved.to_bytes()).unwrap(), saved);
        let unknown = SavedConversation { history: None, ..sample() };
        assert_eq!(SavedConversation::from_bytes(&unknown.to_bytes()).unwrap(), unknown);
    }

    #[test]
    fn every_damage_is_one_clear_error() {
        let bytes = sample().to_bytes();
        let err = |b: &[u8]| SavedConversation::from_bytes(b).unwrap_err().to_string();
        assert!(err(b"hello").contains("not a saved"));
        let mut version = bytes.clone();
        version[8] = 4;
        assert!(err(&version).contains("format version 4; this build reads versions 1 to 3"));
        // Every cut, and every flipped byte, is caught (by a length or by the checksum).
        for cut in 0..bytes.len() {
            assert!(SavedConversation::from_bytes(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for at in 12..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x40;
            assert!(SavedConversation::from_bytes(&flipped).is_err(), "flip at {at}");
        }
    }

    #[test]
    fn lengths_are_checked_before_allocating() {
        // A well-formed checksum over a header that claims 4 GiB of history: refused, not allocated.
        let mut body = sample().to_bytes();
        body.truncate(body.len() - CHECKSUM);
        let claimed = u32::MAX / 4;
        body[60..64].copy_from_slice(&claimed.to_le_bytes());
        body[48..56].copy_from_slice(&u64::from(claimed).to_le_bytes());
        let checksum = Sha256::digest(&body);
        body.extend_from_slice(&checksum);
        assert!(SavedConversation::from_bytes(&body).unwrap_err().to_string().contains("past its end"));
    }

    /// `body` (everything before the checksum) with a valid checksum after it.
    fn with_checksum(mut body: Vec<u8>) -> Vec<u8> {
        let checksum = Sha256::digest(&body);
        body.extend_from_slice(&checksum);
        body
    }

    #[test]
    fn a_history_length_that_wraps_in_32_bits_is_refused() {
        // 4 × (2^30 + 1) is 4 in 32-bit arithmetic: with usize arithmetic on wasm32 the reader
        // would take one id for a history claiming 2^30 + 1, then trust that count.
        let mut body = sample().to_bytes();
        body.truncate(body.len() - CHECKSUM);
        let claimed = (1u32 << 30) + 1;
        body[60..64].copy_from_slice(&claimed.to_le_bytes());
        body[48..56].copy_from_slice(&u64::from(claimed).to_le_bytes());
        let err = SavedConversation::from_bytes(&with_checksum(body)).unwrap_err().to_string();
        assert!(err.contains("a history of 1073741825 tokens is longer than 4 GiB"), "{err}");
    }

    /// `sample()` as version 2 wrote it: the pending sampled id (here 1645) at offset 60.
    fn version_2_body() -> Vec<u8> {
        let mut body = sample().to_bytes();
        body.truncate(body.len() - CHECKSUM);
        body[8..12].copy_from_slice(&2u32.to_le_bytes());
        body.splice(60..60, 1645u32.to_le_bytes());
        body
    }

    #[test]
    fn version_2_reads_without_its_pending_id() {
        let old = SavedConversation::from_bytes(&with_checksum(version_2_body())).unwrap();
        assert_eq!(old, sample());
    }

    #[test]
    fn version_1_reads_as_layout_1_and_the_layout_round_trips() {
        let mut body = version_2_body();
        body[8..12].copy_from_slice(&1u32.to_le_bytes());
        body[46..48].copy_from_slice(&[0, 0]);
        let old = SavedConversation::from_bytes(&with_checksum(body.clone())).unwrap();
        assert_eq!(old.state.layout, FIRST_LAYOUT);
        assert_eq!(old.state.buffers, sample().state.buffers);
        body[46] = 2;
        let err = SavedConversation::from_bytes(&with_checksum(body)).unwrap_err().to_string();
        assert!(err.contains("version 1 has zero at offset 46"), "{err}");
        let bytes = sample().to_bytes();
        assert_eq!(u16::from_le_bytes([bytes[46], bytes[47]]), 7);
    }
}
