//! The synthetic SentencePiece-style ("llama") vocabulary.
//!
//! Layout: `<unk>`, `<s>`, `</s>`, `<|im_start|>`, `<|im_end|>`, the 256 byte tokens
//! `<0x00>`..`<0xFF>`, then normal pieces (`▁`, U+2581, marks a leading space):
//! single characters, common English words with and without `▁` together with all their
//! prefixes, a few word endings, and generated syllable pieces up to the requested size.
//!
//! llama.cpp's SPM tokenizer starts from single characters and repeatedly merges the adjacent
//! pair whose concatenation is a token with the highest score. Because every prefix of a listed
//! word is itself a token, the leftmost piece of a word can always absorb its right neighbour,
//! so listed words always come out as one token. Scores decrease with position (short, common
//! pieces first, like a trained SentencePiece model); characters missing from the vocabulary
//! fall back to byte tokens, so any UTF-8 text round-trips.

use std::collections::HashSet;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::words::{CAPITALIZED_WORDS, CODAS, COMMON_WORDS, NUCLEI, ONSETS, SUFFIXES};

/// The SentencePiece whitespace marker.
pub(crate) const SPACE: char = '\u{2581}';

/// `<unk>` token id.
pub(crate) const UNK_ID: u32 = 0;
/// `<s>` (beginning of sequence) token id.
pub(crate) const BOS_ID: u32 = 1;
/// `<|im_end|>` token id: the end-of-sequence token, so chat generation stops on it.
pub(crate) const EOS_ID: u32 = 4;

/// Special tokens and their `tokenizer.ggml.token_type`, in id order.
const SPECIALS: [(&str, i32); 5] = [
    ("<unk>", TYPE_UNKNOWN),
    ("<s>", TYPE_CONTROL),
    ("</s>", TYPE_CONTROL),
    ("<|im_start|>", TYPE_CONTROL),
    ("<|im_end|>", TYPE_CONTROL),
];

// `enum llama_token_type` values.
const TYPE_NORMAL: i32 = 1;
const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_BYTE: i32 = 6;

/// Fixed seed for the generated pieces: the vocabulary does not depend on the weights' seed.
const FILLER_SEED: u64 = 0x6f75_7470_6f73_7431;

/// Tokens, scores and types, index = token id.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Vocab {
    pub tokens: Vec<String>,
    pub scores: Vec<f32>,
    pub types: Vec<i32>,
}

impl Vocab {
    /// Number of tokens.
    pub(crate) fn len(&self) -> usize {
        self.tokens.len()
    }
}

/// Builds a vocabulary of exactly `n_vocab` tokens (at least the 261 special and byte tokens).
///
/// Deterministic: the same `n_vocab` always gives the same vocabulary, and a smaller
/// vocabulary is a prefix of a larger one.
pub(crate) fn build(n_vocab: usize) -> Vocab {
    let mut vocab = Vocab {
        tokens: Vec::with_capacity(n_vocab),
        scores: Vec::with_capacity(n_vocab),
        types: Vec::with_capacity(n_vocab),
    };
    for (text, ty) in SPECIALS {
        vocab.tokens.push(text.to_owned());
        vocab.scores.push(0.0);
        vocab.types.push(ty);
    }
    for byte in 0..=255u8 {
        vocab.tokens.push(format!("<0x{byte:02X}>"));
        vocab.scores.push(0.0);
        vocab.types.push(TYPE_BYTE);
    }

    let n_normal = n_vocab.saturating_sub(vocab.len());
    let pieces = normal_pieces(n_normal);
    for (rank, piece) in pieces.into_iter().enumerate() {
        vocab.tokens.push(piece);
        // Like a trained SentencePiece model: log-probability-like scores, decreasing.
        vocab.scores.push(-(rank as f32));
        vocab.types.push(TYPE_NORMAL);
    }
    vocab
}

/// Ordered, distinct normal pieces; exactly `n` of them (the built-in ones are truncated if
/// `n` is smaller than their count).
fn normal_pieces(n: usize) -> Vec<String> {
    let mut set = built_in_pieces();

    // Fill up with syllable pieces: 1 to 3 syllables, half of them word-initial.
    let mut rng = ChaCha8Rng::seed_from_u64(FILLER_SEED);
    while set.pieces.len() < n {
        let n_syllables = match rng.gen_range(0..10) {
            0..=2 => 1,
            3..=7 => 2,
            _ => 3,
        };
        let mut piece = String::new();
        if rng.gen_bool(0.5) {
            piece.push(SPACE);
        }
        for _ in 0..n_syllables {
            piece.push_str(ONSETS[rng.gen_range(0..ONSETS.len())]);
            piece.push_str(NUCLEI[rng.gen_range(0..NUCLEI.len())]);
            piece.push_str(CODAS[rng.gen_range(0..CODAS.len())]);
        }
        set.add(piece);
    }

    set.pieces.truncate(n);
    set.pieces
}

