//! The CheXpert, ChestX-ray14, COVIDx and RSNA Pneumonia trees: their
//! layouts, labels (and RSNA's boxes) that follow the drawn lesions by the
//! documented rules, determinism, and no effect on the MIMIC and PadChest
//! parts or on each other.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use synth::{SynthConfig, generate};

fn cfg(seed: u64) -> SynthConfig {
    SynthConfig {
        studies: 0,
        padchest_images: 0,
        seed,
        size: 64,
        chexpert_images: 40,
        nih_images: 40,
        covidx_images: 40,
        rsna_images: 40,
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

/// Image files (not label files) under a folder, relative to it.
fn image_files(root: &Path) -> BTreeSet<PathBuf> {
    all_files(root)
        .into_keys()
        .filter(|p| p.extension().is_some_and(|e| e == "png" || e == "jpg"))
        .collect()
}

fn csv_table(p: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut r = csv::Reader::from_path(p).unwrap();
    let header = r.headers().unwrap().iter().map(String::from).collect();
    let rows = r
        .records()
        .map(|x| x.unwrap().iter().map(String::from).collect())
        .collect();
    (header, rows)
}

/// A tree's lesions.jsonl by image path (relative to the output folder).
fn lesions(root: &Path, tree: &str) -> HashMap<String, serde_json::Value> {
    std::fs::read_to_string(root.join(tree).join("lesions.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["path"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

/// The (class, label, certainty) of each lesion of a lesions.jsonl line.
fn lesion_labels(line: &serde_json::Value) -> Vec<(String, Option<String>, String)> {
    line["lesions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["class"].as_str().unwrap().to_string(),
                l["label"].as_str().map(String::from),
                l["certainty"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn decode(path: &Path, format: image::ImageFormat) -> image::DynamicImage {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(
        image::guess_format(&bytes).unwrap(),
        format,
        "{}",
        path.display()
    );
    let img = image::load_from_memory(&bytes).unwrap();
    assert_eq!(img.color(), image::ColorType::L8, "{}", path.display());
    img
}

fn chexpert_header(test: bool) -> Vec<String> {
    let mut h: Vec<String> = if test {
        vec!["Path".into()]
    } else {
        ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"]
            .map(String::from)
            .to_vec()
    };
    h.extend(schemas::CHEXPERT_CLASSES.iter().map(|c| c.0.to_string()));
    h
}

#[test]
fn trees_have_the_release_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let s = generate(root, &cfg(1)).unwrap();

    // CheXpert: three CSVs whose Paths are exactly the JPEGs of the tree.
    let ds = root.join("chexpert/CheXpert-v1.0-small");
    let mut listed = BTreeSet::new();
    let mut views = HashSet::new();
    for (name, prefix, test) in [
        ("train.csv", "CheXpert-v1.0-small/train/", false),
        ("valid.csv", "CheXpert-v1.0-small/valid/", false),
        ("test_labels.csv", "test/", true),
    ] {
        let (header, rows) = csv_table(&ds.join(name));
        assert_eq!(header, chexpert_header(test), "{name}");
        assert!(!rows.is_empty(), "{name} is empty");
        for r in &rows {
            assert!(r[0].starts_with(prefix), "{name}: {}", r[0]);
            let rel = r[0].trim_start_matches("CheXpert-v1.0-small/");
            let parts: Vec<&str> = rel.split('/').collect();
            assert_eq!(parts.len(), 4, "{}", r[0]);
            assert!(parts[1].starts_with("patient") && parts[2].starts_with("study"));
            let lateral = parts[3] == "view2_lateral.jpg";
            assert!(lateral || parts[3] == "view1_frontal.jpg", "{}", r[0]);
            if !test {
                let want = if lateral { "Lateral" } else { "Frontal" };
                assert_eq!(r[3], want, "{}", r[0]);
                assert_eq!(r[4].is_empty(), lateral, "{}", r[0]);
                views.insert(if lateral { "Lateral" } else { r[4].as_str() }.to_string());
            }
            decode(&ds.join(rel), image::ImageFormat::Jpeg);
            assert!(listed.insert(PathBuf::from(rel)), "{} twice", r[0]);
        }
    }
    assert_eq!(image_files(&ds), listed);
    for v in ["AP", "PA", "Lateral"] {
        assert!(views.contains(v), "no {v} view in {views:?}");
    }
    let cx = s.downstream.chexpert.as_ref().unwrap();
    assert_eq!((cx.root.as_str(), cx.images), ("chexpert", 40));
    assert!(cx.uncertain_cells > 0 && cx.blank_cells > 0, "{cx:?}");

    // NIH: the 11-field CSV, 8-bit PNGs, patient-level lists.
    let nih = root.join("nih");
    let csv_text = std::fs::read_to_string(nih.join("Data_Entry_2017_v2020.csv")).unwrap();
    let mut lines = csv_text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
    );
    let mut patient_of = HashMap::new();
    let mut per_patient: HashMap<String, usize> = HashMap::new();
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        assert_eq!(f.len(), 11, "{l}");
        let stem = format!(
            "{:08}_{:03}.png",
            f[3].parse::<u32>().unwrap(),
            f[2].parse::<u32>().unwrap()
        );
        assert_eq!(f[0], stem, "{l}");
        assert!(
            ["PA", "AP"].contains(&f[6]) && ["M", "F"].contains(&f[5]),
            "{l}"
        );
        let img = decode(&nih.join("images").join(f[0]), image::ImageFormat::Png);
        assert_eq!((img.width(), img.height()), (64, 64));
        patient_of.insert(f[0].to_string(), f[3].to_string());
        *per_patient.entry(f[3].to_string()).or_default() += 1;
    }
    assert_eq!(patient_of.len(), 40);
    assert!(
        per_patient.values().any(|&n| n >= 2),
        "no patient with several images"
    );
    let list = |name: &str| -> HashSet<String> {
        std::fs::read_to_string(nih.join(name))
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    };
    let (test, train_val) = (list("test_list.txt"), list("train_val_list.txt"));
    assert!(!test.is_empty() && !train_val.is_empty());
    assert!(test.is_disjoint(&train_val));
    assert_eq!(test.len() + train_val.len(), 40);
    let test_patients: HashSet<&String> = test.iter().map(|i| &patient_of[i]).collect();
    assert!(
        train_val
            .iter()
            .all(|i| !test_patients.contains(&patient_of[i])),
        "a patient is on both lists"
    );
    assert_eq!(
        image_files(&nih),
        patient_of
            .keys()
            .map(|k| PathBuf::from("images").join(k))
            .collect()
    );

    // COVIDx: `patient filename label source` per split, files in the split's folder.
    let cov = root.join("covidx");
    let mut split_of_patient: HashMap<String, &str> = HashMap::new();
    let mut files = BTreeSet::new();
    for split in ["train", "val", "test"] {
        let text = std::fs::read_to_string(cov.join(format!("{split}.txt"))).unwrap();
        assert!(!text.is_empty(), "{split}.txt is empty");
        for l in text.lines() {
            let f: Vec<&str> = l.split(' ').collect();
            assert_eq!(f.len(), 4, "{l}");
            assert!(["positive", "negative"].contains(&f[2]), "{l}");
            let format = if f[1].ends_with(".png") {
                image::ImageFormat::Png
            } else {
                assert!(f[1].ends_with(".jpg"), "{l}");
                image::ImageFormat::Jpeg
            };
            decode(&cov.join(split).join(f[1]), format);
            assert!(files.insert(PathBuf::from(split).join(f[1])), "{l}");
            let was = split_of_patient.insert(f[0].to_string(), split);
            assert!(
                was.is_none_or(|w| w == split),
                "patient {} in two splits",
                f[0]
            );
        }
    }
    assert_eq!(files.len(), 40);
    assert_eq!(image_files(&cov), files);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("world.json")).unwrap()).unwrap();
    assert_eq!(json["downstream"]["covidx"]["images"], 40);
    assert_eq!(json["config"]["nih_images"], 40);
}

#[test]
fn labels_follow_the_drawn_lesions() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    generate(root, &cfg(2)).unwrap();

    // CheXpert: every lesion's class carries the cell its certainty gives
    // (train: 1.0 / -1.0; valid and test: drawn at all is 1), and nearly
    // every positive class drawable on a frontal has a lesion there.
    let ds = root.join("chexpert/CheXpert-v1.0-small");
    let les = lesions(root, "chexpert");
    let classes: Vec<&str> = schemas::CHEXPERT_CLASSES.iter().map(|c| c.0).collect();
    let drawable = [
        "Atelectasis",
        "Cardiomegaly",
        "Consolidation",
        "Edema",
        "Lung Lesion",
        "Lung Opacity",
        "Pleural Effusion",
        "Pneumonia",
        "Support Devices",
    ];
    let (mut wanted, mut found, mut checked) = (0, 0, 0);
    let mut seen_cells: HashMap<&str, HashSet<String>> = HashMap::new();
    for (name, test) in [
        ("train.csv", false),
        ("valid.csv", false),
        ("test_labels.csv", true),
    ] {
        let (_, rows) = csv_table(&ds.join(name));
        let first = if test { 1 } else { 5 };
        for r in rows {
            let rel = r[0].trim_start_matches("CheXpert-v1.0-small/");
            let line = &les[&format!("chexpert/CheXpert-v1.0-small/{rel}")];
            let cell =
                |class: &str| r[first + classes.iter().position(|c| *c == class).unwrap()].clone();
            let mut drawn = HashSet::new();
            for (class, label, certainty) in lesion_labels(line) {
                let want = match (name, certainty.as_str()) {
                    ("train.csv", "positive") => "1.0",
                    ("train.csv", _) => "-1.0",
                    ("valid.csv", _) => "1.0",
                    _ => "1",
                };
                assert_eq!(cell(&class), want, "{rel} {class} {certainty}");
                assert_eq!(label.as_deref(), Some(want), "{rel} {class}");
                drawn.insert(class);
                checked += 1;
            }
            if rel.ends_with("frontal.jpg") {
                for class in drawable {
                    if ["1.0", "1"].contains(&cell(class).as_str()) && name == "train.csv" {
                        wanted += 1;
                        found += drawn.contains(class) as usize;
                    }
                }
            }
            for (k, c) in classes.iter().enumerate() {
                seen_cells
                    .entry(c)
                    .or_default()
                    .insert(r[first + k].clone());
            }
            if test || name == "valid.csv" {
                assert!(
                    r[first..]
                        .iter()
                        .all(|c| ["0", "1", "0.0", "1.0"].contains(&c.as_str())),
                    "{rel}: {:?}",
                    &r[first..]
                );
            }
        }
    }
    assert!(checked > 20, "only {checked} lesions");
    assert!(
        found * 10 >= wanted * 9,
        "{found} of {wanted} positives drawn"
    );
    let both = classes
        .iter()
        .filter(|c| {
            let s = &seen_cells[*c];
            (s.contains("1.0") || s.contains("1")) && (s.contains("0.0") || s.contains("0"))
        })
        .count();
    assert!(both >= 5, "{seen_cells:?}");

    // NIH: Finding Labels are exactly the labels of the image's lesions.
    let les = lesions(root, "nih");
    let csv_text = std::fs::read_to_string(root.join("nih/Data_Entry_2017_v2020.csv")).unwrap();
    let mut per_class: HashMap<String, usize> = HashMap::new();
    let mut sizes: HashMap<String, Vec<u32>> = HashMap::new();
    for l in csv_text.lines().skip(1) {
        let f: Vec<&str> = l.split(',').collect();
        let line = &les[&format!("nih/images/{}", f[0])];
        let mut want: Vec<String> = lesion_labels(line)
            .into_iter()
            .filter_map(|(_, label, _)| label)
            .collect();
        want.sort();
        want.dedup();
        let got: Vec<String> = if f[1] == "No Finding" {
            vec![]
        } else {
            f[1].split('|').map(String::from).collect()
        };
        assert_eq!(got, want, "{}", f[0]);
        for (l, les) in lesion_labels(line)
            .iter()
            .zip(line["lesions"].as_array().unwrap())
        {
            let allowed: Option<Vec<&str>> = match l.0.as_str() {
                "Pleural Effusion" => Some(vec!["Effusion"]),
                "Lung Opacity" => Some(vec!["Infiltration"]),
                "Lung Lesion" => Some(vec!["Nodule", "Mass"]),
                "Pleural Other" => Some(vec!["Pleural_Thickening"]),
                "Support Devices" => None,
                c => Some(vec![c]),
            };
            match allowed {
                None => assert_eq!(l.1, None, "{}: devices are not labelled", f[0]),
                Some(names) => assert!(
                    l.1.as_deref().is_some_and(|x| names.contains(&x)),
                    "{}: {l:?}",
                    f[0]
                ),
            }
            assert_eq!(
                l.2, "positive",
                "{}: NIH draws positive findings only",
                f[0]
            );
            if let Some(label @ ("Nodule" | "Mass")) = l.1.as_deref() {
                let b: Vec<u32> = les["bbox"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as u32)
                    .collect();
                sizes.entry(label.into()).or_default().push(b[2] - b[0]);
            }
        }
        for c in if got.is_empty() {
            vec!["No Finding".to_string()]
        } else {
            got
        } {
            *per_class.entry(c).or_default() += 1;
        }
    }
    assert!(per_class.len() >= 6, "{per_class:?}");
    assert!(per_class["No Finding"] >= 2, "{per_class:?}");
    if let (Some(n), Some(m)) = (sizes.get("Nodule"), sizes.get("Mass")) {
        assert!(
            n.iter().max() < m.iter().max(),
            "nodules {n:?} vs masses {m:?}"
        );
    }

    // COVIDx: positive exactly when a pneumonia or consolidation opacity is drawn.
    let les = lesions(root, "covidx");
    let mut labels = HashMap::new();
    for split in ["train", "val", "test"] {
        let text = std::fs::read_to_string(root.join(format!("covidx/{split}.txt"))).unwrap();
        for l in text.lines() {
            let f: Vec<&str> = l.split(' ').collect();
            let line = &les[&format!("covidx/{split}/{}", f[1])];
            let opacity = lesion_labels(line)
                .iter()
                .any(|(c, _, _)| c == "Pneumonia" || c == "Consolidation");
            assert_eq!(f[2] == "positive", opacity, "{l}");
            for (c, label, _) in lesion_labels(line) {
                let want =
                    (c == "Pneumonia" || c == "Consolidation").then(|| "positive".to_string());
                assert_eq!(label, want, "{l}: {c}");
            }
            *labels.entry(f[2].to_string()).or_insert(0) += 1;
        }
    }
    assert!(
        labels["positive"] >= 8 && labels["negative"] >= 8,
        "{labels:?}"
    );
}

#[test]
fn same_seed_gives_identical_trees_and_another_seed_differs() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    generate(a.path(), &cfg(3)).unwrap();
    generate(b.path(), &cfg(3)).unwrap();
    generate(c.path(), &cfg(4)).unwrap();
    for tree in ["chexpert", "nih", "covidx", "rsna"] {
        let (fa, fb, fc) = (
            all_files(&a.path().join(tree)),
            all_files(&b.path().join(tree)),
            all_files(&c.path().join(tree)),
        );
        assert!(fa.len() > 40, "{tree}: {} files", fa.len());
        assert_eq!(fa.keys().collect::<Vec<_>>(), fb.keys().collect::<Vec<_>>());
        for (k, v) in &fa {
            assert!(
                fb[k] == *v,
                "{tree}/{} differs between two runs",
                k.display()
            );
        }
        let same = fa.iter().filter(|(k, v)| fc.get(*k) == Some(*v)).count();
        assert!(
            same * 10 < fa.len(),
            "{tree}: {same} of {} files equal under another seed",
            fa.len()
        );
    }
    assert_eq!(
        std::fs::read(a.path().join("world.json")).unwrap(),
        std::fs::read(b.path().join("world.json")).unwrap()
    );
}

#[test]
fn trees_leave_the_mimic_and_padchest_parts_as_they_were() {
    let base = SynthConfig {
        studies: 6,
        padchest_images: 4,
        seed: 9,
        size: 64,
        ..Default::default()
    };
    let with = SynthConfig {
        chexpert_images: 5,
        nih_images: 5,
        covidx_images: 5,
        rsna_images: 5,
        ..base.clone()
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    generate(a.path(), &base).unwrap();
    generate(b.path(), &with).unwrap();
    let fa = all_files(a.path());
    let fb = all_files(b.path());
    let trees = ["chexpert", "nih", "covidx", "rsna"];
    let outside: Vec<&PathBuf> = fb
        .keys()
        .filter(|k| !trees.iter().any(|t| k.starts_with(t)))
        .collect();
    assert_eq!(fa.keys().collect::<Vec<_>>(), outside);
    for (k, v) in &fa {
        if k != Path::new("world.json") {
            assert!(fb[k] == *v, "{} changed by the trees", k.display());
        }
    }
    // Without trees, world.json says nothing of them (as before they existed).
    let text = String::from_utf8(fa[Path::new("world.json")].clone()).unwrap();
    for word in [
        "downstream",
        "chexpert_images",
        "nih_images",
        "covidx_images",
        "rsna_images",
    ] {
        assert!(!text.contains(word), "world.json mentions {word}");
    }
    // A world regenerated without trees loses the old ones.
    generate(b.path(), &base).unwrap();
    for t in trees {
        assert!(!b.path().join(t).exists(), "{t} left behind");
    }
    assert_eq!(all_files(b.path()), fa);
}

/// The RSNA labels file as (patientId, box or None, Target) per line, the
/// class file as (patientId, class) per line.
type RsnaLine = (String, Option<[f64; 4]>, String);

fn rsna_files(root: &Path) -> (Vec<RsnaLine>, Vec<(String, String)>) {
    let (header, rows) = csv_table(&root.join("rsna/stage_2_train_labels.csv"));
    assert_eq!(header, ["patientId", "x", "y", "width", "height", "Target"]);
    let labels = rows
        .into_iter()
        .map(|r| {
            assert_eq!(r.len(), 6, "{r:?}");
            let bx = if r[1..5].iter().all(|c| c.is_empty()) {
                None
            } else {
                // Floats with one decimal, as the release writes them.
                for c in &r[1..5] {
                    let (whole, frac) = c.split_once('.').unwrap_or_else(|| panic!("{r:?}"));
                    assert!(
                        !whole.is_empty() && whole.bytes().all(|b| b.is_ascii_digit()),
                        "{r:?}"
                    );
                    assert_eq!(frac, "0", "{r:?}");
                }
                let v: Vec<f64> = r[1..5].iter().map(|c| c.parse().unwrap()).collect();
                Some([v[0], v[1], v[2], v[3]])
            };
            (r[0].clone(), bx, r[5].clone())
        })
        .collect();
    let (header, rows) = csv_table(&root.join("rsna/stage_2_detailed_class_info.csv"));
    assert_eq!(header, ["patientId", "class"]);
    let classes = rows
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    (labels, classes)
}

/// A version 4 UUID in lower-case hex, as the release's patientIds are.
fn uuid_shaped(id: &str) -> bool {
    let parts: Vec<&str> = id.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && parts.iter().all(|p| {
            p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
        && parts[2].starts_with('4')
        && parts[3].starts_with(['8', '9', 'a', 'b'])
}

#[test]
fn rsna_tree_has_the_release_layout() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let s = generate(root, &cfg(5)).unwrap();
    let (labels, classes) = rsna_files(root);

    // One Target per patient: several lines with boxes for 1, one empty
    // line for 0; the class file has a line per labels line, agreeing.
    let mut per_patient: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
    for (id, bx, target) in &labels {
        assert!(uuid_shaped(id), "{id}");
        match target.as_str() {
            "1" => assert!(bx.is_some(), "{id}: Target 1 without a box"),
            "0" => assert!(bx.is_none(), "{id}: Target 0 with a box"),
            t => panic!("{id}: Target {t}"),
        }
        let e = per_patient.entry(id).or_insert((0, target));
        assert_eq!(e.1, target, "{id}: two Targets");
        e.0 += 1;
        if target == "0" {
            assert_eq!(e.0, 1, "{id}: two negative lines");
        }
    }
    assert_eq!(per_patient.len(), 40);
    assert_eq!(classes.len(), labels.len());
    for ((id, _, target), (cid, class)) in labels.iter().zip(&classes) {
        assert_eq!(id, cid);
        let want: &[&str] = if target == "1" {
            &["Lung Opacity"]
        } else {
            &["Normal", "No Lung Opacity / Not Normal"]
        };
        assert!(want.contains(&class.as_str()), "{id}: {class} for {target}");
    }
    let boxes_of = |k: usize| per_patient.values().filter(|v| v == &&(k, "1")).count();
    let negatives = per_patient.values().filter(|v| v.1 == "0").count();
    assert!(
        boxes_of(1) >= 3 && boxes_of(2) + boxes_of(3) >= 3 && negatives >= 10,
        "one box {}, two {}, three {}, negative {negatives}",
        boxes_of(1),
        boxes_of(2),
        boxes_of(3)
    );
    let kinds: HashSet<&str> = classes.iter().map(|c| c.1.as_str()).collect();
    assert_eq!(kinds.len(), 3, "{kinds:?}");

    // Exactly the patients' DICOMs: 8-bit MONOCHROME2 JPEG baseline, the
    // patientId in the header, size x size, every box inside.
    let images = root.join("rsna/stage_2_train_images");
    let files: BTreeSet<PathBuf> = all_files(&images).into_keys().collect();
    let want: BTreeSet<PathBuf> = per_patient
        .keys()
        .map(|id| PathBuf::from(format!("{id}.dcm")))
        .collect();
    assert_eq!(files, want);
    let mut views = HashSet::new();
    for id in per_patient.keys() {
        let obj = dicom_object::open_file(images.join(format!("{id}.dcm"))).unwrap();
        assert_eq!(
            obj.meta().transfer_syntax().trim_end_matches('\0'),
            "1.2.840.10008.1.2.4.50"
        );
        let text = |tag| {
            obj.element(tag)
                .unwrap()
                .to_str()
                .unwrap()
                .trim()
                .to_string()
        };
        let int = |tag| obj.element(tag).unwrap().to_int::<u32>().unwrap();
        assert_eq!(text(tags::PATIENT_ID), *id);
        assert_eq!(text(tags::PHOTOMETRIC_INTERPRETATION), "MONOCHROME2");
        assert_eq!(
            [tags::BITS_STORED, tags::ROWS, tags::COLUMNS].map(int),
            [8, 64, 64]
        );
        views.insert(text(tags::VIEW_POSITION));
    }
    assert_eq!(views, ["AP", "PA"].map(String::from).into());
    for (id, bx, _) in &labels {
        if let Some([x, y, w, h]) = bx {
            assert!(
                x + w <= 64.0 && y + h <= 64.0 && *w > 0.0 && *h > 0.0,
                "{id}"
            );
        }
    }
    let all: BTreeSet<PathBuf> = all_files(&root.join("rsna")).into_keys().collect();
    let top: BTreeSet<PathBuf> = all
        .iter()
        .filter(|p| !p.starts_with("stage_2_train_images"))
        .cloned()
        .collect();
    assert_eq!(
        top,
        [
            "lesions.jsonl",
            "stage_2_detailed_class_info.csv",
            "stage_2_train_labels.csv"
        ]
        .map(PathBuf::from)
        .into()
    );

    // world.json counts what the files hold.
    let c = s.downstream.rsna.as_ref().unwrap();
    assert_eq!((c.root.as_str(), c.patients, c.images), ("rsna", 40, 40));
    assert_eq!(c.boxes, labels.iter().filter(|l| l.2 == "1").count());
    assert_eq!(c.images_per_split, [("train".to_string(), 40)].into());
    assert_eq!(c.labels["Lung Opacity"], per_patient.len() - negatives);
    assert_eq!(c.lesion_lines, 40);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("world.json")).unwrap()).unwrap();
    assert_eq!(json["downstream"]["rsna"]["boxes"], c.boxes);
    assert_eq!(json["config"]["rsna_images"], 40);
}

#[test]
fn rsna_targets_and_boxes_are_the_drawn_opacities() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    generate(root, &cfg(6)).unwrap();
    let (labels, classes) = rsna_files(root);
    let les = lesions(root, "rsna");
    assert_eq!(les.len(), 40);
    let mut boxes: BTreeMap<&str, Vec<[u32; 4]>> = BTreeMap::new();
    let mut class_of: HashMap<&str, &str> = HashMap::new();
    for ((id, bx, _), (_, class)) in labels.iter().zip(&classes) {
        let e = boxes.entry(id).or_default();
        if let Some([x, y, w, h]) = bx {
            e.push([x, y, &(x + w), &(y + h)].map(|v| *v as u32));
        }
        class_of.insert(id, class);
    }
    let (mut drawn_boxes, mut other_drawn) = (0, 0);
    for (id, want) in &boxes {
        let line = &les[&format!("rsna/stage_2_train_images/{id}.dcm")];
        assert_eq!(line["image_id"], *id);
        let mut opacities = Vec::new();
        for (l, (class, label, certainty)) in line["lesions"]
            .as_array()
            .unwrap()
            .iter()
            .zip(lesion_labels(line))
        {
            assert_eq!(
                certainty, "positive",
                "{id}: RSNA draws positive findings only"
            );
            assert_ne!(class, "Lung Opacity", "{id}: a generic opacity is drawn");
            let opacity = class == "Pneumonia" || class == "Consolidation";
            assert_eq!(label.as_deref(), opacity.then_some("Lung Opacity"), "{id}");
            if opacity {
                let b: Vec<u32> = l["bbox"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as u32)
                    .collect();
                opacities.push([b[0], b[1], b[2], b[3]]);
            } else {
                other_drawn += 1;
            }
        }
        // Target 1 exactly when an opacity is drawn, one labels line per
        // opacity with its box, in the drawn order.
        assert_eq!(*want, opacities, "{id}");
        drawn_boxes += opacities.len();
        let nothing = line["lesions"].as_array().unwrap().is_empty();
        let class = class_of[id];
        match (opacities.is_empty(), nothing) {
            (false, _) => assert_eq!(class, "Lung Opacity", "{id}"),
            (true, true) => assert_eq!(class, "Normal", "{id}"),
            (true, false) => assert_eq!(class, "No Lung Opacity / Not Normal", "{id}"),
        }
    }
    assert!(drawn_boxes >= 15, "only {drawn_boxes} boxes");
    assert!(other_drawn >= 10, "only {other_drawn} other lesions");
}

