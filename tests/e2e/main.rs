//! End-to-end tests: they run the `synth` and `ingest` binaries on generated
//! and real data, and read the shards back. One test binary, as ripgrep does,
//! to keep link time down. `scripts/test.sh` builds the binaries first.

mod util;

mod covid;
mod damaged_inputs;
mod demo;
mod dicom_corpus;
mod distributed;
mod downstream;
mod faults;
mod finetune;
mod kill_loop;
mod label_sets;
mod mimic;
mod padchest;
mod partition;
mod resume;
mod rsna;
mod run_folders;
mod synth_downstream;
mod text;
mod train;
mod train_reliability;
