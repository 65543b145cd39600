//! Medical entities in the training text, and which tokens they cover.
//!
//! Entities come from one of two places, recorded per row as `entity_source`:
//!
//! - the ScispaCy sidecar ([`load_sidecar`]): JSON Lines written offline by
//!   `python/ner_sidecar.py`, one line per study,
//!   `{"study_id": "50414267", "text": "...", "entities": [{"start": 0, "end": 8, "label": "ENTITY", "text": "effusion"}]}`.
//!   [`Sidecar::check`] accepts a study's spans only when the sidecar ran on
//!   exactly the training text and every span reads what it claims;
//! - the built-in radiology [`Lexicon`], when no sidecar is given.
//!
//! Spans are character offsets (Unicode scalar values, as Python counts them),
//! end exclusive: the `entity_spans` column. Tokenizer offsets are bytes, so
//! [`token_entity_mask`] converts once and marks every token that overlaps
//! an entity: the `entity_mask` column, EntMLM's M_e.
//!
//! ```
//! use text::entities::{token_entity_mask, Lexicon};
//!
//! let text = "Small pleural effusion.";
//! let spans = Lexicon::builtin().find(text);
//! assert_eq!((spans[0].start, spans[0].end), (6, 22));
//! // [SOT] "small" "pleural" "effusion" "." [EOT], as byte ranges.
//! let tokens = [(0, 0), (0, 5), (6, 13), (14, 22), (22, 23), (0, 0)];
//! assert_eq!(
//!     token_entity_mask(text, &spans, &tokens),
//!     [false, false, true, true, false, false]
//! );
//! ```

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io::BufRead;
use std::path::Path;
use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use serde::{Deserialize, Serialize};

/// The label of every span from `en_core_sci_sm` and from the [`Lexicon`].
pub const ENTITY_LABEL: &str = "ENTITY";

/// One entity: characters `[start, end)` of the text it was found in, and its
/// label. The shard format's own span type, so spans go into the
/// `entity_spans` column as they are.
pub use schemas::EntitySpan as Span;

/// The built-in lexicon: chest radiography findings, anatomy and devices, one
/// lower-case term per line of `data/lexicon.txt`; `#` lines name the groups.
/// Plurals are listed where reports use them, since matching is on whole
/// words. A data file, so the list is read and edited as a list, not as code.
const BUILTIN_TERMS: &str = include_str!("../data/lexicon.txt");

/// The built-in lexicon, built on first use: every caller of
/// [`Lexicon::builtin`] shares one automaton.
static BUILTIN: LazyLock<Lexicon> = LazyLock::new(|| {
    // The table is compiled in, a few hundred short terms: building its
    // automaton cannot fail, and a test builds it.
    Lexicon::from_terms(builtin_terms()).expect("the built-in lexicon builds")
});

/// A whole-word, case-insensitive matcher over a fixed list of terms.
#[derive(Debug, Clone)]
pub struct Lexicon {
    automaton: AhoCorasick,
    terms: usize,
}

