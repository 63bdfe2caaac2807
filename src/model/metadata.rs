//! The model contract: the `amfp.*` keys a model carries in its ONNX `metadata_props`.
//!
//! A model describes itself, so that the daemon needs no side files and cannot pair a model
//! with the wrong labels or the wrong pixel size. This module parses and validates those keys;
//! a missing or malformed key is an error that names it, and every problem is reported at once.
//! The table of keys is in docs/model-contract.md.

use std::collections::BTreeMap;

use serde::Serialize;

/// The contract version this amfp reads.
pub const SCHEMA_VERSION: u32 = 1;

/// Everything a model says about itself (the `amfp.*` keys), parsed and checked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelMetadata {
    /// `amfp.schema`: contract version, 1.
    pub schema: u32,
    /// `amfp.name`: reported with each result.
    pub name: String,
    /// `amfp.task`: what the labels are (machine, process, material, build_location...).
    pub task: String,
    /// `amfp.labels`: class names in output order.
    pub labels: Vec<String>,
    /// `amfp.label_process`: process of each label, when the labels have one (machine models).
    pub label_process: Option<BTreeMap<String, String>>,
    /// `amfp.pixel_size_um`: µm per pixel of the model's input.
    pub pixel_size_um: f64,
    /// `amfp.roi_px`: ROI side in model pixels.
    pub roi_px: u32,
    /// `amfp.channels`: 1 (gray) or 3 (gray repeated).
    pub channels: u32,
    /// `amfp.mean`: input normalisation, subtracted from intensities in [0, 1].
    pub mean: f32,
    /// `amfp.std`: input normalisation, divides after the mean is subtracted.
    pub std: f32,
    /// `amfp.min_foreground`: fraction of an ROI that must lie on the part.
    pub min_foreground: f32,
    /// `amfp.votes`: default number of ROIs per part.
    pub votes: u32,
    /// `amfp.unknown_threshold`: the vote score under which a part is "unknown".
    pub unknown_threshold: f32,
    /// `amfp.trained_on`: what the model learned from.
    pub trained_on: String,
    /// `amfp.embedding_*`: the part-embedding output the fingerprint gallery reads
    /// (docs/gallery.md); absent for models that only vote.
    pub embedding: Option<EmbeddingSpec>,
}

/// The model's embedding output (`amfp.embedding_output`, `_dim`, `_kind`): one row of `dim`
/// features per ROI, which the fingerprint gallery turns into distances (docs/gallery.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EmbeddingSpec {
    /// Name of the graph output.
    pub output: String,
    /// Features per ROI.
    pub dim: u32,
    /// What the vector is (`pre-logits`: the pooled features the linear head reads).
    pub kind: String,
}

/// A model's metadata breaks the contract; lists every problem.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("model metadata does not follow the amfp contract (schema {SCHEMA_VERSION}, docs/model-contract.md):\n  - {}", .problems.join("\n  - "))]
pub struct MetadataError {
    /// One line per missing or malformed key.
    pub problems: Vec<String>,
}

impl ModelMetadata {
    /// Side of the surface one ROI covers, in mm.
    pub fn sample_mm(&self) -> f64 {
        self.roi_px as f64 * self.pixel_size_um / 1000.0
    }

    /// The process of a label, when the model knows it.
    pub fn process_of(&self, label: &str) -> Option<&str> {
        self.label_process.as_ref()?.get(label).map(String::as_str)
    }

