//! The downstream readers on trees laid out as the releases are: `ingest
//! covidx` over the real images of `../shared/data/covid`, `ingest nih` over
//! the two real ChestX-ray14 PNGs of `../shared/data/nih` among small
//! generated ones, and `ingest chexpert` over a generated CheXpert tree.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use ingest::shard::Row;
use schemas::{Reject, Stage};

use crate::util::*;

fn link(src: &Path, dst: &Path) {
    std::os::unix::fs::symlink(src, dst)
        .unwrap_or_else(|e| panic!("{} -> {}: {e}", dst.display(), src.display()));
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Checks that every patient's rows are in one split and returns the split
/// of each patient.
fn split_of_patients(rows: &[Row]) -> BTreeMap<String, String> {
    let mut of: HashMap<&str, HashSet<&str>> = HashMap::new();
    for r in rows {
        of.entry(&r.subject_id).or_default().insert(&r.split);
    }
    of.iter()
        .map(|(p, s)| {
            assert_eq!(s.len(), 1, "patient {p} is in splits {s:?}");
            (p.to_string(), s.iter().next().unwrap().to_string())
        })
        .collect()
}

fn reject_with<'a>(rejects: &'a [Reject], needle: &str) -> &'a Reject {
    rejects
        .iter()
        .find(|r| r.path.contains(needle) || r.image_id.as_deref() == Some(needle))
        .unwrap_or_else(|| panic!("no reject for {needle}: {rejects:#?}"))
}

