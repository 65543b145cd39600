//! End-to-end tests of the loader on small shard folders written here.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use pipeline::{
    BadRowPolicy, Batch, CONTEXT, LABEL_MISSING, Loader, LoaderConfig, Mode, NUM_LABELS,
    OpenOptions, PipelineError, Position, SourceKind, Sources,
};
use schemas::{
    Counts, ImageEncoding, ImagePolicy, Manifest, SCHEMA_VERSION, ShardEntry, Source,
    shard_file_name,
};
use shards::{Row, ShardsError, encode_rows, sha256_hex};

const W: usize = 40;
const H: usize = 32;

/// A row whose pixels, tokens and ids all carry its number.
fn row(source: Source, id: usize, split: &str) -> Row {
    let paired = source == Source::Mimic;
    Row {
        source: source.name().into(),
        subject_id: format!("s{id}"),
        study_id: format!("t{id}"),
        image_id: format!("{}-{id}", source.name()),
        split: split.into(),
        view: "PA".into(),
        paired,
        image: (0..W * H).map(|i| ((id * 7 + i % W) % 256) as u8).collect(),
        image_height: H as i32,
        image_width: W as i32,
        token_ids: paired.then(|| vec![49406, 1000 + id as i32, 49407]),
        entity_mask: paired.then(|| vec![false, true, false]),
        labels: std::array::from_fn(|c| if c == 0 { Some(1) } else { None }),
        ..Default::default()
    }
}

/// Writes a finished shard folder: `shards` shards of `rows` rows, row groups
/// of 4. `mutate` may change a row (by global number) before it is written.
fn folder(
    dir: &Path,
    source: Source,
    shards: usize,
    rows: usize,
    mutate: impl Fn(usize, &mut Row),
) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut entries = Vec::new();
    for s in 0..shards {
        let rows: Vec<Row> = (0..rows)
            .map(|r| {
                let id = s * rows + r;
                let mut row = row(source, id, "train");
                mutate(id, &mut row);
                row
            })
            .collect();
        let bytes = encode_rows(&rows, 4, 3).unwrap();
        let file = shard_file_name(s);
        std::fs::write(dir.join(&file), &bytes).unwrap();
        entries.push(ShardEntry {
            file,
            rows: rows.len() as u64,
            sha256: sha256_hex(&bytes),
        });
    }
    let manifest = Manifest {
        schema_version: SCHEMA_VERSION,
        tool_version: "test".into(),
        source,
        arguments: serde_json::json!({}),
        image_policy: ImagePolicy {
            encoding: ImageEncoding::Raw,
            ..Default::default()
        },
        tokenizer: None,
        entities: None,
        counts: Counts::default(),
        shards: entries,
        part: None,
    };
    std::fs::write(
        dir.join(schemas::MANIFEST_FILE),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    dir.to_path_buf()
}

struct World {
    _tmp: tempfile::TempDir,
    mimic: PathBuf,
    padchest: PathBuf,
}

/// 5 MIMIC shards × 12 rows, 3 PadChest shards × 5 rows.
fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let mimic = folder(&tmp.path().join("mimic"), Source::Mimic, 5, 12, |_, _| {});
    let padchest = folder(
        &tmp.path().join("padchest"),
        Source::Padchest,
        3,
        5,
        |_, _| {},
    );
    World {
        _tmp: tmp,
        mimic,
        padchest,
    }
}

fn sources(w: &World) -> Sources {
    Sources::open(
        std::slice::from_ref(&w.mimic),
        std::slice::from_ref(&w.padchest),
        &OpenOptions::default(),
    )
    .unwrap()
}

/// Batch 8 = 6 paired + 2 unpaired; window 10 rows.
fn cfg() -> LoaderConfig {
    LoaderConfig {
        batch_size: 8,
        paired_fraction: 0.75,
        shuffle_window: 10,
        epochs: Some(2),
        seed: 7,
        ..Default::default()
    }
}

