//! The real images of `../shared/data/covid`, laid out as a MIMIC-CXR-JPG
//! release with their clinical notes as reports, ingest with no rejects.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use crate::util::*;

fn gz_csv(path: &Path, header: &str, rows: &[String]) {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    writeln!(gz, "{header}").unwrap();
    for r in rows {
        writeln!(gz, "{r}").unwrap();
    }
    std::fs::write(path, gz.finish().unwrap()).unwrap();
}

/// Wraps text as a MIMIC report: indented FINAL REPORT, one-space lines under 80 columns.
fn mimic_report(notes: &str) -> String {
    let mut out = String::from("                                 FINAL REPORT\n FINDINGS:\n");
    let mut line = String::new();
    for word in notes.split_whitespace() {
        if line.len() + word.len() + 1 > 76 {
            writeln!(out, " {line}").unwrap();
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    writeln!(out, " {line}").unwrap();
    out
}

#[test]
fn real_covid_images_with_notes_ingest_without_rejects() {
    let covid = shared().join("data/covid");
    let mut meta = csv::Reader::from_path(covid.join("metadata.csv")).unwrap();
    let headers = meta.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let (patient, notes, file, view) = (
        col("patientid"),
        col("clinical_notes"),
        col("filename"),
        col("view"),
    );

    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("mimic-cxr-jpg");
    let mut patients: Vec<String> = Vec::new();
    let (mut metadata, mut split, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    let header_labels: Vec<&str> = schemas::CHEXPERT_CLASSES.iter().map(|c| c.0).collect();
    for (i, rec) in meta.records().enumerate() {
        let rec = rec.unwrap();
        let p = match patients.iter().position(|x| x == &rec[patient]) {
            Some(p) => p,
            None => {
                patients.push(rec[patient].to_string());
                patients.len() - 1
            }
        };
        let (subject, study, dicom) = (
            10_000_000 + p,
            50_000_000 + i,
            format!("{i:08x}-0000000a-0000000b-0000000c-0000000d"),
        );
        let dir = root.join(format!("files/p{}/p{subject}", &subject.to_string()[..2]));
        std::fs::create_dir_all(dir.join(format!("s{study}"))).unwrap();
        std::os::unix::fs::symlink(
            covid.join("images").join(&rec[file]),
            dir.join(format!("s{study}/{dicom}.jpg")),
        )
        .unwrap();
        std::fs::write(dir.join(format!("s{study}.txt")), mimic_report(&rec[notes])).unwrap();
        metadata.push(format!(
            "{dicom},{subject},{study},,{},0,0,,,,,",
            rec[view].replace(',', " ")
        ));
        split.push(format!("{dicom},{study},{subject},train"));
        labels.push(format!("{subject},{study}{}", ",".repeat(14)));
    }
    gz_csv(
        &root.join("mimic-cxr-2.0.0-metadata.csv.gz"),
        "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,PatientOrientationCodeSequence_CodeMeaning",
        &metadata,
    );
    gz_csv(
        &root.join("mimic-cxr-2.0.0-split.csv.gz"),
        "dicom_id,study_id,subject_id,split",
        &split,
    );
    gz_csv(
        &root.join("mimic-cxr-2.0.0-chexpert.csv.gz"),
        &format!("subject_id,study_id,{}", header_labels.join(",")),
        &labels,
    );

    let out = tmp.path().join("shards");
    let res = ingest_mimic(&root, &out, &["--views", "all", "--strict"]);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let m = manifest(&out);
    assert_eq!(m.counts.rejected_total(), 0);
    assert_eq!(m.counts.written as usize, metadata.len());
    assert!(metadata.len() >= 249);
    let rows = rows(&out);
    for r in &rows {
        assert_eq!(r.image_height.min(r.image_width), 256);
        assert!(
            r.token_ids.as_ref().unwrap().len() > 2,
            "{}: notes must give tokens",
            r.image_id
        );
        assert_eq!(r.entity_source.as_deref(), Some("lexicon"));
    }
    let with_entities = rows
        .iter()
        .filter(|r| r.entity_mask.as_ref().unwrap().iter().any(|m| *m))
        .count();
    assert!(
        with_entities * 2 > rows.len(),
        "the lexicon should find entities in most notes: {with_entities}/{}",
        rows.len()
    );
}
