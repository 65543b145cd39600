//! End-to-end checks of a generated world: determinism, formats, agreement
//! of labels, reports and lesions, and faults.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use dicom_pixeldata::PixelDecoder;
use synth::{MimicFormat, SynthConfig, generate};

fn cfg(seed: u64) -> SynthConfig {
    SynthConfig {
        studies: 30,
        padchest_images: 12,
        seed,
        size: 96,
        mimic_format: MimicFormat::Both,
        faults: false,
        ..Default::default()
    }
}

fn all_files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

fn gz_text(p: &Path) -> String {
    let mut s = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(p).unwrap())
        .read_to_string(&mut s)
        .unwrap();
    s
}

fn csv_rows(p: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let text = gz_text(p);
    let mut r = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(text.as_bytes());
    let header = r.headers().unwrap().iter().map(String::from).collect();
    let rows = r
        .records()
        .map(|x| x.unwrap().iter().map(String::from).collect())
        .collect();
    (header, rows)
}

#[test]
fn same_seed_gives_identical_bytes_and_another_seed_differs() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    generate(a.path(), &cfg(1)).unwrap();
    generate(b.path(), &cfg(1)).unwrap();
    generate(c.path(), &cfg(2)).unwrap();
    let (fa, fb, fc) = (
        all_files(a.path()),
        all_files(b.path()),
        all_files(c.path()),
    );
    assert!(fa.len() > 50);
    assert_eq!(fa.keys().collect::<Vec<_>>(), fb.keys().collect::<Vec<_>>());
    for (k, v) in &fa {
        assert!(fb[k] == *v, "{} differs between two runs", k.display());
    }
    assert_ne!(fa.keys().collect::<Vec<_>>(), fc.keys().collect::<Vec<_>>());
    // Regenerating into a previous world replaces it.
    generate(a.path(), &cfg(2)).unwrap();
    assert_eq!(
        all_files(a.path()).keys().collect::<Vec<_>>(),
        fc.keys().collect::<Vec<_>>()
    );
}

fn is_hex_id(s: &str) -> bool {
    let g: Vec<&str> = s.split('-').collect();
    g.len() == 5
        && g.iter().all(|x| {
            x.len() == 8
                && x.chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        })
}

fn is_id(s: &str, first: char) -> bool {
    s.len() == 8 && s.starts_with(first) && s.chars().all(|c| c.is_ascii_digit())
}

