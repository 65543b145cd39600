//! The text the model is asked about, in one place: AttMIM's disease and
//! device prompts and the zero-shot templates. Both are config values
//! ([`crate::config::TrainConfig`]); these are their defaults.

use schemas::CHEXPERT_CLASSES;

/// The 14 CheXpert findings as the phrases radiology reports use for them
/// (CHEXPERT_CLASSES order), what the prompts and zero-shot templates fill
/// in. "No Finding" is phrased as what it denies: see [`Templates::pair_for`].
pub const CLASS_PHRASES: [&str; 14] = [
    "atelectasis",
    "cardiomegaly",
    "focal consolidation",
    "pulmonary edema",
    "widened mediastinum",
    "rib fracture",
    "pulmonary nodule",
    "airspace opacity",
    "acute cardiopulmonary process",
    "pleural effusion",
    "pleural thickening",
    "pneumonia",
    "pneumothorax",
    "tubes and lines",
];

/// The class whose positive is the absence of its phrase.
const NO_FINDING: &str = "No Finding";

/// AttMIM's prompt-driven attention map: one prompt per CheXpert class
/// (METHOD.md: "the 14 CheXpert disease/device prompts").
pub fn default_disease_prompts() -> Vec<String> {
    CLASS_PHRASES.iter().map(|p| p.to_string()).collect()
}

/// Zero-shot prompt pair of a class: `{}` is replaced by the class phrase.
/// The positive and negative text are scored against the image and
/// softmaxed over the pair (CheXzero's rule).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Templates {
    /// Text of a positive finding.
    pub positive: String,
    /// Text of its absence.
    pub negative: String,
}

impl Default for Templates {
    fn default() -> Self {
        Templates {
            positive: "{}".into(),
            negative: "no {}".into(),
        }
    }
}

impl Templates {
    /// The (positive, negative) texts for `phrase`.
    pub fn pair(&self, phrase: &str) -> (String, String) {
        (
            self.positive.replace("{}", phrase),
            self.negative.replace("{}", phrase),
        )
    }
}

impl Templates {
    /// The (positive, negative) texts for a CheXpert class: the pair of its
    /// phrase, swapped for "No Finding" (positive: "no acute
    /// cardiopulmonary process").
    pub fn pair_for(&self, class: &str) -> Option<(String, String)> {
        let (pos, neg) = self.pair(phrase_of(class)?);
        Some(if class == NO_FINDING {
            (neg, pos)
        } else {
            (pos, neg)
        })
    }
}

/// Class name (as in the shards' label columns) → phrase.
pub fn phrase_of(class: &str) -> Option<&'static str> {
    CHEXPERT_CLASSES
        .iter()
        .position(|(name, _)| *name == class)
        .map(|i| CLASS_PHRASES[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_prompt_per_class_and_templates_fill_the_phrase() {
        assert_eq!(default_disease_prompts().len(), CHEXPERT_CLASSES.len());
        assert_eq!(phrase_of("Pleural Effusion"), Some("pleural effusion"));
        assert_eq!(phrase_of("Nope"), None);
        let (p, n) = Templates::default().pair("pneumothorax");
        assert_eq!(
            (p.as_str(), n.as_str()),
            ("pneumothorax", "no pneumothorax")
        );
    }
}