    /// Parses the `amfp.*` keys out of a model's `metadata_props` (key, value pairs).
    pub fn from_props<'a>(props: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, MetadataError> {
        let props: BTreeMap<&str, &str> = props.into_iter().collect();
        let mut p = Parser { props: &props, problems: Vec::new() };
        if !props.keys().any(|k| k.starts_with("amfp.")) {
            return Err(MetadataError {
                problems: vec![
                    "the model has no amfp.* metadata at all: it was not exported for amfp. Export it with \
                     `python -m amfp_train.export` (docs/training.md), or add the keys with onnx's metadata_props"
                        .into(),
                ],
            });
        }
        let schema = p.parse("amfp.schema", "an integer", |v| v.trim().parse::<u32>().ok());
        if let Some(s) = schema
            && s != SCHEMA_VERSION
        {
            p.problems.push(format!(
                "amfp.schema is {s}, but this amfp reads schema {SCHEMA_VERSION}: upgrade amfp or re-export the model"
            ));
        }
        let name = p.parse("amfp.name", "a non-empty string", non_empty);
        let task = p.parse("amfp.task", "a non-empty string", non_empty);
        let labels = p.parse("amfp.labels", "a JSON array of at least 2 distinct, non-empty label strings", |v| {
            let labels: Vec<String> = serde_json::from_str(v).ok()?;
            let distinct: std::collections::BTreeSet<&String> = labels.iter().collect();
            (labels.len() >= 2 && distinct.len() == labels.len() && labels.iter().all(|l| !l.is_empty()))
                .then_some(labels)
        });
        let label_process = if props.contains_key("amfp.label_process") {
            p.parse("amfp.label_process", "a JSON object from label to process", |v| {
                serde_json::from_str::<BTreeMap<String, String>>(v).ok()
            })
        } else {
            None
        };
        if let (Some(labels), Some(lp)) = (&labels, &label_process) {
            let missing: Vec<&str> = labels.iter().filter(|l| !lp.contains_key(*l)).map(String::as_str).collect();
            if !missing.is_empty() {
                p.problems.push(format!("amfp.label_process has no process for label(s) {}", missing.join(", ")));
            }
        }
        let positive = |v: &str| v.trim().parse::<f64>().ok().filter(|x| x.is_finite() && *x > 0.0);
        let pixel_size_um = p.parse("amfp.pixel_size_um", "a number of µm per pixel > 0", positive);
        // At most 65535: ROI corners are u16-sized (roi.rs); the paper's 448 px is far below.
        let roi_px = p.parse("amfp.roi_px", "an integer number of pixels from 8 to 65535", |v| {
            v.trim().parse::<u32>().ok().filter(|&r| (8..=65535).contains(&r))
        });
        let channels =
            p.parse("amfp.channels", "1 or 3", |v| v.trim().parse::<u32>().ok().filter(|c| *c == 1 || *c == 3));
        let mean = p.parse("amfp.mean", "a number", |v| v.trim().parse::<f32>().ok().filter(|x| x.is_finite()));
        let std = p.parse("amfp.std", "a number > 0", |v| positive(v).map(|x| x as f32));
        let min_foreground = p.parse("amfp.min_foreground", "a fraction in (0, 1]", |v| {
            v.trim().parse::<f32>().ok().filter(|x| *x > 0.0 && *x <= 1.0)
        });
        let votes = p.parse("amfp.votes", "an integer >= 1", |v| v.trim().parse::<u32>().ok().filter(|&n| n >= 1));
        let unknown_threshold = p.parse("amfp.unknown_threshold", "a fraction in [0, 1]", |v| {
            v.trim().parse::<f32>().ok().filter(|x| (0.0..=1.0).contains(x))
        });
        let trained_on = p.parse("amfp.trained_on", "a non-empty string", non_empty);
        let embedding = p.embedding();
        if !p.problems.is_empty() {
            return Err(MetadataError { problems: p.problems });
        }
        // Every field parsed (no problems), so every Option is Some.
        Ok(Self {
            schema: schema.unwrap_or(SCHEMA_VERSION),
            name: name.unwrap_or_default(),
            task: task.unwrap_or_default(),
            labels: labels.unwrap_or_default(),
            label_process,
            pixel_size_um: pixel_size_um.unwrap_or_default(),
            roi_px: roi_px.unwrap_or_default(),
            channels: channels.unwrap_or_default(),
            mean: mean.unwrap_or_default(),
            std: std.unwrap_or_default(),
            min_foreground: min_foreground.unwrap_or_default(),
            votes: votes.unwrap_or_default(),
            unknown_threshold: unknown_threshold.unwrap_or_default(),
            trained_on: trained_on.unwrap_or_default(),
            embedding,
        })
    }
}

fn non_empty(v: &str) -> Option<String> {
    let v = v.trim();
    (!v.is_empty()).then(|| v.to_string())
}

/// Collects problems while parsing one key after another.
struct Parser<'a> {
    props: &'a BTreeMap<&'a str, &'a str>,
    problems: Vec<String>,
}

