//! The CLIP BPE tokenizer, through the `tokenizers` crate.
//!
//! CLIP's vocabulary ships as `bpe_simple_vocab_16e6.txt.gz` (in the PyPI
//! wheel of `open_clip_torch`). [`build_tokenizer_json`] turns it into a
//! `tokenizer.json` with the same structure as Hugging Face's file for
//! `openai/clip-vit-base-patch16`, so either file can be passed to
//! [`ClipTokenizer::from_file`] and both give the ids of OpenAI's reference
//! `SimpleTokenizer`: the same byte-level alphabet, vocabulary order, merges,
//! pre-tokenizer pattern and lowercasing.
//!
//! Truncation follows CLIP: `[SOT] ids [EOT]`, cut to the context length with
//! the last kept position overwritten by EOT.

use std::io::Read;
use std::path::Path;

use schemas::CONTEXT_LENGTH;
use serde_json::{Value, json};

/// The start-of-text token.
pub const SOT: &str = "<|startoftext|>";
/// The end-of-text token (also CLIP's unknown and padding token).
pub const EOT: &str = "<|endoftext|>";

/// Number of merges CLIP uses from the vocabulary file (OpenAI's
/// `merges[1:49152-256-2+1]`): 49,408 ids = 512 byte symbols + merges + 2 specials.
const CLIP_MERGES: usize = 49152 - 256 - 2;