/// Two runs into different folders give the same bytes; a third over the
/// first finds it finished and leaves it as it is.
fn assert_reruns_identical(args: &[&str], out: &Path, other: &Path) {
    let with_out = |dir: &Path| {
        let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        a.extend(["--out".into(), s(dir).into()]);
        a
    };
    let before = folder_bytes(out);
    let again = with_out(out);
    run_ok(
        "ingest",
        &again.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(folder_bytes(out), before, "rerun over a finished folder");
    let fresh = with_out(other);
    run_ok(
        "ingest",
        &fresh.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let after = folder_bytes(other);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (name, bytes) in &before {
        assert!(bytes == &after[name], "{name} differs between runs");
    }
}

/// Per image of a COVIDx tree: (patient, split, finding_labels).
pub(crate) type Want = HashMap<String, (String, &'static str, Vec<String>)>;

/// Lays the real images of `../shared/data/covid` out as a COVIDx release in
/// `root`, with four bad lines in the train file (a missing image, a corrupt
/// image, an unknown label, too few fields), and returns the rows expected.
pub(crate) fn covidx_release(root: &Path) -> Want {
    let covid = shared().join("data/covid");
    let mut meta = csv::Reader::from_path(covid.join("metadata.csv")).unwrap();
    let headers = meta.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let (patient, finding, file) = (col("patientid"), col("finding"), col("filename"));

    for d in ["train", "val", "test"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    // Patients are dealt to the splits by their order of appearance; the
    // split files use both label vocabularies: train and val the current
    // (positive/negative), test the older one (COVID-19/pneumonia).
    let mut patients: Vec<String> = Vec::new();
    let mut lines: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    // image → (patient, split, finding_labels)
    let mut want: Want = HashMap::new();
    for rec in meta.records() {
        let rec = rec.unwrap();
        let p = match patients.iter().position(|x| x == &rec[patient]) {
            Some(p) => p,
            None => {
                patients.push(rec[patient].to_string());
                patients.len() - 1
            }
        };
        let (dir, split) = match p % 10 {
            0..7 => ("train", "train"),
            7 => ("val", "validate"),
            _ => ("test", "test"),
        };
        let covid_positive = rec[finding].contains("COVID-19");
        let (label, labels) = match (dir, covid_positive) {
            (_, true) if dir != "test" => ("positive", vec!["COVID-19".to_string()]),
            (_, false) if dir != "test" => ("negative", vec![]),
            (_, true) => ("COVID-19", vec!["COVID-19".to_string()]),
            (_, false) => ("pneumonia", vec!["pneumonia".to_string()]),
        };
        link(
            &covid.join("images").join(&rec[file]),
            &root.join(dir).join(&rec[file]),
        );
        // Extra spaces and a tab between fields are still one line.
        let sep = if want.len() == 3 { "  \t " } else { " " };
        lines.entry(dir).or_default().push(format!(
            "{}{sep}{}{sep}{label}{sep}cohen",
            &rec[patient], &rec[file]
        ));
        want.insert(
            rec[file].to_string(),
            (rec[patient].to_string(), split, labels),
        );
    }
    assert_eq!(want.len(), 249);
    std::fs::write(
        root.join("train/corrupt.jpg"),
        b"\xff\xd8\xff\xe0 not a jpeg",
    )
    .unwrap();
    let train = lines.get_mut("train").unwrap();
    train.insert(5, "900 missing.jpg positive cohen".into());
    train.insert(9, "901 corrupt.jpg negative cohen".into());
    train.insert(12, "902 000001-12.jpg maybe cohen".into());
    train.insert(14, "903 lonely.jpg".into());
    for (dir, name) in [
        ("train", "train_COVIDx9A.txt"),
        ("val", "val.txt"),
        ("test", "test.txt"),
    ] {
        std::fs::write(root.join(name), lines[dir].join("\n") + "\n").unwrap();
    }

    want
}

#[test]
fn covidx_release_of_real_images_splits_by_label_file_and_rejects_bad_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("covidx");
    let want = covidx_release(&root);
    let out = tmp.path().join("shards");
    let args = ["covidx", "--root", s(&root), "--short-side", "64"];
    let mut first = args.to_vec();
    first.extend(["--out", s(&out)]);
    run_ok("ingest", &first);

    let m = manifest(&out);
    assert_eq!(m.source, schemas::Source::Covidx);
    assert!(m.counts.reconciles(), "{:?}", m.counts);
    assert_eq!(m.counts.seen, 249 + 4);
    assert_eq!(m.counts.written, 249);
    let rejects = rejects(&out);
    assert_eq!(rejects.len(), 4, "{rejects:#?}");
    let missing = reject_with(&rejects, "missing.jpg");
    assert_eq!(missing.stage, Stage::ImageRead, "{missing:?}");
    let corrupt = reject_with(&rejects, "corrupt.jpg");
    assert_eq!(corrupt.stage, Stage::ImageDecode, "{corrupt:?}");
    // Malformed lines name the label file and their line (1-based, after
    // the inserted lines before them).
    let unknown = rejects
        .iter()
        .find(|r| r.reason.contains("unknown label"))
        .unwrap();
    assert!(
        unknown.path.ends_with("train_COVIDx9A.txt:13"),
        "{unknown:?}"
    );
    assert!(unknown.reason.contains("\"maybe\""), "{unknown:?}");
    let short = rejects
        .iter()
        .find(|r| r.reason.contains("2 fields"))
        .unwrap();
    assert!(short.path.ends_with("train_COVIDx9A.txt:15"), "{short:?}");

    let written = rows(&out);
    assert_eq!(written.len(), 249);
    for r in &written {
        let (p, split, labels) = &want[&r.image_id];
        assert_eq!(
            (&r.subject_id, r.split.as_str()),
            (p, *split),
            "{}",
            r.image_id
        );
        assert_eq!(&r.finding_labels, labels, "{}", r.image_id);
        assert_eq!(r.source, "covidx");
        assert!(!r.paired && r.text.is_none() && r.labels.iter().all(Option::is_none));
        assert_eq!(r.image_height.min(r.image_width), 64);
        assert_eq!(r.bits_stored, 8);
    }
    let splits = split_of_patients(&written);
    for s in ["train", "validate", "test"] {
        assert!(splits.values().any(|v| v == s), "no patient in {s}");
    }
    for l in [&["COVID-19"][..], &["pneumonia"], &[]] {
        assert!(
            written.iter().any(|r| r.finding_labels == l),
            "no row labelled {l:?}"
        );
    }
    assert_reruns_identical(&args, &out, &tmp.path().join("again"));

    // Not a release: the error names the files it looked for.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let res = run(
        "ingest",
        &[
            "covidx",
            "--root",
            s(&empty),
            "--out",
            s(&tmp.path().join("x")),
        ],
    );
    assert!(!res.status.success());
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        err.contains("train.txt") && err.contains("val_*.txt"),
        "{err}"
    );
}

#[test]
fn covidx_killed_run_resumes_to_the_uninterrupted_runs_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("covidx");
    covidx_release(&root);
    let args = |out: &Path| -> Vec<String> {
        [
            "covidx",
            "--root",
            s(&root),
            "--out",
            s(out),
            "--short-side",
            "64",
            "--rows-per-shard",
            "16",
            "--threads",
            "1",
        ]
        .map(String::from)
        .to_vec()
    };
    let whole = tmp.path().join("whole");
    run_ok(
        "ingest",
        &args(&whole).iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(manifest(&whole).shards.len() > 4);

    let out = tmp.path().join("killed");
    let mut child = std::process::Command::new(bin("ingest"))
        .args(args(&out))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    // Kill once two shard groups are done (the progress folder holds one
    // file besides them).
    while std::fs::read_dir(out.join(".progress")).map_or(0, |d| d.count().saturating_sub(1)) < 2
        && child.try_wait().unwrap().is_none()
        && start.elapsed() < std::time::Duration::from_secs(60)
    {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    child.kill().ok();
    child.wait().unwrap();
    assert!(
        !out.join(schemas::MANIFEST_FILE).exists(),
        "the run must be killed before it finishes for this test to test resuming"
    );
    run_ok(
        "ingest",
        &args(&out).iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let (a, b) = (folder_bytes(&whole), folder_bytes(&out));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, bytes) in &a {
        assert!(bytes == &b[name], "{name} differs after the resumed run");
    }
    assert!(!out.join(".progress").exists());
}

/// A small gray (or RGBA) PNG whose pixels depend on `seed`.
fn small_png(path: &Path, seed: u32, rgba: bool) {
    let img = image::GrayImage::from_fn(48, 40, |x, y| {
        image::Luma([((x * 5 + y * 3 + seed * 17) % 251) as u8])
    });
    let img = if rgba {
        image::DynamicImage::ImageLuma8(img).into_rgba8().into()
    } else {
        image::DynamicImage::ImageLuma8(img)
    };
    img.save_with_format(path, image::ImageFormat::Png).unwrap();
}

#[test]
fn nih_release_keeps_patients_in_one_split_and_the_seed_decides_it() {
    let nih = shared().join("data/nih");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("nih");
    for d in ["images_001/images", "images_002/images"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    // The release's older CSV: every line ends with a comma (an empty
    // 12th column).
    let mut csv = String::from(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n",
    );
    let mut want: HashMap<String, Vec<&str>> = HashMap::new();
    let mut row = |image: &str, labels: &str, patient: u32, view: &str| {
        csv.push_str(&format!(
            "{image},{labels},0,{patient},58,M,{view},2682,2749,0.143,0.143,\n"
        ));
    };
    link(
        &nih.join("00000001_000.png"),
        &root.join("images_001/images/00000001_000.png"),
    );
    link(
        &nih.join("00027426_000.png"),
        &root.join("images_002/images/00027426_000.png"),
    );
    row("00000001_000.png", "Cardiomegaly|Emphysema", 1, "PA");
    want.insert("00000001_000.png".into(), vec!["Cardiomegaly", "Emphysema"]);
    row("00027426_000.png", "No Finding", 27426, "AP");
    want.insert("00027426_000.png".into(), vec![]);
    let classes = [
        "Effusion",
        "Mass|Nodule",
        "No Finding",
        "Infiltration|Effusion|Atelectasis",
    ];
    let (mut test_list, mut train_val) = (
        vec!["00027426_000.png".to_string()],
        vec!["00000001_000.png".to_string()],
    );
    for p in 100..140u32 {
        for k in 0..2u32 {
            let image = format!("{p:08}_{k:03}.png");
            let dir = if p % 2 == 0 {
                "images_001"
            } else {
                "images_002"
            };
            small_png(
                &root.join(dir).join("images").join(&image),
                p * 2 + k,
                p % 5 == 0,
            );
            let labels = classes[((p + k) % 4) as usize];
            row(&image, labels, p, if k == 0 { "PA" } else { "AP" });
            want.insert(
                image.clone(),
                if labels == "No Finding" {
                    vec![]
                } else {
                    labels.split('|').collect()
                },
            );
            if p % 5 == 1 {
                test_list.push(image);
            } else {
                train_val.push(image);
            }
        }
    }
    // Bad rows: an unknown class, an image that is not there, a short row.
    row("00000200_000.png", "Effusion|Covid", 200, "PA");
    row("00000201_000.png", "Mass", 201, "PA");
    train_val.extend(["00000200_000.png".into(), "00000201_000.png".into()]);
    csv.push_str("00000202_000.png,Mass,0,202\n");
    std::fs::write(root.join("Data_Entry_2017.csv"), &csv).unwrap();
    std::fs::write(root.join("test_list.txt"), test_list.join("\n") + "\n").unwrap();
    std::fs::write(root.join("train_val_list.txt"), train_val.join("\n") + "\n").unwrap();

    let ingest_nih = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "nih",
            "--root",
            s(&root),
            "--out",
            s(out),
            "--short-side",
            "32",
        ];
        args.extend_from_slice(extra);
        run_ok("ingest", &args);
        let m = manifest(out);
        assert!(m.counts.reconciles(), "{:?}", m.counts);
        assert_eq!(m.counts.seen, 2 + 80 + 3);
        m
    };

    // Official: the test list is test; train_val is split by patient.
    let official = tmp.path().join("official");
    let m = ingest_nih(&official, &["--seed", "3"]);
    assert_eq!(m.source, schemas::Source::Nih);
    assert_eq!(m.counts.written, 82);
    let rejects = rejects(&official);
    assert_eq!(rejects.len(), 3, "{rejects:#?}");
    let unknown = reject_with(&rejects, "00000200_000.png");
    assert!(
        unknown.reason.contains("\"Covid\"") && unknown.path.ends_with("Data_Entry_2017.csv:84"),
        "{unknown:?}"
    );
    let missing = reject_with(&rejects, "00000201_000.png");
    assert_eq!(missing.stage, Stage::ImageRead);
    let short = rejects
        .iter()
        .find(|r| r.reason.contains("fields"))
        .unwrap();
    assert!(short.path.ends_with("Data_Entry_2017.csv:86"), "{short:?}");
    let written = rows(&official);
    for r in &written {
        let mut got: Vec<&str> = r.finding_labels.iter().map(String::as_str).collect();
        got.sort();
        let mut w = want[&r.image_id].clone();
        w.sort();
        assert_eq!(got, w, "{}", r.image_id);
        assert_eq!(r.source, "nih");
        assert_eq!(
            r.split == "test",
            test_list.contains(&r.image_id),
            "{}",
            r.image_id
        );
        assert_eq!(r.bits_stored, 8);
    }
    let real = written
        .iter()
        .find(|r| r.image_id == "00000001_000.png")
        .unwrap();
    assert_eq!(
        (real.orig_rows, real.orig_cols, real.view.as_str()),
        (512, 512, "PA")
    );
    let of = split_of_patients(&written);
    assert!(of.values().any(|s| s == "validate") && of.values().any(|s| s == "train"));
    assert!(
        written.iter().any(|r| r.photometric == "RGB"),
        "the RGBA PNGs are read"
    );

    // Paper: 70/10/20 by patient; the same seed gives the same split, another
    // seed another one.
    let paper = |name: &str, seed: &str| {
        let out = tmp.path().join(name);
        ingest_nih(&out, &["--split", "paper", "--seed", seed]);
        split_of_patients(&rows(&out))
    };
    let (a, b, c) = (
        paper("paper-a", "7"),
        paper("paper-b", "7"),
        paper("paper-c", "8"),
    );
    assert_eq!(a, b);
    assert_ne!(a, c);
    for s in ["train", "validate", "test"] {
        assert!(a.values().any(|v| v == s), "no patient in {s}: {a:?}");
    }
    assert_eq!(
        folder_bytes(&tmp.path().join("paper-a")),
        folder_bytes(&tmp.path().join("paper-b"))
    );

    // --views keeps the PA rows and counts the AP ones as filtered.
    let pa = tmp.path().join("pa");
    let m = ingest_nih(&pa, &["--views", "PA"]);
    assert_eq!((m.counts.written, m.counts.filtered), (41, 41));
    assert!(rows(&pa).iter().all(|r| r.view == "PA"));

    let res = run(
        "ingest",
        &[
            "nih",
            "--root",
            s(tmp.path()),
            "--out",
            s(&tmp.path().join("x")),
        ],
    );
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        !res.status.success() && err.contains("Data_Entry_2017_v2020.csv"),
        "{err}"
    );
}