#[test]
fn formats_match_the_real_releases() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    generate(root, &cfg(3)).unwrap();
    let classes: Vec<&str> = schemas::CHEXPERT_CLASSES.iter().map(|c| c.0).collect();
    for m in ["mimic-cxr", "mimic-cxr-jpg"] {
        let mroot = root.join(m);
        let (h, meta) = csv_rows(&mroot.join("mimic-cxr-2.0.0-metadata.csv.gz"));
        assert_eq!(
            h.join(","),
            "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,PatientOrientationCodeSequence_CodeMeaning"
        );
        let (h, split) = csv_rows(&mroot.join("mimic-cxr-2.0.0-split.csv.gz"));
        assert_eq!(h.join(","), "dicom_id,study_id,subject_id,split");
        assert_eq!(split.len(), meta.len());
        for lab in ["chexpert", "negbio"] {
            let (h, rows) = csv_rows(&mroot.join(format!("mimic-cxr-2.0.0-{lab}.csv.gz")));
            assert_eq!(h[..2], ["subject_id", "study_id"]);
            assert_eq!(h[2..], classes[..]);
            for r in rows {
                for v in &r[2..] {
                    assert!(
                        ["", "1.0", "0.0", "-1.0"].contains(&v.as_str()),
                        "label {v}"
                    );
                }
            }
        }
        for r in &meta {
            assert!(is_hex_id(&r[0]), "dicom_id {}", r[0]);
            assert!(is_id(&r[1], '1') && is_id(&r[2], '5'));
            assert!(["PA", "AP", "LATERAL", "LL", ""].contains(&r[4].as_str()));
            let ext = if m == "mimic-cxr" { "dcm" } else { "jpg" };
            let p = mroot.join(format!(
                "files/p{}/p{}/s{}/{}.{ext}",
                &r[1][..2],
                r[1],
                r[2],
                r[0]
            ));
            let (rows, cols): (u32, u32) = (r[5].parse().unwrap(), r[6].parse().unwrap());
            if ext == "dcm" {
                let obj = dicom_object::open_file(&p).unwrap();
                let d = obj.decode_pixel_data().unwrap();
                assert_eq!((d.rows(), d.columns()), (rows, cols));
            } else {
                let img = image::open(&p).unwrap();
                assert_eq!(img.color(), image::ColorType::L8);
                assert_eq!((img.height(), img.width()), (rows, cols));
            }
            let report = mroot.join(format!("files/p{}/p{}/s{}.txt", &r[1][..2], r[1], r[2]));
            let text = std::fs::read_to_string(report).unwrap();
            assert!(text.starts_with("                                 FINAL REPORT\n"));
            for l in text.lines().skip(1) {
                assert!(l.starts_with(' ') && l.chars().count() < 80, "{l:?}");
            }
        }
        // Split is per subject.
        let mut by_subject: HashMap<String, String> = HashMap::new();
        for r in &split {
            assert_eq!(
                by_subject.entry(r[2].clone()).or_insert(r[3].clone()),
                &r[3]
            );
        }
    }
    let (h, rows) = csv_rows(&root.join("padchest").join(synth::files::PADCHEST_CSV));
    assert_eq!(h.len(), 36);
    assert_eq!(h[0], "");
    assert_eq!(h[1], "ImageID");
    assert_eq!(h[35], "LocalizationsCUIS");
    for r in rows {
        assert_eq!(r.len(), 36);
        assert!(r[1].ends_with(".png"));
        assert!(
            r[31].starts_with("['") && r[31].ends_with("']"),
            "Labels {}",
            r[31]
        );
        assert!(!r[34].contains(','), "labelCUIS {}", r[34]);
        let img = image::open(root.join("padchest").join(&r[2]).join(&r[1])).unwrap();
        assert_eq!(img.color(), image::ColorType::L16);
        let max = img.to_luma16().pixels().map(|p| p.0[0]).max().unwrap();
        let bits: u32 = r[18].parse().unwrap();
        assert!((max as u32) < (1 << bits) && (max as u32) > (1 << (bits - 2)));
    }
}

const NEG: [&str; 3] = ["no ", "normal", "without"];
const UNC: [&str; 4] = ["possible", "may ", "cannot be excluded", "suspected"];

fn keywords(class: &str) -> &'static [&'static str] {
    match class {
        "Atelectasis" => &["atelectasis"],
        "Cardiomegaly" => &["cardiomegaly", "heart"],
        "Consolidation" => &["consolidation"],
        "Edema" => &["edema"],
        "Enlarged Cardiomediastinum" => &["mediastin"],
        "Fracture" => &["fracture"],
        "Lung Lesion" => &["nodule", "mass"],
        "Lung Opacity" => &["opacit"],
        "Pleural Effusion" => &["effusion"],
        "Pleural Other" => &["thickening"],
        "Pneumonia" => &["pneumonia"],
        "Pneumothorax" => &["pneumothorax"],
        "Support Devices" => &["tube", "catheter", "picc"],
        _ => &[],
    }
}