/// CLIP's pre-tokenizer pattern (OpenAI `simple_tokenizer.py`), applied after lowercasing.
const CLIP_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// CLIP's text cleaning, the one place it is written: every text that is
/// tokenized (report sections at ingest, prompts, `train embed --texts`) is
/// cleaned by this function first, as OpenAI's `basic_clean` +
/// `whitespace_clean` do before their BPE.
///
/// - the parts of `ftfy.fix_text` (its default settings) that change text
///   which is already valid Unicode: curly quotes to straight ones, Latin
///   ligatures spelled out (`ﬁ` → `fi`), full-width ASCII and the ideographic
///   space to their plain forms, control and invisible format characters
///   removed (tab, line feed and carriage return are kept as whitespace);
/// - HTML entities decoded twice (`&amp;gt;` → `>`), as `basic_clean` does;
/// - runs of whitespace collapsed to one space, ends trimmed.
///
/// Not done: ftfy's repair of mojibake (`cafÃ©` → `café`), of C1 control
/// characters read as Windows-1252, and the width fixes outside full-width
/// ASCII (half-width katakana); text with those differs from OpenAI's.
pub fn clean_text(raw: &str) -> String {
    let fixed: String = raw
        .chars()
        .filter_map(ftfy_char)
        .flat_map(|s| s.chars())
        .collect();
    let once = html_escape::decode_html_entities(&fixed);
    let decoded = html_escape::decode_html_entities(&once);
    let mut out = String::with_capacity(decoded.len());
    for word in decoded.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// One character after ftfy's `uncurl_quotes`, `fix_latin_ligatures`,
/// `fix_character_width` and `remove_control_chars` (ftfy 6.3's tables),
/// or `None` where the character is removed.
fn ftfy_char(c: char) -> Option<CharFix> {
    let fix = match c {
        '\u{2bc}' | '\u{2018}'..='\u{201b}' => CharFix::One('\''),
        '\u{201c}'..='\u{201f}' => CharFix::One('"'),
        '\u{132}' => CharFix::Str("IJ"),
        '\u{133}' => CharFix::Str("ij"),
        '\u{149}' => CharFix::Str("\u{2bc}n"),
        '\u{1c4}' => CharFix::Str("D\u{17d}"),
        '\u{1c5}' => CharFix::Str("D\u{17e}"),
        '\u{1c6}' => CharFix::Str("d\u{17e}"),
        '\u{1c7}' => CharFix::Str("LJ"),
        '\u{1c8}' => CharFix::Str("Lj"),
        '\u{1c9}' => CharFix::Str("lj"),
        '\u{1ca}' => CharFix::Str("NJ"),
        '\u{1cb}' => CharFix::Str("Nj"),
        '\u{1cc}' => CharFix::Str("nj"),
        '\u{1f1}' => CharFix::Str("DZ"),
        '\u{1f2}' => CharFix::Str("Dz"),
        '\u{1f3}' => CharFix::Str("dz"),
        '\u{fb00}' => CharFix::Str("ff"),
        '\u{fb01}' => CharFix::Str("fi"),
        '\u{fb02}' => CharFix::Str("fl"),
        '\u{fb03}' => CharFix::Str("ffi"),
        '\u{fb04}' => CharFix::Str("ffl"),
        '\u{fb05}' => CharFix::Str("\u{17f}t"),
        '\u{fb06}' => CharFix::Str("st"),
        // Full-width ASCII sits 0xFEE0 above the ASCII it stands for.
        '\u{ff01}'..='\u{ff5e}' => {
            CharFix::One(char::from_u32(c as u32 - 0xfee0).expect("ASCII range"))
        }
        '\u{3000}' => CharFix::One(' '),
        '\u{0}'..='\u{8}'
        | '\u{b}'
        | '\u{e}'..='\u{1f}'
        | '\u{7f}'
        | '\u{206a}'..='\u{206f}'
        | '\u{feff}'
        | '\u{fff9}'..='\u{fffc}' => return None,
        other => CharFix::One(other),
    };
    Some(fix)
}

/// What one character becomes: itself or another character, or a few.
enum CharFix {
    One(char),
    Str(&'static str),
}

impl CharFix {
    fn chars(self) -> impl Iterator<Item = char> {
        let (one, many) = match self {
            CharFix::One(c) => (Some(c), ""),
            CharFix::Str(s) => (None, s),
        };
        one.into_iter().chain(many.chars())
    }
}

/// Why a tokenizer could not be built, loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    /// The vocabulary file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The vocabulary file has fewer merges than CLIP needs or a malformed line.
    #[error("{path}: not a CLIP BPE vocabulary: {reason}")]
    BadVocab {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The `tokenizers` crate refused the file or the text.
    #[error("{context}: {message}")]
    Tokenizers {
        /// What was being done (file name or "encode").
        context: String,
        /// The library's message.
        message: String,
    },
}

/// OpenAI's reversible byte → printable-character table (`bytes_to_unicode`),
/// as (byte, char) pairs in OpenAI's order: the printable bytes first, then
/// the rest mapped to U+0100 onwards. The vocabulary lists them in this order.
fn byte_alphabet() -> Vec<(u8, char)> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut table: Vec<(u8, char)> = (0..=255u8)
        .filter(|&b| printable(b))
        .map(|b| (b, char::from(b)))
        .collect();
    let others = (0..=255u8).filter(|&b| !printable(b));
    table.extend(
        others
            .zip(256u32..)
            .map(|(b, c)| (b, char::from_u32(c).expect("U+0100.. are valid"))),
    );
    table
}

/// Builds the text of a `tokenizer.json` from CLIP's gzipped BPE vocabulary.
pub fn build_tokenizer_json(vocab_gz: &Path) -> Result<String, TokenizeError> {
    let path = vocab_gz.display().to_string();
    let io = |source| TokenizeError::Io {
        path: path.clone(),
        source,
    };
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(vocab_gz).map_err(io)?)
        .read_to_string(&mut text)
        .map_err(io)?;
    let lines: Vec<&str> = text.split('\n').skip(1).take(CLIP_MERGES).collect();
    if lines.len() < CLIP_MERGES {
        return Err(TokenizeError::BadVocab {
            path,
            reason: format!("{} merges, CLIP needs {CLIP_MERGES}", lines.len()),
        });
    }
    let mut merges = Vec::with_capacity(CLIP_MERGES);
    for (i, line) in lines.iter().enumerate() {
        let mut parts = line.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() => merges.push((a, b)),
            _ => {
                return Err(TokenizeError::BadVocab {
                    path,
                    reason: format!("line {} is not a merge pair: {line:?}", i + 2),
                });
            }
        }
    }

    let alphabet: Vec<char> = byte_alphabet().into_iter().map(|(_, c)| c).collect();
    let mut vocab: Vec<String> = alphabet.iter().map(|c| c.to_string()).collect();
    vocab.extend(alphabet.iter().map(|c| format!("{c}</w>")));
    vocab.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
    vocab.push(SOT.into());
    vocab.push(EOT.into());
    let sot_id = vocab.len() - 2;
    let eot_id = vocab.len() - 1;
    let vocab_map: serde_json::Map<String, Value> = vocab
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, json!(i)))
        .collect();
    let special = |id: usize, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": true, "special": true})
    };

    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(sot_id, SOT), special(eot_id, EOT)],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"},
            {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
            {"type": "Lowercase"}
        ]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": CLIP_PATTERN}, "behavior": "Removed", "invert": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]},
        "post_processor": {"type": "RobertaProcessing", "sep": [EOT, eot_id], "cls": [SOT, sot_id],
                           "trim_offsets": false, "add_prefix_space": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": EOT, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "</w>", "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab_map,
                  "merges": merges.iter().map(|(a, b)| json!([a, b])).collect::<Vec<_>>()}
    });
    serde_json::to_string(&tokenizer).map_err(|e| TokenizeError::Tokenizers {
        context: path,
        message: e.to_string(),
    })
}

/// One tokenized text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// `[SOT] ids [EOT]`, at most the context length.
    pub ids: Vec<i32>,
    /// Byte range of each token in the input text; `(0, 0)` for SOT/EOT.
    pub offsets: Vec<(usize, usize)>,
    /// The text did not fit and was cut.
    pub truncated: bool,
}

