//! Bad inputs that ingest must reject with a clear reason, injected into a
//! world already written, and listed in `faults.json`.
//!
//! Each fault damages one thing only, in a study or image picked at planning
//! time, so a test can check that ingest rejects exactly these and keeps the
//! rest.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use crate::mimic::{FaultRole, METADATA_CSV, MimicOut};
use crate::out;
use crate::padchest::PadOut;
use crate::{Fault, SynthConfig, SynthError, files};

fn ids(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn read(path: &Path) -> Result<Vec<u8>, SynthError> {
    std::fs::read(path).map_err(|e| SynthError::io(path, e))
}

fn remove(path: &Path) -> Result<(), SynthError> {
    std::fs::remove_file(path).map_err(|e| SynthError::io(path, e))
}

/// Deterministic filler bytes that no codec accepts as a stream.
fn garbage(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            // Avoid 0xFF so that no JPEG marker can be formed by chance.
            (x as u8) & 0x7F
        })
        .collect()
}

pub(crate) fn inject(
    out_dir: &Path,
    _cfg: &SynthConfig,
    mimic: &MimicOut,
    pad: &PadOut,
) -> Result<Vec<Fault>, SynthError> {
    let mut faults = Vec::new();
    let mut faulted_studies = Vec::new();
    for s in &mimic.studies {
        let Some(role) = s.fault else { continue };
        faulted_studies.push(s.study.clone());
        let (dicom_id, paths) = &s.images[0];
        let primary = out_dir.join(&paths[0]);
        match role {
            FaultRole::Truncate => {
                let bytes = read(&primary)?;
                // Keep the header, cut the pixel data short of what Rows x
                // Columns x BitsAllocated promise.
                let keep = if mimic.primary_is_dicom {
                    bytes.len() * 3 / 5
                } else {
                    200.min(bytes.len())
                };
                out::write(&primary, &bytes[..keep])?;
                faults.push(Fault {
                    kind: if mimic.primary_is_dicom {
                        "truncated_dicom"
                    } else {
                        "truncated_jpeg"
                    }
                    .into(),
                    path: paths[0].clone(),
                    ids: ids(&[
                        ("dicom_id", dicom_id),
                        ("study_id", &s.study),
                        ("subject_id", &s.subject),
                    ]),
                });
            }
            FaultRole::Garbage if mimic.primary_is_dicom => {
                let mut bytes = read(&primary)?;
                // The JPEG-LS fragment starts with SOI + SOF55 (FFD8 FFF7);
                // overwrite everything after it but the sequence delimiter.
                if let Some(pos) = bytes.windows(4).position(|w| w == [0xFF, 0xD8, 0xFF, 0xF7]) {
                    let end = bytes.len().saturating_sub(8);
                    let start = pos + 2;
                    if start < end {
                        let g = garbage(end - start, 7);
                        bytes[start..end].copy_from_slice(&g);
                        out::write(&primary, &bytes)?;
                        faults.push(Fault {
                            kind: "garbage_pixel_data".into(),
                            path: paths[0].clone(),
                            ids: ids(&[
                                ("dicom_id", dicom_id),
                                ("study_id", &s.study),
                                ("subject_id", &s.subject),
                            ]),
                        });
                    }
                }
            }
            FaultRole::MissingImage => {
                let (dicom_id, paths) = s.images.last().unwrap_or(&s.images[0]);
                for p in paths {
                    remove(&out_dir.join(p))?;
                    faults.push(Fault {
                        kind: "missing_image".into(),
                        path: p.clone(),
                        ids: ids(&[
                            ("dicom_id", dicom_id),
                            ("study_id", &s.study),
                            ("subject_id", &s.subject),
                        ]),
                    });
                }
            }
            FaultRole::MissingReport => {
                for p in &s.reports {
                    remove(&out_dir.join(p))?;
                    faults.push(Fault {
                        kind: "missing_report".into(),
                        path: p.clone(),
                        ids: ids(&[("study_id", &s.study), ("subject_id", &s.subject)]),
                    });
                }
            }
            FaultRole::MalformedRow => {
                // A row of this study with the wrong column count, for an
                // image id no other row uses, in the middle of the CSV.
                let bad_id = format!("{}-badrow", &dicom_id[..26]);
                let bad = format!("{bad_id},{},{},CHEST (PA AND LAT),PA\n", s.subject, s.study);
                for root in &mimic.roots {
                    let rel = format!("{root}/{METADATA_CSV}");
                    let path = out_dir.join(&rel);
                    let gz = read(&path)?;
                    let mut text = String::new();
                    flate2::read::GzDecoder::new(&gz[..])
                        .read_to_string(&mut text)
                        .map_err(|e| SynthError::io(&path, e))?;
                    let mut lines: Vec<&str> = text.lines().collect();
                    let at = (lines.len() / 2).max(1);
                    lines.insert(at, bad.trim_end());
                    let mut joined = lines.join("\n");
                    joined.push('\n');
                    out::write(&path, &out::gzip(joined.as_bytes()))?;
                    faults.push(Fault {
                        kind: "malformed_csv_row".into(),
                        path: rel,
                        ids: ids(&[
                            ("dicom_id", &bad_id),
                            ("study_id", &s.study),
                            ("subject_id", &s.subject),
                            ("line", &(at + 1).to_string()),
                        ]),
                    });
                }
            }
            _ => {}
        }
    }

    // Sidecar: two lines with entities, of studies not otherwise damaged.
    let rel = format!("{}/{}", mimic.roots[0], files::SIDECAR);
    let path = out_dir.join(&rel);
    let text = String::from_utf8_lossy(&read(&path)?).into_owned();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let mut done = 0;
    for line in lines.iter_mut() {
        if done == 2 {
            break;
        }
        let Ok(mut v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let study = v["study_id"].as_str().unwrap_or_default().to_string();
        let n_ent = v["entities"].as_array().map_or(0, |a| a.len());
        if n_ent == 0 || faulted_studies.contains(&study) {
            continue;
        }
        if done == 0 {
            let t = v["text"].as_str().unwrap_or_default().to_string();
            // Spans still fit: ingest must compare the text itself.
            v["text"] = serde_json::Value::String(format!("{t} Comparison with prior study."));
            faults.push(Fault {
                kind: "sidecar_text_mismatch".into(),
                path: rel.clone(),
                ids: ids(&[("study_id", &study)]),
            });
        } else {
            let len = v["text"].as_str().map_or(0, |t| t.chars().count());
            v["entities"][0]["end"] = serde_json::json!(len + 5);
            faults.push(Fault {
                kind: "sidecar_span_out_of_range".into(),
                path: rel.clone(),
                ids: ids(&[("study_id", &study)]),
            });
        }
        *line = v.to_string();
        faulted_studies.push(study);
        done += 1;
    }
    let mut joined = lines.join("\n");
    joined.push('\n');
    out::write(&path, joined.as_bytes())?;

    // PadChest: one unreadable PNG, one missing.
    let n = pad.images.len();
    if n >= 4 {
        let bad = &pad.images[n / 3];
        let p = out_dir.join(&bad.path);
        let bytes = read(&p)?;
        let mut damaged = bytes[..bytes.len().min(64)].to_vec();
        damaged.extend(garbage(256, 11));
        out::write(&p, &damaged)?;
        faults.push(Fault {
            kind: "unreadable_png".into(),
            path: bad.path.clone(),
            ids: ids(&[("ImageID", &bad.image_id), ("StudyID", &bad.study_id)]),
        });
        let gone = &pad.images[2 * n / 3];
        remove(&out_dir.join(&gone.path))?;
        faults.push(Fault {
            kind: "missing_png".into(),
            path: gone.path.clone(),
            ids: ids(&[("ImageID", &gone.image_id), ("StudyID", &gone.study_id)]),
        });
    }
    Ok(faults)
}