impl Parser<'_> {
    /// The optional embedding keys: all three or none.
    fn embedding(&mut self) -> Option<EmbeddingSpec> {
        const KEYS: [&str; 3] = ["amfp.embedding_output", "amfp.embedding_dim", "amfp.embedding_kind"];
        let present: Vec<&str> = KEYS.iter().copied().filter(|k| self.props.contains_key(k)).collect();
        if present.is_empty() {
            return None;
        }
        if present.len() < KEYS.len() {
            let missing: Vec<&str> = KEYS.iter().copied().filter(|k| !present.contains(k)).collect();
            self.problems.push(format!(
                "the embedding keys come together: {} given but {} missing (docs/gallery.md)",
                present.join(", "),
                missing.join(", ")
            ));
            return None;
        }
        let output = self.parse("amfp.embedding_output", "a non-empty output name", non_empty);
        let dim =
            self.parse("amfp.embedding_dim", "an integer >= 2", |v| v.trim().parse::<u32>().ok().filter(|&d| d >= 2));
        let kind = self.parse("amfp.embedding_kind", "a non-empty string", non_empty);
        Some(EmbeddingSpec { output: output?, dim: dim?, kind: kind? })
    }

    fn parse<T>(&mut self, key: &str, expected: &str, f: impl FnOnce(&str) -> Option<T>) -> Option<T> {
        let Some(value) = self.props.get(key) else {
            self.problems.push(format!("{key} is missing (expected {expected})"));
            return None;
        };
        let parsed = f(value);
        if parsed.is_none() {
            let shown: String = value.chars().take(60).collect();
            let ellipsis = if value.chars().count() > 60 { "..." } else { "" };
            self.problems.push(format!("{key} = {shown:?}{ellipsis} is not {expected}"));
        }
        parsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Vec<(&'static str, &'static str)> {
        vec![
            ("amfp.schema", "1"),
            ("amfp.name", "m"),
            ("amfp.task", "machine"),
            ("amfp.labels", r#"["A-1","B-1"]"#),
            ("amfp.label_process", r#"{"A-1":"FDM","B-1":"DLS"}"#),
            ("amfp.pixel_size_um", "10.6"),
            ("amfp.roi_px", "192"),
            ("amfp.channels", "1"),
            ("amfp.mean", "0.5"),
            ("amfp.std", "0.2"),
            ("amfp.min_foreground", "0.8"),
            ("amfp.votes", "16"),
            ("amfp.unknown_threshold", "0.6"),
            ("amfp.trained_on", "synth:seed=7"),
        ]
    }

    #[test]
    fn complete_metadata_parses() {
        let m = ModelMetadata::from_props(good()).unwrap();
        assert_eq!(m.labels, ["A-1", "B-1"]);
        assert_eq!(m.process_of("B-1"), Some("DLS"));
        assert_eq!(m.roi_px, 192);
        assert!((m.sample_mm() - 2.0352).abs() < 1e-9);
    }

    #[test]
    fn label_process_is_optional() {
        let props: Vec<_> = good().into_iter().filter(|(k, _)| *k != "amfp.label_process").collect();
        let m = ModelMetadata::from_props(props).unwrap();
        assert_eq!(m.process_of("A-1"), None);
    }

    #[test]
    fn every_missing_and_malformed_key_is_named() {
        let props: Vec<_> = good()
            .into_iter()
            .filter(|(k, _)| *k != "amfp.roi_px" && *k != "amfp.trained_on")
            .map(|(k, v)| match k {
                "amfp.labels" => (k, r#"["A-1","A-1"]"#),
                "amfp.channels" => (k, "2"),
                _ => (k, v),
            })
            .collect();
        let e = ModelMetadata::from_props(props).unwrap_err();
        let text = e.to_string();
        for key in ["amfp.roi_px is missing", "amfp.trained_on is missing", "amfp.labels =", "amfp.channels = \"2\""] {
            assert!(text.contains(key), "{key:?} not in {text}");
        }
        assert_eq!(e.problems.len(), 4);
    }

    /// A ROI side beyond what the ROI sampler handles is refused at load, never a panic later.
    #[test]
    fn an_roi_side_beyond_65535_is_refused() {
        let props: Vec<_> =
            good().into_iter().map(|(k, v)| if k == "amfp.roi_px" { (k, "70000") } else { (k, v) }).collect();
        let e = ModelMetadata::from_props(props).unwrap_err();
        assert!(e.to_string().contains("amfp.roi_px = \"70000\""), "{e}");
        assert!(e.to_string().contains("from 8 to 65535"), "{e}");
    }

    #[test]
    fn label_process_must_cover_every_label() {
        let props: Vec<_> = good()
            .into_iter()
            .map(|(k, v)| if k == "amfp.label_process" { (k, r#"{"A-1":"FDM"}"#) } else { (k, v) })
            .collect();
        let e = ModelMetadata::from_props(props).unwrap_err();
        assert!(e.to_string().contains("no process for label(s) B-1"), "{e}");
    }

    #[test]
    fn a_model_without_amfp_keys_is_told_how_to_export() {
        let e = ModelMetadata::from_props([("producer", "pytorch")]).unwrap_err();
        assert!(e.to_string().contains("no amfp.* metadata"), "{e}");
    }

    #[test]
    fn the_embedding_keys_are_optional_and_come_together() {
        assert_eq!(ModelMetadata::from_props(good()).unwrap().embedding, None);
        let mut props = good();
        props.extend([
            ("amfp.embedding_output", "embedding"),
            ("amfp.embedding_dim", "256"),
            ("amfp.embedding_kind", "pre-logits"),
        ]);
        let spec = ModelMetadata::from_props(props.clone()).unwrap().embedding.unwrap();
        assert_eq!((spec.output.as_str(), spec.dim, spec.kind.as_str()), ("embedding", 256, "pre-logits"));
        props.retain(|(k, _)| *k != "amfp.embedding_kind");
        let e = ModelMetadata::from_props(props.clone()).unwrap_err().to_string();
        assert!(e.contains("amfp.embedding_kind missing"), "{e}");
        props.push(("amfp.embedding_kind", "pre-logits"));
        for p in props.iter_mut().filter(|(k, _)| *k == "amfp.embedding_dim") {
            p.1 = "1";
        }
        let e = ModelMetadata::from_props(props).unwrap_err().to_string();
        assert!(e.contains("amfp.embedding_dim = \"1\" is not an integer >= 2"), "{e}");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let props: Vec<_> =
            good().into_iter().map(|(k, v)| if k == "amfp.schema" { (k, "2") } else { (k, v) }).collect();
        assert!(ModelMetadata::from_props(props).unwrap_err().to_string().contains("amfp.schema is 2"));
    }
}