fn run(w: &World, cfg: &LoaderConfig, from: Position) -> Vec<Batch> {
    Loader::new(sources(w), cfg, from)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

#[test]
fn batches_do_not_depend_on_thread_count_or_prefetch() {
    let w = world();
    let one = run(
        &w,
        &LoaderConfig {
            threads: 1,
            prefetch: 0,
            ..cfg()
        },
        Position::default(),
    );
    let three = run(
        &w,
        &LoaderConfig {
            threads: 3,
            prefetch: 2,
            ..cfg()
        },
        Position::default(),
    );
    assert_eq!(
        one.len(),
        2 * 10,
        "60 paired rows / 6 per batch = 10 steps, 2 epochs"
    );
    assert!(
        one == three,
        "1 thread and 3 threads gave different batches"
    );
    let other_seed = run(&w, &LoaderConfig { seed: 8, ..cfg() }, Position::default());
    assert_ne!(
        one[0].rows, other_seed[0].rows,
        "the seed does not change the order"
    );
}

#[test]
fn every_batch_has_exact_paired_and_unpaired_counts_and_text() {
    let w = world();
    let batches = run(&w, &cfg(), Position::default());
    for b in &batches {
        assert_eq!((b.size, b.paired_rows), (8, 6));
        assert_eq!(b.images.len(), 8 * 3 * 224 * 224);
        assert_eq!(b.paired, [1, 1, 1, 1, 1, 1, 0, 0]);
        for r in 0..8 {
            let paired = r < 6;
            assert_eq!(
                b.rows[r].source,
                if paired {
                    SourceKind::Paired
                } else {
                    SourceKind::Unpaired
                }
            );
            assert_eq!(b.token_lengths[r], if paired { 3 } else { 0 });
            let toks = &b.tokens[r * CONTEXT..(r + 1) * CONTEXT];
            if paired {
                // Token 1 carries the row number; the rest is zero padding.
                let id = (b.rows[r].loc.shard * 12 + b.rows[r].loc.row) as i64;
                assert_eq!(&toks[..3], &[49406, 1000 + id, 49407]);
                assert_eq!(&b.entity_mask[r * CONTEXT..r * CONTEXT + 4], &[0, 1, 0, 0]);
            }
            assert!(toks[3..].iter().all(|&t| t == 0));
            assert_eq!(b.labels[r * NUM_LABELS], 1);
            assert_eq!(b.labels[r * NUM_LABELS + 1], LABEL_MISSING);
        }
    }
    // Epoch = one pass over the paired rows: no paired row twice in an epoch.
    for epoch in 0..2 {
        let seen: Vec<_> = batches
            .iter()
            .filter(|b| b.position.epoch == epoch)
            .flat_map(|b| b.rows[..6].to_vec())
            .collect();
        assert_eq!(
            seen.iter().collect::<HashSet<_>>().len(),
            60,
            "epoch {epoch}"
        );
    }
    // The unpaired stream (15 rows, 2 a batch) cycles: each pass of 15
    // consecutive unpaired rows holds every row once.
    let unpaired: Vec<_> = batches.iter().flat_map(|b| b.rows[6..].to_vec()).collect();
    for pass in unpaired.chunks(15).filter(|c| c.len() == 15) {
        assert_eq!(pass.iter().collect::<HashSet<_>>().len(), 15);
    }
    let last = batches.last().unwrap();
    let unpaired_progress = last
        .progress
        .iter()
        .find(|(k, _)| *k == SourceKind::Unpaired)
        .unwrap()
        .1;
    assert!(
        (unpaired_progress - 19.0 * 2.0 / 15.0).abs() < 1e-9,
        "{unpaired_progress}"
    );
}

#[test]
fn ranks_see_disjoint_slices_of_the_same_global_batches() {
    let w = world();
    let global = run(&w, &cfg(), Position::default());
    let ranks: Vec<Vec<Batch>> = (0..2)
        .map(|rank| {
            run(
                &w,
                &LoaderConfig {
                    world_size: 2,
                    rank,
                    ..cfg()
                },
                Position::default(),
            )
        })
        .collect();
    for (step, g) in global.iter().enumerate() {
        let (a, b) = (&ranks[0][step], &ranks[1][step]);
        assert_eq!((a.size, a.paired_rows), (4, 3));
        // Global slots: paired 0..6 then unpaired 6..8; rank r takes the
        // r-th half of each.
        let joined: Vec<_> = [&a.rows[..3], &b.rows[..3], &a.rows[3..], &b.rows[3..]].concat();
        assert_eq!(joined, g.rows, "step {step}");
        let img = |x: &Batch, i: usize| x.image(i).to_vec();
        assert_eq!(
            img(b, 0),
            img(g, 3),
            "rank 1's first image is global slot 3, augmentation included"
        );
        assert_eq!(img(b, 3), img(g, 7));
        let sa: HashSet<_> = a.rows.iter().collect();
        assert!(
            b.rows
                .iter()
                .all(|r| !sa.contains(r) || r.source == SourceKind::Unpaired)
        );
    }
}

#[test]
fn resuming_yields_the_batches_of_an_uninterrupted_run() {
    let w = world();
    let whole = run(&w, &cfg(), Position::default());
    for from in [
        Position { epoch: 0, step: 3 },
        Position { epoch: 1, step: 0 },
        Position { epoch: 1, step: 9 },
    ] {
        let resumed = run(&w, &cfg(), from);
        let skip = (from.epoch * 10 + from.step) as usize;
        assert_eq!(resumed.len(), whole.len() - skip);
        assert!(resumed[..] == whole[skip..], "resumed at {from:?}");
    }
}

#[test]
fn eval_mode_is_deterministic_and_in_stored_order() {
    let w = world();
    let eval = LoaderConfig {
        batch_size: 8,
        paired_fraction: 0.75,
        ..LoaderConfig::eval()
    };
    let a = run(
        &w,
        &LoaderConfig {
            seed: 1,
            ..eval.clone()
        },
        Position::default(),
    );
    let b = run(
        &w,
        &LoaderConfig {
            seed: 2,
            threads: 1,
            ..eval
        },
        Position::default(),
    );
    assert!(a == b, "eval output depends on the seed or threads");
    assert_eq!(a[0].rows[0].loc, pipeline::RowLoc { shard: 0, row: 0 });
    assert_eq!(a[0].rows[5].loc, pipeline::RowLoc { shard: 0, row: 5 });
}

#[test]
fn train_batches_stay_in_the_normalised_range() {
    let w = world();
    let b = &run(
        &w,
        &LoaderConfig {
            epochs: Some(1),
            ..cfg()
        },
        Position::default(),
    )[0];
    for c in 0..3 {
        let (lo, hi) = (
            -pipeline::CLIP_MEAN[c] / pipeline::CLIP_STD[c],
            (1.0 - pipeline::CLIP_MEAN[c]) / pipeline::CLIP_STD[c],
        );
        for i in 0..b.size {
            let plane = &b.image(i)[c * 224 * 224..(c + 1) * 224 * 224];
            assert!(plane.iter().all(|v| *v >= lo - 1e-5 && *v <= hi + 1e-5));
        }
    }
}

fn open_err(dirs: &[PathBuf]) -> PipelineError {
    Sources::open(dirs, &[], &OpenOptions::default()).unwrap_err()
}

#[test]
fn bad_shards_fail_with_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let make = |name: &str| folder(&tmp.path().join(name), Source::Mimic, 2, 8, |_, _| {});

    let d = make("missing");
    std::fs::remove_file(d.join("shard-00001.parquet")).unwrap();
    let e = open_err(&[d]);
    assert!(
        matches!(e, PipelineError::Shard(ShardsError::MissingShard { .. }))
            && e.to_string().contains("missing/shard-00001.parquet"),
        "{e}"
    );

    let d = make("truncated");
    let p = d.join("shard-00000.parquet");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = open_err(&[d]);
    assert!(
        matches!(e, PipelineError::Shard(ShardsError::Truncated { .. }))
            && e.to_string().contains("truncated/shard-00000.parquet"),
        "{e}"
    );

    let d = make("sha");
    let p = d.join("shard-00001.parquet");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&p, &bytes).unwrap();
    let e = open_err(std::slice::from_ref(&d));
    assert!(
        matches!(e, PipelineError::Shard(ShardsError::ShaMismatch { .. }))
            && e.to_string().contains("sha/shard-00001.parquet"),
        "{e}"
    );

    let d = make("footer");
    let p = d.join("shard-00000.parquet");
    let mut bytes = std::fs::read(&p).unwrap();
    let n = bytes.len();
    bytes[n - 20..n - 8].fill(0xAB); // inside the footer, magic kept
    std::fs::write(&p, &bytes).unwrap();
    let e = Sources::open(
        &[d],
        &[],
        &OpenOptions {
            verify_sha256: false,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(e, PipelineError::Shard(ShardsError::BadFooter { .. }))
            && e.to_string().contains("footer/shard-00000.parquet"),
        "{e}"
    );

    let d = make("rows");
    let m = d.join(schemas::MANIFEST_FILE);
    let mut manifest: Manifest = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
    manifest.shards[1].rows = 9;
    std::fs::write(&m, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let e = open_err(&[d]);
    assert!(
        matches!(
            e,
            PipelineError::Shard(ShardsError::RowCountMismatch {
                manifest: 9,
                file: 8,
                ..
            })
        ) && e.to_string().contains("rows/shard-00001.parquet"),
        "{e}"
    );

    let e = open_err(&[tmp.path().join("nowhere")]);
    assert!(
        matches!(e, PipelineError::Shard(ShardsError::MissingManifest { .. }))
            && e.to_string().contains("nowhere/manifest.json"),
        "{e}"
    );

    let d = make("version");
    let m = d.join(schemas::MANIFEST_FILE);
    let mut manifest: Manifest = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
    manifest.schema_version = 99;
    std::fs::write(&m, serde_json::to_vec(&manifest).unwrap()).unwrap();
    assert!(matches!(
        open_err(&[d]),
        PipelineError::Shard(ShardsError::SchemaVersion { .. })
    ));
}

#[test]
fn an_undecodable_row_is_skipped_replaced_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    // Row 3's image holds 5 bytes instead of 40 × 32.
    let mimic = folder(&tmp.path().join("mimic"), Source::Mimic, 2, 8, |id, r| {
        if id == 3 {
            r.image.truncate(5);
        }
    });
    let cfg = LoaderConfig {
        batch_size: 4,
        paired_fraction: 1.0,
        shuffle: false,
        epochs: Some(1),
        ..Default::default()
    };
    let open =
        || Sources::open(std::slice::from_ref(&mimic), &[], &OpenOptions::default()).unwrap();
    let mut loader = Loader::new(open(), &cfg, Position::default()).unwrap();
    let b = loader.next().unwrap().unwrap();
    assert_eq!(b.size, 4, "the batch is never short");
    assert_eq!(b.skipped.len(), 1);
    let bad = &b.skipped[0];
    assert_eq!((bad.image_id.as_str(), bad.row), ("mimic-3", 3));
    assert!(
        bad.path.ends_with("shard-00000.parquet") && bad.reason.contains("pixels"),
        "{bad}"
    );
    assert!(
        !b.rows
            .iter()
            .any(|r| r.loc == pipeline::RowLoc { shard: 0, row: 3 })
    );
    assert_eq!(b.rows[3].source, SourceKind::Paired);
    drop(loader);
    // The replacement is deterministic.
    let again = Loader::new(open(), &cfg, Position::default())
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(again.rows, b.rows);
    let stats = {
        let mut l = Loader::new(open(), &cfg, Position::default()).unwrap();
        l.by_ref().for_each(|b| drop(b.unwrap()));
        l.stats()
    };
    assert_eq!((stats.bad_rows, stats.batches), (1, 4));

    let fail = LoaderConfig {
        bad_rows: BadRowPolicy::Fail,
        ..cfg
    };
    let e = Loader::new(open(), &fail, Position::default())
        .unwrap()
        .next()
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(e, PipelineError::BadRow(_)) && e.to_string().contains("mimic-3"),
        "{e}"
    );
    // Evaluation sees every row once: the preset fails rather than replace.
    let eval = LoaderConfig {
        batch_size: 4,
        paired_fraction: 1.0,
        ..LoaderConfig::eval()
    };
    let e = Loader::new(open(), &eval, Position::default())
        .unwrap()
        .next()
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, PipelineError::BadRow(_)), "{e}");
}