#[test]
fn chexpert_release_keeps_uncertain_and_blank_labels_and_filters_laterals() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("chexpert");
    let ds = root.join("CheXpert-v1.0-small");
    let header = {
        let mut h = String::from("Path,Sex,Age,Frontal/Lateral,AP/PA");
        for (name, _) in schemas::CHEXPERT_CLASSES {
            h.push(',');
            h.push_str(name);
        }
        h
    };
    // (csv, path under the dataset folder, frontal/lateral, ap/pa, label cells)
    let cells = |v: [&str; 14]| v.join(",");
    let mut want: HashMap<String, (&str, &str, [Option<i8>; 14])> = HashMap::new();
    let mut csvs: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut add = |csv: &'static str,
                   split: &'static str,
                   rel: &str,
                   fl: &str,
                   appa: &'static str,
                   labels: [&str; 14],
                   make: bool| {
        let path = ds.join(rel);
        if make {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let img = image::GrayImage::from_fn(40, 48, |x, y| {
                image::Luma([((x * 7 + y + rel.len() as u32) % 256) as u8])
            });
            img.save_with_format(&path, image::ImageFormat::Jpeg)
                .unwrap();
        }
        csvs.entry(csv).or_default().push(format!(
            "CheXpert-v1.0-small/{rel},Female,60,{fl},{appa},{}",
            cells(labels)
        ));
        let parsed = labels.map(|c| match c {
            "" => None,
            c => Some(c.parse::<f32>().unwrap() as i8),
        });
        let parts: Vec<&str> = rel.split('/').collect();
        let id = format!(
            "{}_{}_{}",
            parts[1],
            parts[2],
            parts[3].trim_end_matches(".jpg")
        );
        want.insert(
            id,
            (
                split,
                if appa.is_empty() { "Lateral" } else { appa },
                parsed,
            ),
        );
    };
    let mut l = [""; 14];
    l[0] = "1.0";
    l[9] = "-1.0";
    l[13] = "0.0";
    add(
        "train.csv",
        "train",
        "train/patient00001/study1/view1_frontal.jpg",
        "Frontal",
        "AP",
        l,
        true,
    );
    add(
        "train.csv",
        "train",
        "train/patient00001/study1/view2_lateral.jpg",
        "Lateral",
        "",
        l,
        true,
    );
    let mut l2 = [""; 14];
    l2[8] = "1.0";
    add(
        "train.csv",
        "train",
        "train/patient00002/study3/view1_frontal.jpg",
        "Frontal",
        "PA",
        l2,
        true,
    );
    add(
        "train.csv",
        "train",
        "train/patient00003/study1/view1_frontal.jpg",
        "Frontal",
        "PA",
        l2,
        false,
    );
    let mut l3 = ["0.0"; 14];
    l3[1] = "-1.0";
    add(
        "valid.csv",
        "validate",
        "valid/patient64541/study1/view1_frontal.jpg",
        "Frontal",
        "AP",
        l3,
        true,
    );
    for (csv, rows) in &csvs {
        let mut text = format!("{header}\n{}\n", rows.join("\n"));
        if *csv == "train.csv" {
            let mut bad = [""; 14];
            bad[4] = "2.0";
            text.push_str(&format!("CheXpert-v1.0-small/train/patient00004/study1/view1_frontal.jpg,Male,40,Frontal,PA,{}\n", cells(bad)));
        }
        std::fs::write(ds.join(csv), text).unwrap();
    }

    let out = tmp.path().join("shards");
    let args = ["chexpert", "--root", s(&root), "--short-side", "32"];
    let mut first = args.to_vec();
    first.extend(["--out", s(&out)]);
    run_ok("ingest", &first);
    let m = manifest(&out);
    assert_eq!(m.source, schemas::Source::Chexpert);
    assert!(m.counts.reconciles(), "{:?}", m.counts);
    assert_eq!(
        (m.counts.seen, m.counts.written, m.counts.rejected_total()),
        (6, 4, 2)
    );
    let rejects = rejects(&out);
    let bad = reject_with(&rejects, "patient00004_study1_view1_frontal");
    assert!(
        bad.path.ends_with("train.csv:6") && bad.reason.contains("Enlarged Cardiomediastinum"),
        "{bad:?}"
    );
    let missing = reject_with(&rejects, "patient00003_study1_view1_frontal");
    assert_eq!(missing.stage, Stage::ImageRead);
    let written = rows(&out);
    assert_eq!(written.len(), 4);
    for r in &written {
        let (split, view, labels) = &want[&r.image_id];
        assert_eq!(
            (r.split.as_str(), r.view.as_str()),
            (*split, *view),
            "{}",
            r.image_id
        );
        assert_eq!(&r.labels, labels, "{}", r.image_id);
        assert!(r.finding_labels.is_empty() && !r.paired);
        assert_eq!(r.source, "chexpert");
    }
    assert_eq!(written[0].subject_id, "patient00001");
    assert_eq!(written[0].study_id, "patient00001_study1");
    split_of_patients(&written);
    assert_reruns_identical(&args, &out, &tmp.path().join("again"));

    let frontal = tmp.path().join("frontal");
    let mut f = args.to_vec();
    f.extend(["--out", s(&frontal), "--views", "AP,PA"]);
    run_ok("ingest", &f);
    let m = manifest(&frontal);
    assert_eq!((m.counts.written, m.counts.filtered), (3, 1));
    assert!(rows(&frontal).iter().all(|r| r.view != "Lateral"));

    // --csv: the released test labels kept beside the dataset folder (only
    // `Path` and the classes, 0/1 cells, `Path` from the dataset folder).
    let test_image = ds.join("test/patient64741/study1/view1_frontal.jpg");
    std::fs::create_dir_all(test_image.parent().unwrap()).unwrap();
    image::GrayImage::from_fn(40, 40, |x, y| image::Luma([(x ^ y) as u8]))
        .save_with_format(&test_image, image::ImageFormat::Jpeg)
        .unwrap();
    let mut test_cells = ["0"; 14];
    test_cells[3] = "1";
    let classes: Vec<&str> = schemas::CHEXPERT_CLASSES.iter().map(|c| c.0).collect();
    let test_csv = root.join("test_labels.csv");
    std::fs::write(
        &test_csv,
        format!(
            "Path,{}\ntest/patient64741/study1/view1_frontal.jpg,{}\n",
            classes.join(","),
            test_cells.join(",")
        ),
    )
    .unwrap();
    let chosen = tmp.path().join("chosen");
    let valid_csv = ds.join("valid.csv");
    let mut c = args.to_vec();
    c.extend([
        "--out",
        s(&chosen),
        "--csv",
        s(&valid_csv),
        "--csv",
        s(&test_csv),
    ]);
    run_ok("ingest", &c);
    let got = rows(&chosen);
    let summary: Vec<_> = got
        .iter()
        .map(|r| (r.image_id.as_str(), r.split.as_str(), r.view.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("patient64541_study1_view1_frontal", "validate", "AP"),
            ("patient64741_study1_view1_frontal", "test", "Frontal"),
        ]
    );
    let mut want_test = [Some(0i8); 14];
    want_test[3] = Some(1);
    assert_eq!(got[1].labels, want_test);

    let res = run(
        "ingest",
        &[
            "chexpert",
            "--root",
            s(tmp.path()),
            "--out",
            s(&tmp.path().join("x")),
        ],
    );
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        !res.status.success() && err.contains("CheXpert-v1.0-small"),
        "{err}"
    );
}
