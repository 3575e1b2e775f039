//! What the fuzz targets share: an allocation limit, and valid tiny models (int8 and int4) whose
//! shard the streaming parser is fed.

use std::alloc::{GlobalAlloc, Layout, System};

use rgweb::config::{Config, Preset};
use rgweb::weights::format::{shard_header, Manifest, Quantization};
use rgweb::weights::safetensors::Dtype;
use rgweb::weights::stream::hex;
use sha2::{Digest, Sha256};

/// A single allocation above this is a finding: the input controls a size the parser trusted.
/// (libFuzzer's own `-malloc_limit_mb` only sees allocations under a sanitizer; this also works
/// with `--sanitizer none`.)
pub const MAX_ALLOCATION: usize = 256 << 20;

/// The system allocator, failing any allocation over [`MAX_ALLOCATION`]. A failed allocation
/// aborts through `handle_alloc_error` ("memory allocation of N bytes failed"), which libFuzzer
/// records as a crash with its input.
pub struct LimitedAlloc;

unsafe impl GlobalAlloc for LimitedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOCATION {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOCATION {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > MAX_ALLOCATION {
            return std::ptr::null_mut();
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: LimitedAlloc = LimitedAlloc;

/// The real architecture at a size whose single shard is a few kilobytes, so the fuzzer can
/// mutate all of it (header and data) at speed.
pub fn tiny_config() -> Config {
    Config {
        vocab_size: 32,
        hidden_size: 8,
        intermediate_size: 2 * 3 * 8,
        num_hidden_layers: 3,
        num_attention_heads: 2,
        lru_width: Some(8),
        attention_window_size: 4,
        ..Config::preset(Preset::Tiny)
    }
}

/// The smallest shape int4 takes: every matrix's columns a whole number of 32-column groups
/// (width 32, one head so the RG-LRU blocks are 32 wide).
pub fn tiny_int4_config() -> Config {
    Config {
        hidden_size: 32,
        intermediate_size: 2 * 3 * 32,
        num_attention_heads: 1,
        lru_width: Some(32),
        ..tiny_config()
    }
}

/// A checked manifest of a tiny model and its shards' bytes (the sha256s in the manifest match):
/// [`tiny_config`] in int8, or [`tiny_int4_config`] in int4.
pub fn tiny_model(quantization: Quantization) -> (Manifest, Vec<Vec<u8>>) {
    let config = if quantization == Quantization::Int4 { tiny_int4_config() } else { tiny_config() };
    let mut manifest = Manifest::plan(&config, quantization);
    let mut shards = Vec::new();
    for index in 0..manifest.shards.len() {
        let mut pieces: Vec<_> = manifest.shard_pieces(index).cloned().collect();
        pieces.sort_by_key(|p| p.offset);
        let mut bytes = shard_header(&pieces);
        for piece in &pieces {
            assert_eq!(bytes.len() as u64, piece.offset, "pieces follow the header back to back");
            // Quantized values may be any bytes; f32 and f16 ones must be finite (the parser
            // rejects NaN/Inf).
            match piece.dtype {
                Dtype::F32 => bytes.extend((0..piece.bytes / 4).flat_map(|i| (i as f32 * 0.25 - 3.0).to_le_bytes())),
                // f16 1.0 with the low mantissa bits varied: finite, and different per scale.
                Dtype::F16 => {
                    bytes.extend((0..piece.bytes / 2).flat_map(|i| (0x3c00u16 | (i as u16 & 0x3ff)).to_le_bytes()))
                }
                _ => bytes.extend((0..piece.bytes).map(|i| (i as u8).wrapping_mul(31))),
            }
        }
        let info = &mut manifest.shards[index];
        assert_eq!(bytes.len() as u64, info.bytes);
        info.sha256 = hex(&Sha256::digest(&bytes));
        shards.push(bytes);
    }
    manifest.check().expect("the tiny manifest is valid");
    (manifest, shards)
}