/// Why a lexicon could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the entity lexicon: {0}")]
pub struct LexiconError(#[from] aho_corasick::BuildError);

impl Lexicon {
    /// The built-in radiology lexicon (findings, anatomy, devices).
    pub fn builtin() -> Lexicon {
        // A clone shares the automaton (reference-counted).
        BUILTIN.clone()
    }

    /// A lexicon of the given terms (matched ASCII-case-insensitively).
    pub fn from_terms<I, T>(terms: I) -> Result<Lexicon, LexiconError>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        let terms: Vec<String> = terms
            .into_iter()
            .map(|t| t.as_ref().trim().to_string())
            .filter(|t| !t.is_empty())
            .collect();
        // Standard semantics with overlapping search: every occurrence is a
        // candidate, so a longest match that fails the whole-word test (as
        // "lung base" in "lung basement") still leaves the shorter one ("lung").
        let automaton = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .build(&terms)?;
        Ok(Lexicon {
            automaton,
            terms: terms.len(),
        })
    }

    /// Number of terms.
    pub fn len(&self) -> usize {
        self.terms
    }

    /// True when the lexicon has no terms.
    pub fn is_empty(&self) -> bool {
        self.terms == 0
    }

    /// The entities of `text`: whole-word occurrences of the terms, chosen
    /// leftmost-longest without overlap, in text order, labelled `ENTITY`.
    pub fn find(&self, text: &str) -> Vec<Span> {
        let mut candidates: Vec<(usize, usize)> = self
            .automaton
            .find_overlapping_iter(text)
            .map(|m| (m.start(), m.end()))
            .filter(|&(s, e)| is_whole_word(text, s, e))
            .collect();
        candidates.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let mut spans = Vec::new();
        let mut cursor = CharCursor::default();
        let mut taken_to = 0;
        for (s, e) in candidates {
            if s < taken_to {
                continue;
            }
            taken_to = e;
            // Chosen spans are disjoint and sorted, so one forward walk converts them.
            let start = cursor.char_at(text, s);
            let end = cursor.char_at(text, e);
            spans.push(Span {
                start,
                end,
                label: ENTITY_LABEL.to_string(),
            });
        }
        spans
    }
}

/// The terms of the built-in lexicon, in table order.
fn builtin_terms() -> impl Iterator<Item = &'static str> {
    BUILTIN_TERMS
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// True when bytes `[s, e)` of `text` are not glued to a letter or digit.
fn is_whole_word(text: &str, s: usize, e: usize) -> bool {
    let before = text[..s].chars().next_back();
    let after = text[e..].chars().next();
    !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
}

/// Converts increasing byte offsets to character offsets in one walk.
#[derive(Default)]
struct CharCursor {
    byte: usize,
    chars: usize,
}

impl CharCursor {
    /// The character offset of byte offset `b` (a char boundary, not before the last one asked).
    fn char_at(&mut self, text: &str, b: usize) -> usize {
        self.chars += text[self.byte..b].chars().count();
        self.byte = b;
        self.chars
    }
}

/// Byte offset of every character boundary of `text`, up to `max_char`
/// (clamped to the text): `table[c]` is the byte where character `c` starts.
fn char_boundaries(text: &str, max_char: usize) -> Vec<usize> {
    let mut table: Vec<usize> = text
        .char_indices()
        .map(|(b, _)| b)
        .take(max_char + 1)
        .collect();
    if table.len() <= max_char {
        table.push(text.len());
    }
    table
}

/// Marks the tokens that overlap an entity.
///
/// `spans` are character offsets into `text`; `token_offsets` are byte
/// offsets into `text`, as `tokenizers`' `Encoding::get_offsets` gives them
/// for the original string. A token is an entity token when its byte range
/// shares at least one byte with a span's. Special tokens carry `(0, 0)` and
/// are never entity tokens. Spans past the end of the text are clamped.
pub fn token_entity_mask(
    text: &str,
    spans: &[Span],
    token_offsets: &[(usize, usize)],
) -> Vec<bool> {
    let max_char = spans.iter().map(|s| s.end).max().unwrap_or(0);
    let table = char_boundaries(text, max_char);
    let to_byte = |c: usize| table.get(c).copied().unwrap_or(text.len());
    let byte_spans: Vec<(usize, usize)> = spans
        .iter()
        .map(|s| (to_byte(s.start), to_byte(s.end)))
        .collect();
    token_offsets
        .iter()
        .map(|&(ts, te)| {
            (ts, te) != (0, 0) && byte_spans.iter().any(|&(ss, se)| ts < se && ss < te)
        })
        .collect()
}

/// One entity as the sidecar writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SidecarEntity {
    /// First character.
    pub start: usize,
    /// One past the last character.
    pub end: usize,
    /// The NER label.
    pub label: String,
    /// The entity's text: the sidecar text's characters `[start, end)`.
    pub text: String,
}