#[test]
fn rows_of_other_splits_are_left_out() {
    let tmp = tempfile::tempdir().unwrap();
    let mimic = folder(&tmp.path().join("mimic"), Source::Mimic, 2, 8, |id, r| {
        if id % 4 == 0 {
            r.split = "test".into();
        }
    });
    let s = Sources::open(std::slice::from_ref(&mimic), &[], &OpenOptions::default()).unwrap();
    assert_eq!(s.paired.as_ref().unwrap().len(), 12);
    let cfg = LoaderConfig {
        batch_size: 4,
        paired_fraction: 1.0,
        epochs: Some(1),
        ..Default::default()
    };
    let rows: Vec<_> = Loader::new(s, &cfg, Position::default())
        .unwrap()
        .flat_map(|b| b.unwrap().rows)
        .collect();
    assert_eq!(rows.len(), 12);
    assert!(rows.iter().all(|r| (r.loc.shard * 8 + r.loc.row) % 4 != 0));
    let all = Sources::open(
        &[mimic],
        &[],
        &OpenOptions {
            split: None,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(all.paired.unwrap().len(), 16);
}

#[test]
fn dropping_a_loader_mid_epoch_stops_its_threads() {
    let w = world();
    let mut l = Loader::new(
        sources(&w),
        &LoaderConfig {
            epochs: None,
            prefetch: 1,
            ..cfg()
        },
        Position::default(),
    )
    .unwrap();
    let first = l.next().unwrap().unwrap();
    l.recycle(first);
    let _ = l.next().unwrap().unwrap();
    let stats = l.stats();
    assert_eq!(stats.batches, 2);
    assert!(stats.decode_us_per_sample > 0.0 && stats.consumer_wait_share <= 1.0);
    // A stage that is not stopped and joined would hang the drop: it runs
    // on a watcher thread, and a drop slower than the limit fails the test
    // instead of hanging the suite.
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(l);
        let _ = done.send(());
    });
    assert!(
        finished
            .recv_timeout(std::time::Duration::from_secs(30))
            .is_ok(),
        "dropping the loader did not stop its threads within 30 s"
    );
}