/// Characters, words with their prefixes, and word endings, in score order.
fn built_in_pieces() -> PieceSet {
    let mut set = PieceSet::default();

    set.add(SPACE.to_string());
    // Printable ASCII, alone and after a space marker.
    for c in '!'..='~' {
        set.add(c.to_string());
    }
    for c in '!'..='~' {
        set.add(format!("{SPACE}{c}"));
    }
    for word in COMMON_WORDS.split_whitespace() {
        set.add_with_prefixes(&format!("{SPACE}{word}"));
        set.add_with_prefixes(word);
    }
    for word in CAPITALIZED_WORDS.split_whitespace() {
        set.add_with_prefixes(&format!("{SPACE}{word}"));
        set.add_with_prefixes(word);
    }
    for suffix in SUFFIXES.split_whitespace() {
        set.add_with_prefixes(suffix);
    }
    set
}

/// An insertion-ordered set of pieces.
#[derive(Default)]
struct PieceSet {
    pieces: Vec<String>,
    seen: HashSet<String>,
}

impl PieceSet {
    fn add(&mut self, piece: String) {
        if !piece.is_empty() && self.seen.insert(piece.clone()) {
            self.pieces.push(piece);
        }
    }

    /// Adds every prefix of `word` with at least two characters, shortest first (so the SPM
    /// merge path to the whole word exists).
    fn add_with_prefixes(&mut self, word: &str) {
        let ends = word.char_indices().map(|(i, _)| i).skip(2);
        for end in ends.chain(std::iter::once(word.len())) {
            self.add(word[..end].to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::Preset;

    #[test]
    fn largest_vocab_has_exact_size_and_distinct_tokens() {
        // Smaller vocabularies are prefixes of larger ones (see the layout test), so checking
        // the largest covers every preset.
        let n = Preset::ALL.iter().map(|p| p.dims().n_vocab as usize).max().unwrap_or_default();
        let vocab = build(n);
        assert_eq!(vocab.len(), n);
        assert_eq!(vocab.scores.len(), n);
        assert_eq!(vocab.types.len(), n);
        let distinct: HashSet<&String> = vocab.tokens.iter().collect();
        assert_eq!(distinct.len(), n, "duplicate tokens");
        assert!(
            vocab.tokens.iter().all(|t| t.chars().skip(1).all(|c| c != SPACE)),
            "space marker inside a piece"
        );
    }

    #[test]
    fn built_in_pieces_fit_in_tiny_vocab() {
        // Everything before the filler must fit, or tiny would lose word prefixes.
        let n_built_in = SPECIALS.len() + 256 + built_in_pieces().pieces.len();
        let n_tiny = Preset::Tiny.dims().n_vocab as usize;
        assert!(n_built_in < n_tiny, "{n_built_in} built-in tokens");
        let tiny = build(n_tiny);
        for word in ["\u{2581}capital", "\u{2581}France", "\u{2581}Hello", "\u{2581}what"] {
            assert!(tiny.tokens.iter().any(|t| t == word), "{word} missing");
        }
        let mut set = PieceSet::default();
        set.add_with_prefixes("\u{2581}ab");
        assert_eq!(set.pieces, ["\u{2581}a", "\u{2581}ab"]);
    }

    #[test]
    fn layout_of_special_and_byte_tokens() {
        let vocab = build(1000);
        assert_eq!(vocab.tokens[UNK_ID as usize], "<unk>");
        assert_eq!(vocab.tokens[BOS_ID as usize], "<s>");
        assert_eq!(vocab.tokens[EOS_ID as usize], "<|im_end|>");
        assert_eq!(vocab.tokens[5], "<0x00>");
        assert_eq!(vocab.tokens[5 + 0x0A], "<0x0A>");
        assert_eq!(vocab.types[5 + 255], TYPE_BYTE);
        assert_eq!(vocab.types[261], TYPE_NORMAL);
        assert_eq!(build(500).tokens[..], vocab.tokens[..500]);
    }
}
