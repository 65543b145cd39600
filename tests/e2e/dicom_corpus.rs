//! The real DICOM corpus of `../shared/data/dicom`, laid out as a MIMIC-CXR
//! release: every decodable file becomes a row, the two corrupt files become
//! rejects with their reason, and nothing panics.

use std::io::Write as _;

use schemas::Stage;

use crate::util::*;

#[test]
fn corpus_ingests_with_exactly_the_corrupt_files_rejected() {
    let corpus = shared().join("data/dicom");
    let mut files: Vec<_> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
        .collect();
    files.sort();
    assert!(files.len() >= 16);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("mimic-cxr");
    mimic_release(&root, &files);
    let out = tmp.path().join("shards");
    let res = ingest_mimic(&root, &out, &[]);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let m = manifest(&out);
    assert!(m.counts.reconciles());
    let rejects = rejects(&out);
    let mut rejected: Vec<_> = rejects
        .iter()
        .map(|r| r.image_id.clone().unwrap())
        .collect();
    rejected.sort();
    assert_eq!(
        rejected,
        [
            "corrupt-dx-chest-j2k-bad-marker",
            "corrupt-truncated-explicit-le"
        ],
        "{rejects:#?}"
    );
    for r in &rejects {
        assert_eq!(r.stage, Stage::ImageDecode);
        assert!(r.path.ends_with(".dcm") && r.reason.len() > 10, "{r:?}");
    }
    assert_eq!(m.counts.written as usize, files.len() - 2);

    // With --strict the first reject stops the run with the file named.
    let strict = ingest_mimic(&root, &tmp.path().join("strict"), &["--strict"]);
    assert!(!strict.status.success());
    assert!(
        String::from_utf8_lossy(&strict.stderr).contains("corrupt"),
        "{}",
        String::from_utf8_lossy(&strict.stderr)
    );

    // Stored images: MONOCHROME1 inverted so that bone is bright. The lungs of
    // a PA chest sit left and right of the middle, darker than the spine.
    for row in rows(&out) {
        let (w, h) = (row.image_width as usize, row.image_height as usize);
        let px = &row.image;
        let mean = |x0: usize, x1: usize| {
            let (y0, y1) = (h * 3 / 10, h * 6 / 10);
            let mut s = 0u64;
            for y in y0..y1 {
                for x in x0..x1 {
                    s += px[y * w + x] as u64;
                }
            }
            s as f64 / ((y1 - y0) * (x1 - x0)) as f64
        };
        let lungs = (mean(w * 2 / 10, w * 4 / 10) + mean(w * 6 / 10, w * 8 / 10)) / 2.0;
        let spine = mean(w * 45 / 100, w * 55 / 100);
        assert!(
            spine > lungs,
            "{}: spine {spine:.0} should be brighter than lungs {lungs:.0}",
            row.image_id
        );
    }
}

/// `files` laid out as a MIMIC-CXR release under `root`: one study per file
/// with a short report, PA views, the train split, blank labels.
fn mimic_release(root: &std::path::Path, files: &[std::path::PathBuf]) {
    let mut meta = Vec::new();
    let mut split = Vec::new();
    let mut labels = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let (subject, study) = (10_000_000 + i, 50_000_000 + i);
        let dicom = f.file_stem().unwrap().to_string_lossy().replace('_', "-");
        let dir = root.join(format!("files/p10/p{subject}"));
        std::fs::create_dir_all(dir.join(format!("s{study}"))).unwrap();
        std::os::unix::fs::symlink(f, dir.join(format!("s{study}/{dicom}.dcm"))).unwrap();
        std::fs::write(
            dir.join(format!("s{study}.txt")),
            " FINDINGS: No pleural effusion.\n IMPRESSION: Normal chest.\n",
        )
        .unwrap();
        meta.push(format!("{dicom},{subject},{study},,PA,0,0,,,,,"));
        split.push(format!("{dicom},{study},{subject},train"));
        labels.push(format!("{subject},{study}{}", ",".repeat(14)));
    }
    let write = |name: &str, header: String, rows: &[String]| {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        writeln!(gz, "{header}").unwrap();
        rows.iter().for_each(|r| writeln!(gz, "{r}").unwrap());
        std::fs::write(root.join(name), gz.finish().unwrap()).unwrap();
    };
    write("mimic-cxr-2.0.0-metadata.csv.gz", "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,PatientOrientationCodeSequence_CodeMeaning".into(), &meta);
    write(
        "mimic-cxr-2.0.0-split.csv.gz",
        "dicom_id,study_id,subject_id,split".into(),
        &split,
    );
    let names: Vec<&str> = schemas::CHEXPERT_CLASSES.iter().map(|c| c.0).collect();
    write(
        "mimic-cxr-2.0.0-chexpert.csv.gz",
        format!("subject_id,study_id,{}", names.join(",")),
        &labels,
    );
}

/// OpenJPEG logs several INFO lines per JPEG 2000 image; they are shown
/// only with `-v` (or when RUST_LOG asks for them).
#[test]
fn codec_log_lines_are_quiet_unless_asked_for() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("mimic-cxr");
    mimic_release(
        &root,
        &[shared().join("data/dicom/dx_chest_j2k_lossless.dcm")],
    );
    let ingest = |out: &str, extra: &[&str]| {
        let out = tmp.path().join(out);
        let tok = tokenizer();
        let mut cmd = std::process::Command::new(bin("ingest"));
        cmd.args(["mimic", "--root"])
            .arg(&root)
            .arg("--out")
            .arg(&out)
            .arg("--tokenizer")
            .arg(&tok)
            .args(extra)
            .env_remove("RUST_LOG");
        let res = cmd.output().expect("spawn ingest");
        assert!(
            res.status.success(),
            "{}",
            String::from_utf8_lossy(&res.stderr)
        );
        assert_eq!(manifest(&out).counts.written, 1);
        String::from_utf8_lossy(&res.stderr).into_owned()
    };
    let quiet = ingest("quiet", &[]);
    assert!(
        !quiet.contains("jpeg2k"),
        "codec lines by default:\n{quiet}"
    );
    let verbose = ingest("verbose", &["-v"]);
    assert!(
        verbose.contains("jpeg2k"),
        "no codec lines with -v:\n{verbose}"
    );
}