#[test]
fn rsna_tree_leaves_the_other_trees_as_they_were() {
    let without = SynthConfig {
        studies: 3,
        padchest_images: 3,
        rsna_images: 0,
        ..cfg(7)
    };
    let with = SynthConfig {
        rsna_images: 12,
        ..without.clone()
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let sa = generate(a.path(), &without).unwrap();
    let sb = generate(b.path(), &with).unwrap();
    let fa = all_files(a.path());
    let fb = all_files(b.path());
    let outside: BTreeMap<&PathBuf, &Vec<u8>> =
        fb.iter().filter(|(k, _)| !k.starts_with("rsna")).collect();
    assert_eq!(
        fa.keys().collect::<Vec<_>>(),
        outside.keys().copied().collect::<Vec<_>>()
    );
    for (k, v) in &fa {
        if k != Path::new("world.json") {
            assert!(outside[k] == v, "{} changed by the RSNA tree", k.display());
        }
    }
    // world.json differs by the RSNA config, counts and notes alone.
    let (mut ja, mut jb) = (
        serde_json::to_value(&sa).unwrap(),
        serde_json::to_value(&sb).unwrap(),
    );
    assert!(jb["downstream"]["rsna"].is_object());
    jb["downstream"].as_object_mut().unwrap().remove("rsna");
    jb["config"].as_object_mut().unwrap().remove("rsna_images");
    let notes_a = ja.as_object_mut().unwrap().remove("notes").unwrap();
    let notes_b = jb.as_object_mut().unwrap().remove("notes").unwrap();
    assert_eq!(ja, jb);
    let (na, nb) = (notes_a.as_array().unwrap(), notes_b.as_array().unwrap());
    assert!(nb.len() > na.len() && nb.starts_with(na), "{na:?} / {nb:?}");
}