#[test]
fn labels_agree_with_report_sentences_and_lesions() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut c = cfg(4);
    c.studies = 80;
    c.mimic_format = MimicFormat::Dicom;
    generate(root, &c).unwrap();
    let mroot = root.join("mimic-cxr");
    let (h, rows) = csv_rows(&mroot.join("mimic-cxr-2.0.0-chexpert.csv.gz"));
    let mut lesions: HashMap<String, Vec<String>> = HashMap::new();
    for l in std::fs::read_to_string(root.join("lesions.jsonl"))
        .unwrap()
        .lines()
    {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        for x in v["lesions"].as_array().unwrap() {
            lesions
                .entry(v["study_id"].as_str().unwrap().into())
                .or_default()
                .push(x["class"].as_str().unwrap().into());
        }
    }
    let mut checked = 0;
    for r in rows {
        let text = std::fs::read_to_string(mroot.join(format!(
            "files/p{}/p{}/s{}.txt",
            &r[0][..2],
            r[0],
            r[1]
        )))
        .unwrap();
        let flat = text
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase();
        let sentences: Vec<&str> = flat.split(". ").collect();
        let study_lesions = lesions.get(&r[1]).cloned().unwrap_or_default();
        for (i, class) in h.iter().enumerate().skip(2) {
            let kw = keywords(class);
            if kw.is_empty() {
                continue;
            }
            let mentions: Vec<&&str> = sentences
                .iter()
                .filter(|s| kw.iter().any(|k| s.contains(k)))
                .collect();
            let neg = |s: &&&str| NEG.iter().any(|c| s.contains(c));
            let unc = |s: &&&str| UNC.iter().any(|c| s.contains(c));
            let has_lesion = study_lesions.iter().any(|x| x == class);
            match r[i].as_str() {
                "1.0" => {
                    assert!(
                        mentions.iter().any(|s| !neg(s) && !unc(s)),
                        "{} {class}=1 but no positive sentence in {flat}",
                        r[1]
                    );
                    assert!(has_lesion, "{} {class}=1 but no lesion", r[1]);
                }
                "0.0" => {
                    assert!(
                        mentions.iter().all(neg) && !mentions.is_empty(),
                        "{} {class}=0: {mentions:?}",
                        r[1]
                    );
                    assert!(!has_lesion);
                }
                "-1.0" => assert!(
                    !mentions.is_empty() && mentions.iter().all(unc),
                    "{} {class}=-1: {mentions:?}",
                    r[1]
                ),
                _ => {
                    assert!(
                        mentions.is_empty(),
                        "{} {class} empty but mentioned: {mentions:?}",
                        r[1]
                    );
                    assert!(!has_lesion);
                }
            }
            checked += 1;
        }
    }
    assert!(checked > 500);
}

/// The training text of a synthetic report, read by the layout synth writes
/// and not by the section parser that made the sidecar: the report below
/// the last line of underscores (an addendum sits above it), split into
/// paragraphs at blank lines; the paragraphs after the ` FINDINGS: ` and
/// ` IMPRESSION: ` header lines, whitespace collapsed, joined by a space;
/// with neither header (or both empty), the last paragraph. `None` for a
/// report without text.
fn expected_training_text(report: &str) -> Option<(String, Layout)> {
    let lines: Vec<&str> = report.lines().collect();
    let separator = lines.iter().rposition(|l| {
        let t = l.trim();
        t.len() >= 20 && t.chars().all(|c| c == '_')
    });
    let body = &lines[separator.map_or(0, |i| i + 1)..];
    let paragraphs: Vec<&[&str]> = body
        .split(|l| l.trim().is_empty())
        .filter(|p| !p.is_empty())
        .collect();
    let collapse = |p: &[&str]| {
        p.iter()
            .flat_map(|l| l.split_whitespace())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let is_header = |p: &[&str], name: &str| p.len() == 1 && p[0].trim() == name;
    // A section whose body is empty (the next paragraph is the next header)
    // is no section.
    let after = |header: &str| {
        let i = paragraphs.iter().position(|p| is_header(p, header))?;
        paragraphs
            .get(i + 1)
            .filter(|p| !is_header(p, "FINDINGS:") && !is_header(p, "IMPRESSION:"))
            .map(|p| collapse(p))
    };
    let parts: Vec<String> = [after("FINDINGS:"), after("IMPRESSION:")]
        .into_iter()
        .flatten()
        .collect();
    let layout = Layout {
        addendum: separator.is_some(),
        sections: parts.len(),
    };
    let text = if parts.is_empty() {
        collapse(paragraphs.last()?)
    } else {
        parts.join(" ")
    };
    Some((text, layout))
}

/// What [`expected_training_text`] found in a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Layout {
    addendum: bool,
    /// FINDINGS and IMPRESSION sections present (0: the last paragraph).
    sections: usize,
}