#[test]
fn a_mix_the_sources_cannot_serve_is_a_config_error() {
    let w = world();
    let only_paired =
        Sources::open(std::slice::from_ref(&w.mimic), &[], &OpenOptions::default()).unwrap();
    assert!(matches!(
        Loader::new(only_paired, &cfg(), Position::default()),
        Err(PipelineError::Config(_))
    ));
    assert!(matches!(
        Loader::new(
            sources(&w),
            &LoaderConfig {
                world_size: 4,
                ..cfg()
            },
            Position::default()
        ),
        Err(PipelineError::Config(_))
    ));
    let e = Sources::open(
        std::slice::from_ref(&w.padchest),
        &[],
        &OpenOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, PipelineError::Config(_)), "{e}");
}

#[test]
fn train_mode_with_augmentation_off_equals_eval() {
    let w = world();
    let base = LoaderConfig {
        epochs: Some(1),
        ..cfg()
    };
    let train = run(
        &w,
        &LoaderConfig {
            augment: pipeline::AugmentConfig::none(),
            ..base.clone()
        },
        Position::default(),
    );
    let eval = run(
        &w,
        &LoaderConfig {
            mode: Mode::Eval,
            ..base
        },
        Position::default(),
    );
    assert!(train == eval);
}

/// Row ids of each batch, per epoch.
fn rows_by_epoch(batches: &[Batch]) -> Vec<Vec<pipeline::RowId>> {
    let epochs = batches.iter().map(|b| b.position.epoch).max().unwrap() + 1;
    (0..epochs)
        .map(|e| {
            batches
                .iter()
                .filter(|b| b.position.epoch == e)
                .flat_map(|b| b.rows.iter().copied())
                .collect()
        })
        .collect()
}

