//! Text: everything MMCLIP-rs does to report text, without images or codecs.
//!
//! - [`report`] splits a free-text report into sections with the rules of the
//!   MIMIC-CXR section parser and builds the training text from them.
//! - [`tokenize`] is CLIP's text cleaning ([`tokenize::clean_text`]) and BPE
//!   tokenizer: [`tokenize::ClipTokenizer::encode_text`] is the one place text
//!   is tokenized, for report sections at ingest, prompts, and
//!   `train embed --texts` alike.
//! - [`entities`] finds medical entities (ScispaCy sidecar or the built-in
//!   lexicon of `data/lexicon.txt`) and maps them onto tokens.
//!
//! A crate of its own so that `train` and `synth`, which tokenize and parse
//! reports, do not build ingest's DICOM and JPEG 2000 / JPEG-LS codecs.
//!
//! ```
//! use text::entities::Lexicon;
//! use text::report::{DEFAULT_SECTIONS, parse_report, training_text};
//!
//! let report = " FINDINGS:  Small left\n pleural effusion.\n \n IMPRESSION:  Effusion.\n";
//! let text = training_text(&parse_report(report), &DEFAULT_SECTIONS).unwrap();
//! assert_eq!(text, "Small left pleural effusion. Effusion.");
//! let spans = Lexicon::builtin().find(&text);
//! assert_eq!((spans[0].start, spans[0].end), (11, 27)); // "pleural effusion"
//! ```
#![deny(missing_docs)]

pub mod entities;
pub mod report;
pub mod tokenize;