/// A CLIP tokenizer loaded from a `tokenizer.json`.
pub struct ClipTokenizer {
    inner: tokenizers::Tokenizer,
    eot_id: i32,
    context_length: usize,
}

impl ClipTokenizer {
    /// Loads a `tokenizer.json` (ours or Hugging Face's).
    pub fn from_file(path: &Path) -> Result<Self, TokenizeError> {
        let context = path.display().to_string();
        let inner =
            tokenizers::Tokenizer::from_file(path).map_err(|e| TokenizeError::Tokenizers {
                context: context.clone(),
                message: e.to_string(),
            })?;
        Self::from_tokenizer(inner, context)
    }

    fn from_tokenizer(
        mut inner: tokenizers::Tokenizer,
        context: String,
    ) -> Result<Self, TokenizeError> {
        // Hugging Face's file carries its own truncation/padding settings; CLIP's
        // truncation rule is applied in `encode`, so switch theirs off.
        inner
            .with_truncation(None)
            .map_err(|e| TokenizeError::Tokenizers {
                context: context.clone(),
                message: e.to_string(),
            })?;
        inner.with_padding(None);
        let eot_id = inner
            .token_to_id(EOT)
            .ok_or_else(|| TokenizeError::Tokenizers {
                context,
                message: format!("no {EOT} token: not a CLIP tokenizer"),
            })? as i32;
        Ok(ClipTokenizer {
            inner,
            eot_id,
            context_length: CONTEXT_LENGTH,
        })
    }

    /// The id of EOT (CLIP pools the text embedding there).
    pub fn eot_id(&self) -> i32 {
        self.eot_id
    }

    /// Cleans raw text with [`clean_text`] and tokenizes it: the call for any
    /// text that has not been cleaned yet (prompts, user text files).
    pub fn encode_text(&self, raw: &str) -> Result<Tokens, TokenizeError> {
        self.encode(&clean_text(raw))
    }

    /// Tokenizes `text`, already cleaned by [`clean_text`], as CLIP does,
    /// truncating to the context length. Offsets refer to `text`.
    pub fn encode(&self, text: &str) -> Result<Tokens, TokenizeError> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| TokenizeError::Tokenizers {
                context: "encode".into(),
                message: e.to_string(),
            })?;
        let mut ids: Vec<i32> = enc.get_ids().iter().map(|&i| i as i32).collect();
        let mut offsets = enc.get_offsets().to_vec();
        let truncated = ids.len() > self.context_length;
        if truncated {
            ids.truncate(self.context_length);
            offsets.truncate(self.context_length);
            ids[self.context_length - 1] = self.eot_id;
            offsets[self.context_length - 1] = (0, 0);
        }
        Ok(Tokens {
            ids,
            offsets,
            truncated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_matches_openai_table() {
        let a = byte_alphabet();
        assert_eq!(a.len(), 256);
        let map: std::collections::HashMap<u8, char> = a.iter().copied().collect();
        assert_eq!(map[&b'a'], 'a');
        assert_eq!(map[&b' '], 'Ġ'); // space → U+0120, as in GPT-2/CLIP
        assert_eq!(map[&0], 'Ā');
        assert_eq!(
            a[0],
            (b'!', '!'),
            "printable bytes come first in the vocabulary"
        );
        assert_eq!(a[188], (0, 'Ā'), "then the others, from U+0100");
        let mut chars: Vec<char> = a.iter().map(|p| p.1).collect();
        chars.sort();
        chars.dedup();
        assert_eq!(chars.len(), 256, "alphabet must be a bijection");
    }

    #[test]
    fn cleaning_applies_ftfy_fixes_html_twice_and_collapses_whitespace() {
        assert_eq!(
            clean_text("  Tube tip &amp;gt; 2 cm\n  above the carina &amp;\tstable. "),
            "Tube tip > 2 cm above the carina & stable."
        );
        assert_eq!(
            clean_text("\u{201c}small\u{201d} \u{2018}left\u{2019} e\u{301}"),
            "\"small\" 'left' e\u{301}"
        );
        assert_eq!(
            clean_text("\u{fb01}brosis \u{ff23}\u{ff34}\u{3000}scan"),
            "fibrosis CT scan"
        );
        assert_eq!(clean_text("a\u{0}b\u{feff}c\u{7f}d\u{b}e"), "abcde");
        assert_eq!(clean_text("caf\u{e9} ___ left"), "caf\u{e9} ___ left");
    }

    #[test]
    fn rejects_a_file_that_is_not_a_vocabulary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.txt.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, b"#version\na b\n").unwrap();
        std::fs::write(&path, gz.finish().unwrap()).unwrap();
        let err = build_tokenizer_json(&path).unwrap_err().to_string();
        assert!(err.contains("merges, CLIP needs"), "{err}");
    }
}