/// One line of the sidecar: a study's training text and its entities.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SidecarLine {
    /// The study id, as text.
    pub study_id: String,
    /// The exact text NER ran on.
    pub text: String,
    /// The entities found in `text`.
    pub entities: Vec<SidecarEntity>,
}

/// A sidecar line that could not be used: reported once per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarProblem {
    /// Line number in the file, from 1.
    pub line: usize,
    /// The line's study id, when it could be read.
    pub study_id: Option<String>,
    /// What is wrong.
    pub reason: String,
}

/// Why a sidecar could not be read at all (a bad line is a [`SidecarProblem`]).
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// The file could not be opened or read.
    #[error("NER sidecar {path}: {source}")]
    Io {
        /// The sidecar file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Why a study's entities cannot come from the sidecar. Each is a reject at
/// stage `entities`: a sidecar was given, so falling back to the lexicon
/// would silently mix two entity sources in one run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntityCheckError {
    /// The sidecar has no line for the study.
    #[error("study {study_id} has no line in the NER sidecar")]
    Missing {
        /// The study id.
        study_id: String,
    },
    /// The study is on more than one line.
    #[error("study {study_id} is on several NER sidecar lines ({lines:?})")]
    Duplicate {
        /// The study id.
        study_id: String,
        /// The lines, from 1.
        lines: Vec<usize>,
    },
    /// The study's line is malformed, ran on other text, or has a bad span.
    #[error("study {study_id}: NER sidecar line {line}: {reason}")]
    Invalid {
        /// The study id.
        study_id: String,
        /// The line, from 1.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// What the sidecar holds for one study id.
#[derive(Debug, Clone)]
enum Slot {
    Line { line: usize, entry: SidecarLine },
    Malformed { line: usize, reason: String },
    Duplicate { lines: Vec<usize> },
}

/// A loaded sidecar: study id → line, plus the problems met while reading.
#[derive(Debug, Clone, Default)]
pub struct Sidecar {
    slots: HashMap<String, Slot>,
    problems: Vec<SidecarProblem>,
}

/// Reads a sidecar file. Malformed lines, duplicate study ids and lines that
/// are not UTF-8 do not fail the load: they are listed in
/// [`Sidecar::problems`], and [`Sidecar::check`] reports them again for their
/// study when the study id could be read.
pub fn load_sidecar(path: &Path) -> Result<Sidecar, SidecarError> {
    let io = |source| SidecarError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    Sidecar::from_reader(std::io::BufReader::new(file)).map_err(io)
}

impl Sidecar {
    /// Reads sidecar lines from `reader` (see [`load_sidecar`]). Blank lines are skipped.
    pub fn from_reader<R: BufRead>(mut reader: R) -> std::io::Result<Sidecar> {
        let mut sidecar = Sidecar::default();
        let mut buf = Vec::new();
        let mut line_no = 0;
        loop {
            buf.clear();
            if reader.read_until(b'\n', &mut buf)? == 0 {
                break;
            }
            line_no += 1;
            let raw = buf.strip_suffix(b"\n").unwrap_or(&buf);
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            sidecar.add_line(line_no, raw);
        }
        Ok(sidecar)
    }

    fn add_line(&mut self, line: usize, raw: &[u8]) {
        let Ok(text) = std::str::from_utf8(raw) else {
            return self.problem(line, None, "the line is not UTF-8".to_string());
        };
        if text.trim().is_empty() {
            return;
        }
        let value: serde_json::Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => return self.problem(line, None, format!("not JSON: {e}")),
        };
        let Some(study_id) = value
            .get("study_id")
            .and_then(|v| v.as_str())
            .map(str::to_string)
        else {
            return self.problem(line, None, "no \"study_id\" string".to_string());
        };
        let slot = match serde_json::from_value::<SidecarLine>(value) {
            Ok(entry) => Slot::Line { line, entry },
            Err(e) => {
                let reason = format!("malformed line: {e}");
                self.problem(line, Some(study_id.clone()), reason.clone());
                Slot::Malformed { line, reason }
            }
        };
        match self.slots.entry(study_id) {
            Entry::Vacant(v) => {
                v.insert(slot);
            }
            Entry::Occupied(mut o) => {
                let mut lines = match o.get() {
                    Slot::Line { line, .. } | Slot::Malformed { line, .. } => vec![*line],
                    Slot::Duplicate { lines } => lines.clone(),
                };
                let reason = format!("study id {} already on line {}", o.key(), lines[0]);
                self.problems.push(SidecarProblem {
                    line,
                    study_id: Some(o.key().clone()),
                    reason,
                });
                lines.push(line);
                o.insert(Slot::Duplicate { lines });
            }
        }
    }

    fn problem(&mut self, line: usize, study_id: Option<String>, reason: String) {
        self.problems.push(SidecarProblem {
            line,
            study_id,
            reason,
        });
    }

    /// The lines that could not be used, in file order.
    pub fn problems(&self) -> &[SidecarProblem] {
        &self.problems
    }

    /// Number of distinct study ids read (usable or not).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when no study id was read.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The spans of `study_id`, when its line ran on exactly `text` and every
    /// span is non-empty, inside the text, and reads its `text` there.
    pub fn check(&self, study_id: &str, text: &str) -> Result<Vec<Span>, EntityCheckError> {
        let invalid = |line, reason| EntityCheckError::Invalid {
            study_id: study_id.to_string(),
            line,
            reason,
        };
        let (line, entry) = match self.slots.get(study_id) {
            None => {
                return Err(EntityCheckError::Missing {
                    study_id: study_id.to_string(),
                });
            }
            Some(Slot::Duplicate { lines }) => {
                return Err(EntityCheckError::Duplicate {
                    study_id: study_id.to_string(),
                    lines: lines.clone(),
                });
            }
            Some(Slot::Malformed { line, reason }) => return Err(invalid(*line, reason.clone())),
            Some(Slot::Line { line, entry }) => (*line, entry),
        };
        if let Some(reason) = describe_difference(&entry.text, text) {
            return Err(invalid(line, reason));
        }
        let n_chars = text.chars().count();
        let max_end = entry
            .entities
            .iter()
            .map(|e| e.end)
            .max()
            .unwrap_or(0)
            .min(n_chars);
        let table = char_boundaries(text, max_end);
        let mut spans = Vec::with_capacity(entry.entities.len());
        for (k, e) in entry.entities.iter().enumerate() {
            let at = format!("entity {k} ({}..{})", e.start, e.end);
            if e.start >= e.end {
                return Err(invalid(line, format!("{at} is empty or reversed")));
            }
            if e.end > n_chars {
                return Err(invalid(
                    line,
                    format!("{at} ends past the text's {n_chars} characters"),
                ));
            }
            if e.label.is_empty() {
                return Err(invalid(line, format!("{at} has an empty label")));
            }
            let actual = &text[table[e.start]..table[e.end]];
            if actual != e.text {
                return Err(invalid(
                    line,
                    format!(
                        "{at} is {actual:?} in the text but {:?} in the sidecar",
                        e.text
                    ),
                ));
            }
            spans.push(Span {
                start: e.start,
                end: e.end,
                label: e.label.clone(),
            });
        }
        Ok(spans)
    }
}

/// `None` when the texts are equal, else where and how they first differ.
fn describe_difference(sidecar: &str, expected: &str) -> Option<String> {
    if sidecar == expected {
        return None;
    }
    let (mut at, mut byte_s, mut byte_e) = (0, 0, 0);
    for ((i, (bs, a)), (be, b)) in sidecar
        .char_indices()
        .enumerate()
        .zip(expected.char_indices())
    {
        (at, byte_s, byte_e) = (i, bs, be);
        if a != b {
            break;
        }
        (at, byte_s, byte_e) = (i + 1, bs + a.len_utf8(), be + b.len_utf8());
    }
    let excerpt = |s: &str| s.chars().take(24).collect::<String>();
    Some(format!(
        "the sidecar's text differs from the training text at character {at}: \
         sidecar has {:?}, training text has {:?} ({} vs {} characters); \
         rerun ner_sidecar.py on the texts this ingest exports",
        excerpt(&sidecar[byte_s..]),
        excerpt(&expected[byte_e..]),
        sidecar.chars().count(),
        expected.chars().count(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(text: &str, spans: &[Span]) -> Vec<String> {
        spans
            .iter()
            .map(|s| text.chars().skip(s.start).take(s.end - s.start).collect())
            .collect()
    }

    #[test]
    fn builtin_lexicon_is_clean_lowercase_and_unique() {
        let terms: Vec<&str> = builtin_terms().collect();
        assert!(terms.len() >= 300, "{} terms", terms.len());
        let mut seen = std::collections::HashSet::new();
        for t in &terms {
            assert_eq!(*t, t.to_lowercase(), "upper case in {t:?}");
            assert!(!t.contains("  "), "double space in {t:?}");
            assert!(seen.insert(*t), "duplicate term {t:?}");
        }
        assert_eq!(Lexicon::builtin().len(), terms.len());
    }

    #[test]
    fn data_file_terms_are_its_lines_less_group_headers_and_blanks() {
        // 376 lines: 370 terms under 6 `#` group headers. A change to the
        // file changes the entity masks of every shard, so it is pinned here.
        let terms: Vec<&str> = builtin_terms().collect();
        assert_eq!(terms.len(), 370);
        assert_eq!(
            BUILTIN_TERMS.lines().filter(|l| l.starts_with('#')).count(),
            6
        );
        assert_eq!(terms.first(), Some(&"pleural effusion"));
        assert_eq!(terms.last(), Some(&"hardware"));
        assert!(terms.iter().all(|t| !t.starts_with('#') && t.trim() == *t));
    }

    #[test]
    fn lexicon_prefers_the_longest_term_and_ignores_case() {
        let text = "Small left Pleural Effusion. NO PNEUMOTHORAX. Nasogastric tube in stomach.";
        let spans = Lexicon::builtin().find(text);
        assert_eq!(
            texts(text, &spans),
            [
                "Pleural Effusion",
                "PNEUMOTHORAX",
                "Nasogastric tube",
                "stomach"
            ]
        );
        assert!(spans.iter().all(|s| s.label == ENTITY_LABEL));
    }

    #[test]
    fn lexicon_matches_whole_words_only() {
        let text = "Retrocardiac lungs, cardiac, effusions; apexes. preheart";
        let spans = Lexicon::builtin().find(text);
        assert_eq!(
            texts(text, &spans),
            ["Retrocardiac", "lungs", "cardiac", "effusions"]
        );
    }

    #[test]
    fn lexicon_falls_back_to_a_shorter_term_when_the_longest_is_not_a_word() {
        let lex = Lexicon::from_terms(["lung", "lung base"]).unwrap();
        let text = "lung basement; lung base.";
        let spans = lex.find(text);
        assert_eq!(texts(text, &spans), ["lung", "lung base"]);
        assert_eq!((spans[1].start, spans[1].end), (15, 24));
    }

    #[test]
    fn lexicon_spans_are_character_offsets_in_non_ascii_text() {
        let text = "Épanchement: 30° café pneumothorax — pleural effusion";
        let spans = Lexicon::builtin().find(text);
        assert_eq!(texts(text, &spans), ["pneumothorax", "pleural effusion"]);
        // Python: text.index("pneumothorax") == 22, text.index("pleural") == 37
        assert_eq!((spans[0].start, spans[0].end), (22, 34));
        assert_eq!((spans[1].start, spans[1].end), (37, 53));
        assert!(text.len() > 53, "bytes and characters differ here");
    }

    fn sidecar(lines: &str) -> Sidecar {
        Sidecar::from_reader(lines.as_bytes()).unwrap()
    }

    const GOOD: &str = r#"{"study_id": "50414267", "text": "Effusion at 30° café, pneumothorax.", "entities": [{"start": 0, "end": 8, "label": "ENTITY", "text": "Effusion"}, {"start": 22, "end": 34, "label": "ENTITY", "text": "pneumothorax"}]}"#;

    #[test]
    fn sidecar_spans_are_accepted_when_text_and_spans_agree() {
        let sc = sidecar(&format!("{GOOD}\n\n"));
        assert!(sc.problems().is_empty());
        assert_eq!(sc.len(), 1);
        let spans = sc
            .check("50414267", "Effusion at 30° café, pneumothorax.")
            .unwrap();
        assert_eq!(
            spans,
            vec![
                Span {
                    start: 0,
                    end: 8,
                    label: "ENTITY".into()
                },
                Span {
                    start: 22,
                    end: 34,
                    label: "ENTITY".into()
                },
            ]
        );
    }

    #[test]
    fn sidecar_text_that_differs_is_rejected_with_the_position() {
        let sc = sidecar(GOOD);
        let err = sc
            .check("50414267", "Effusion at 30° cafe, pneumothorax.")
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, EntityCheckError::Invalid { line: 1, .. }),
            "{msg}"
        );
        assert!(msg.contains("at character 19"), "{msg}");
        assert!(msg.contains("\"é, pneumothorax.\""), "{msg}");
        let err = sc
            .check("50414267", "Effusion at 30° café, pneumothorax. More.")
            .unwrap_err();
        assert!(err.to_string().contains("at character 35"), "{err}");
    }

    #[test]
    fn sidecar_spans_that_misread_the_text_are_rejected() {
        let text = "Effusion at 30° café.";
        let line = |start: usize, end: usize, span_text: &str| {
            format!(
                r#"{{"study_id": "1", "text": "{text}", "entities": [{{"start": {start}, "end": {end}, "label": "ENTITY", "text": "{span_text}"}}]}}"#
            )
        };
        // Byte offsets where character offsets were expected: "café" is 16..20 in characters.
        let err = sidecar(&line(17, 21, "café"))
            .check("1", text)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("entity 0 (17..21) is \"afé.\" in the text but \"café\""),
            "{err}"
        );
        assert!(sidecar(&line(16, 20, "café")).check("1", text).is_ok());
        let err = sidecar(&line(5, 5, ""))
            .check("1", text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("empty or reversed"), "{err}");
        let err = sidecar(&line(16, 40, "café."))
            .check("1", text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("ends past the text's 21 characters"), "{err}");
    }

    #[test]
    fn malformed_and_duplicate_lines_are_problems_not_failures() {
        let sc = sidecar(&format!(
            "{GOOD}\nnot json\n{{\"study_id\": 5, \"text\": \"x\", \"entities\": []}}\n\
             {{\"study_id\": \"7\", \"text\": \"x\"}}\n{GOOD}\n{GOOD}\n\
             {{\"study_id\": \"8\", \"text\": \"Clear.\", \"entities\": []}}\r\n"
        ));
        let lines: Vec<(usize, Option<&str>)> = sc
            .problems()
            .iter()
            .map(|p| (p.line, p.study_id.as_deref()))
            .collect();
        assert_eq!(
            lines,
            [
                (2, None),
                (3, None),
                (4, Some("7")),
                (5, Some("50414267")),
                (6, Some("50414267"))
            ]
        );
        assert!(sc.problems()[1].reason.contains("study_id"));
        assert!(
            sc.problems()[2].reason.contains("entities"),
            "{}",
            sc.problems()[2].reason
        );
        assert!(sc.problems()[3].reason.contains("already on line 1"));

        let text = "Effusion at 30° café, pneumothorax.";
        assert_eq!(
            sc.check("50414267", text),
            Err(EntityCheckError::Duplicate {
                study_id: "50414267".into(),
                lines: vec![1, 5, 6]
            })
        );
        assert!(matches!(
            sc.check("7", "x"),
            Err(EntityCheckError::Invalid { line: 4, .. })
        ));
        assert_eq!(sc.check("8", "Clear."), Ok(vec![]));
        let missing = sc.check("99", "x").unwrap_err();
        assert_eq!(
            missing,
            EntityCheckError::Missing {
                study_id: "99".into()
            }
        );
        assert_eq!(
            missing.to_string(),
            "study 99 has no line in the NER sidecar"
        );
    }

    #[test]
    fn invalid_utf8_line_is_a_problem() {
        let mut bytes = GOOD.as_bytes().to_vec();
        bytes.extend_from_slice(b"\n{\"study_id\": \"\xff\"}\n");
        let sc = Sidecar::from_reader(bytes.as_slice()).unwrap();
        assert_eq!(sc.problems().len(), 1);
        assert_eq!(sc.problems()[0].line, 2);
        assert!(
            sc.check("50414267", "Effusion at 30° café, pneumothorax.")
                .is_ok()
        );
    }

    #[test]
    fn load_sidecar_reads_a_file_and_names_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ner.jsonl");
        std::fs::write(&path, format!("{GOOD}\n")).unwrap();
        let sc = load_sidecar(&path).unwrap();
        assert_eq!(sc.len(), 1);
        let err = load_sidecar(&dir.path().join("absent.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("absent.jsonl"), "{err}");
    }

    #[test]
    fn token_mask_converts_character_spans_to_byte_ranges() {
        let text = "30° é effusion";
        // Characters: "30°"=0..3, "é"=4..5, "effusion"=6..14. Bytes: "°" and "é" are 2 each.
        let spans = [Span {
            start: 6,
            end: 14,
            label: "ENTITY".into(),
        }];
        let tokens = [(0, 0), (0, 2), (2, 4), (5, 7), (8, 11), (11, 16), (0, 0)];
        //             SOT    "30"    "°"    "é"    "eff"    "usion"   EOT
        assert_eq!(&text[8..16], "effusion");
        assert_eq!(
            token_entity_mask(text, &spans, &tokens),
            [false, false, false, false, true, true, false]
        );
        // Had the span been read as bytes 6..14, "é" (bytes 5..7) would be marked.
        let degree = [Span {
            start: 2,
            end: 3,
            label: "ENTITY".into(),
        }];
        assert_eq!(
            token_entity_mask(text, &degree, &tokens),
            [false, false, true, false, false, false, false]
        );
    }

    #[test]
    fn token_mask_marks_partial_overlaps_and_never_special_tokens() {
        let text = "effusion";
        let spans = [Span {
            start: 0,
            end: 3,
            label: "ENTITY".into(),
        }];
        assert_eq!(
            token_entity_mask(text, &spans, &[(0, 0), (0, 5), (5, 8), (0, 0)]),
            [false, true, false, false]
        );
        assert_eq!(token_entity_mask(text, &[], &[(0, 5)]), [false]);
        // Spans beyond the text (never produced after `check`) are clamped, not a panic.
        let wild = [Span {
            start: 6,
            end: 99,
            label: "ENTITY".into(),
        }];
        assert_eq!(
            token_entity_mask(text, &wild, &[(0, 5), (5, 8)]),
            [false, true]
        );
    }

    #[test]
    fn lexicon_spans_drive_the_mask_end_to_end() {
        let text = "Right PICC ends in the SVC. No pneumothorax.";
        let spans = Lexicon::builtin().find(text);
        assert_eq!(texts(text, &spans), ["PICC", "SVC", "pneumothorax"]);
        let tokens = [
            (0, 0),
            (0, 5),
            (6, 10),
            (11, 15),
            (16, 18),
            (19, 22),
            (23, 26),
            (26, 27),
            (28, 30),
            (31, 43),
            (43, 44),
            (0, 0),
        ];
        let mask = token_entity_mask(text, &spans, &tokens);
        assert_eq!(mask.iter().filter(|&&m| m).count(), 3);
        assert!(mask[2] && mask[6] && mask[9]);
    }
}