#[test]
fn a_kept_partial_batch_shows_every_row_once_per_epoch() {
    let w = world();
    // 60 paired rows in batches of 8: 7 full batches and one of 4.
    for (paired_fraction, rows, last) in [(1.0, 60usize, 4), (0.0, 15, 7)] {
        let keep = LoaderConfig {
            paired_fraction,
            keep_last_partial: true,
            ..cfg()
        };
        let batches = run(&w, &keep, Position::default());
        assert_eq!(batches.len(), 2 * rows.div_ceil(8));
        let sizes: Vec<usize> = batches.iter().map(|b| b.size).collect();
        let per_epoch = rows.div_ceil(8);
        assert_eq!(sizes[per_epoch - 1], last, "{sizes:?}");
        assert!(sizes.iter().enumerate().all(|(i, &s)| {
            let tail = (i + 1) % per_epoch == 0;
            s == if tail { last } else { 8 }
        }));
        for b in &batches {
            assert_eq!(b.images.len(), b.size * pipeline::IMAGE_FLOATS);
            assert_eq!(b.rows.len(), b.size);
            assert_eq!(
                b.paired_rows,
                if paired_fraction == 1.0 { b.size } else { 0 }
            );
        }
        let epochs = rows_by_epoch(&batches);
        for seen in &epochs {
            let distinct: HashSet<_> = seen.iter().collect();
            assert_eq!((seen.len(), distinct.len()), (rows, rows));
        }
        assert_ne!(epochs[0], epochs[1], "the order reshuffles each epoch");

        // Resuming at the short batch gives it, then the next epoch.
        let from = Position {
            epoch: 0,
            step: per_epoch as u64 - 1,
        };
        let resumed = run(&w, &keep, from);
        assert!(resumed[..] == batches[per_epoch - 1..]);
    }

    // Without it the leftover rows wait: 56 of 60 rows, 7 batches an epoch.
    let dropped = run(
        &w,
        &LoaderConfig {
            paired_fraction: 1.0,
            ..cfg()
        },
        Position::default(),
    );
    assert_eq!(dropped.len(), 14);
    assert!(dropped.iter().all(|b| b.size == 8));

    // In stored order, evaluation reads the rows in their shards' order.
    let eval = run(
        &w,
        &LoaderConfig {
            batch_size: 8,
            paired_fraction: 1.0,
            keep_last_partial: true,
            ..LoaderConfig::eval()
        },
        Position::default(),
    );
    let rows: Vec<(u32, u32)> = eval
        .iter()
        .flat_map(|b| b.rows.iter().map(|r| (r.loc.shard, r.loc.row)))
        .collect();
    let stored: Vec<(u32, u32)> = (0..5).flat_map(|s| (0..12).map(move |r| (s, r))).collect();
    assert_eq!(rows, stored);
}

#[test]
fn a_partial_batch_of_a_mix_or_over_ranks_is_a_config_error() {
    let w = world();
    for cfg in [
        LoaderConfig {
            keep_last_partial: true,
            ..cfg()
        },
        LoaderConfig {
            keep_last_partial: true,
            paired_fraction: 1.0,
            world_size: 2,
            ..cfg()
        },
    ] {
        let e = Loader::new(sources(&w), &cfg, Position::default()).unwrap_err();
        assert!(
            matches!(&e, PipelineError::Config(m) if m.contains("partial last batch")),
            "{e}"
        );
    }
}