#[test]
fn sidecar_text_is_the_reports_findings_and_impression_and_spans_fit() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Enough studies for every layout, addenda (5%) included.
    generate(
        root,
        &SynthConfig {
            mimic_format: MimicFormat::Dicom,
            studies: 150,
            ..cfg(6)
        },
    )
    .unwrap();
    let mroot = root.join("mimic-cxr");
    let (_, meta) = csv_rows(&mroot.join("mimic-cxr-2.0.0-metadata.csv.gz"));
    let subject_of: HashMap<&str, &str> = meta
        .iter()
        .map(|r| (r[2].as_str(), r[1].as_str()))
        .collect();
    let mut n = 0;
    let mut layouts = BTreeMap::new();
    for l in std::fs::read_to_string(mroot.join("ner_sidecar.jsonl"))
        .unwrap()
        .lines()
    {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let study = v["study_id"].as_str().unwrap();
        let subj = subject_of[study];
        let report = std::fs::read_to_string(
            mroot.join(format!("files/p{}/p{subj}/s{study}.txt", &subj[..2])),
        )
        .unwrap();
        let (t, layout) = expected_training_text(&report)
            .unwrap_or_else(|| panic!("study {study}: no text in\n{report}"));
        assert_eq!(v["text"].as_str().unwrap(), t, "study {study}:\n{report}");
        *layouts.entry(layout).or_insert(0) += 1;
        let chars: Vec<char> = t.chars().collect();
        for e in v["entities"].as_array().unwrap() {
            let (s, e2) = (
                e["start"].as_u64().unwrap() as usize,
                e["end"].as_u64().unwrap() as usize,
            );
            assert_eq!(
                chars[s..e2].iter().collect::<String>(),
                e["text"].as_str().unwrap()
            );
            assert_eq!(e["label"], "ENTITY");
            n += 1;
        }
    }
    assert!(n > 30);
    // The world holds every case the comparison reads differently: one or
    // both sections, none (the last paragraph), an addendum above.
    for sections in 0..=2 {
        assert!(
            layouts.keys().any(|l| l.sections == sections),
            "no report with {sections} sections: {layouts:?}"
        );
    }
    assert!(
        layouts.keys().any(|l| l.addendum),
        "no addendum: {layouts:?}"
    );
}

#[test]
fn faults_are_injected_and_listed_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let s = generate(
        root,
        &SynthConfig {
            faults: true,
            mimic_format: MimicFormat::Dicom,
            ..cfg(8)
        },
    )
    .unwrap();
    let listed: Vec<synth::Fault> =
        serde_json::from_str(&std::fs::read_to_string(root.join("faults.json")).unwrap()).unwrap();
    assert_eq!(listed, s.faults);
    let kinds: Vec<&str> = listed.iter().map(|f| f.kind.as_str()).collect();
    for k in [
        "truncated_dicom",
        "garbage_pixel_data",
        "missing_image",
        "missing_report",
        "malformed_csv_row",
        "unreadable_png",
        "missing_png",
        "sidecar_text_mismatch",
        "sidecar_span_out_of_range",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    for f in &listed {
        let p = root.join(&f.path);
        match f.kind.as_str() {
            "missing_image" | "missing_report" | "missing_png" => assert!(!p.exists()),
            "truncated_dicom" | "garbage_pixel_data" => {
                let ok = dicom_object::open_file(&p)
                    .ok()
                    .is_some_and(|o| o.decode_pixel_data().is_ok());
                assert!(!ok, "{} still decodes", f.path);
            }
            "unreadable_png" => assert!(image::open(&p).is_err()),
            "malformed_csv_row" => {
                let (h, rows) = csv_rows(&p);
                assert!(rows.iter().any(|r| r.len() != h.len()));
            }
            _ => assert!(p.exists()),
        }
    }
    // Without --faults, none.
    let clean = tempfile::tempdir().unwrap();
    let s = generate(clean.path(), &cfg(8)).unwrap();
    assert!(s.faults.is_empty() && !clean.path().join("faults.json").exists());
}
