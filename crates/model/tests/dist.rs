//! The c10d process group across real processes: this test binary starts
//! copies of itself as the ranks (the ignored `rank_worker` test, told its
//! part through `MMCLIP_DIST_*` variables) on 127.0.0.1 with Gloo (with
//! NCCL on a GPU machine, in an ignored test), and each rank checks the
//! values it receives.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use model::autocast::{Reduced, autocast};
use model::cast::WeightCasts;
use model::dist::{Backend, JoinOptions, ProcessGroup};
use tch::{Device, Kind, Tensor};

const TIMEOUT: Duration = Duration::from_secs(20);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port()
}

/// Starts `world` ranks of `scenario` and waits for them all; returns each
/// rank's exit status and output, and the wall time.
fn launch(scenario: &str, world: usize) -> (Vec<(bool, String)>, Duration) {
    launch_on(scenario, world, "cpu")
}

/// [`launch`] with the ranks' tensors on `device` (`cpu`: Gloo; `cuda`:
/// NCCL, rank r on CUDA device r).
fn launch_on(scenario: &str, world: usize, device: &str) -> (Vec<(bool, String)>, Duration) {
    let port = free_port();
    let exe = std::env::current_exe().expect("the test binary's path");
    let start = Instant::now();
    let children: Vec<Child> = (0..world)
        .map(|rank| {
            Command::new(&exe)
                .args(["rank_worker", "--exact", "--ignored", "--nocapture"])
                .env("MMCLIP_DIST_SCENARIO", scenario)
                .env("MMCLIP_DIST_RANK", rank.to_string())
                .env("MMCLIP_DIST_WORLD", world.to_string())
                .env("MMCLIP_DIST_PORT", port.to_string())
                .env("MMCLIP_DIST_DEVICE", device)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("starting a rank")
        })
        .collect();
    let results = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().expect("waiting for a rank");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            (out.status.success(), text)
        })
        .collect();
    (results, start.elapsed())
}

fn all_succeed(scenario: &str, world: usize) {
    all_succeed_on(scenario, world, "cpu");
}

fn all_succeed_on(scenario: &str, world: usize, device: &str) {
    let (results, _) = launch_on(scenario, world, device);
    for (rank, (ok, text)) in results.iter().enumerate() {
        assert!(ok, "{scenario}, rank {rank} of {world} failed:\n{text}");
        assert!(
            text.contains("rank checks passed"),
            "{scenario}, rank {rank} did not run its checks:\n{text}"
        );
    }
}

#[test]
fn collectives_give_the_expected_values_on_two_ranks() {
    all_succeed("collectives", 2);
}

#[test]
fn collectives_give_the_expected_values_on_three_ranks() {
    all_succeed("collectives", 3);
}

#[test]
fn gradients_are_averaged_during_the_backward_pass_on_two_ranks() {
    all_succeed("reducer", 2);
}

#[test]
fn gradients_are_averaged_during_the_backward_pass_on_three_ranks() {
    all_succeed("reducer", 3);
}

#[test]
fn buckets_are_rebuilt_in_the_order_the_gradients_become_ready_on_two_ranks() {
    all_succeed("rebuild", 2);
}

#[test]
fn buckets_are_rebuilt_in_the_order_the_gradients_become_ready_on_three_ranks() {
    all_succeed("rebuild", 3);
}

#[test]
fn gradients_of_weights_cast_in_groups_are_averaged_on_two_ranks() {
    all_succeed("cast_groups", 2);
}

#[test]
fn weights_cast_in_groups_are_ready_where_their_layers_end_on_two_ranks() {
    all_succeed("cast_order", 2);
}

#[test]
fn a_rank_that_exits_early_makes_the_others_fail_within_the_timeout() {
    let (results, elapsed) = launch("early_exit", 3);
    for (rank, (ok, text)) in results.iter().enumerate() {
        assert!(ok, "rank {rank} failed:\n{text}");
    }
    for (rank, (_, text)) in results.iter().take(2).enumerate() {
        assert!(
            text.contains("all_reduce failed"),
            "rank {rank} saw no error from the dead peer:\n{text}"
        );
    }
    assert!(
        elapsed < TIMEOUT + Duration::from_secs(20),
        "the surviving ranks took {elapsed:?}"
    );
}

/// The device of this rank's tensors, and the group's backend for it.
fn rank_device() -> (Device, Backend) {
    let rank: usize = std::env::var("MMCLIP_DIST_RANK").map_or(0, |r| r.parse().unwrap());
    match std::env::var("MMCLIP_DIST_DEVICE").as_deref() {
        Ok("cuda") => (Device::Cuda(rank), Backend::Nccl { device: rank }),
        _ => (Device::Cpu, Backend::Gloo),
    }
}

fn join() -> ProcessGroup {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is unset"));
    ProcessGroup::join(&JoinOptions {
        master_addr: "127.0.0.1".into(),
        master_port: var("MMCLIP_DIST_PORT").parse().unwrap(),
        rank: var("MMCLIP_DIST_RANK").parse().unwrap(),
        world_size: var("MMCLIP_DIST_WORLD").parse().unwrap(),
        timeout: TIMEOUT,
        backend: rank_device().1,
    })
    .expect("joining the group")
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).reshape([-1]).to_device(Device::Cpu)).unwrap()
}

/// One rank of a scenario; run by `launch`, never on its own.
#[test]
#[ignore = "a rank of the multi-process tests, started by them"]
fn rank_worker() {
    let scenario = std::env::var("MMCLIP_DIST_SCENARIO").expect("started by launch()");
    let mut group = join();
    let (rank, world) = (group.rank(), group.world_size());
    let w = world as f64;
    match scenario.as_str() {
        "collectives" => {
            // Mixed dtypes and sizes with 64-byte buckets: several buckets,
            // a tensor larger than one, a dtype change closing a bucket.
            let r = rank as f64;
            let device = rank_device().0;
            let opts = (Kind::Float, device);
            let tensors = [
                Tensor::full([3], r + 1.0, opts),
                Tensor::arange(40, opts) * (r + 1.0),
                Tensor::full([2, 2], r * 10.0, (Kind::Double, device)),
                Tensor::full([5], -r, opts),
            ];
            group.all_reduce_mean_in_buckets(&tensors, 64).unwrap();
            let mean_plus_one = (w + 1.0) / 2.0;
            assert_eq!(values(&tensors[0]), vec![mean_plus_one; 3]);
            let want: Vec<f64> = (0..40).map(|i| i as f64 * mean_plus_one).collect();
            assert_eq!(values(&tensors[1]), want);
            assert_eq!(values(&tensors[2]), vec![10.0 * (w - 1.0) / 2.0; 4]);
            assert_eq!(values(&tensors[3]), vec![-(w - 1.0) / 2.0; 5]);
            // The default buckets too.
            let one = [Tensor::full([7], r, opts)];
            group.all_reduce_mean(&one).unwrap();
            assert_eq!(values(&one[0]), vec![(w - 1.0) / 2.0; 7]);

            let root = world - 1;
            let b = [
                Tensor::full([4], r, opts),
                Tensor::full([2], 100.0 + r, opts),
            ];
            group.broadcast(&b, root).unwrap();
            assert_eq!(values(&b[0]), vec![root as f64; 4]);
            assert_eq!(values(&b[1]), vec![100.0 + root as f64; 2]);

            let mine = Tensor::full([2, 3], r, opts) + Tensor::arange(6, opts).view([2, 3]);
            let gathered = group.all_gather(&mine).unwrap();
            assert_eq!(gathered.size(), vec![2 * world as i64, 3]);
            let want: Vec<f64> = (0..world)
                .flat_map(|q| (0..6).map(move |i| q as f64 + i as f64))
                .collect();
            assert_eq!(values(&gathered), want);
            group.barrier().unwrap();
        }
        "reducer" => {
            // Five parameters in 24-byte buckets, in reverse order: [4],
            // [3], [2] (larger than a bucket), [1, 0]. Rank r's loss is
            // (r + 1)·Σ(i + 1)·p_i for every parameter but two: `only_first`
            // gets a gradient on rank 0 alone, `never` on no rank, so the
            // last bucket waits for `finish` and the first three start
            // during the backward pass.
            let r = rank as f64;
            let opts = (Kind::Float, rank_device().0);
            let params: Vec<Tensor> = [vec![2], vec![1], vec![9], vec![2, 2], vec![3]]
                .into_iter()
                .map(|shape| Tensor::ones(shape.as_slice(), opts).set_requires_grad(true))
                .collect();
            let (only_first, never) = (1, 0);
            group.watch_gradients(&params, 24).unwrap();
            for step in 0..3 {
                // Two micro-batches, the second armed: the first accumulates.
                for micro in 0..2 {
                    let mut loss = Tensor::zeros([], opts);
                    for (i, p) in params.iter().enumerate() {
                        if i == never || (i == only_first && rank != 0) {
                            continue;
                        }
                        loss += p.sum(Kind::Float) * ((r + 1.0) * (i as f64 + 1.0));
                    }
                    if micro == 1 {
                        group.arm_gradients();
                    }
                    loss.backward();
                }
                let done = group.finish_gradients().unwrap();
                // The backward pass readies 4, 3, 2 (and 1 on rank 0): each
                // starts its bucket at once, before the last gradient but
                // on rank ≠ 0, where 2 is the last; [1, 0] waits for
                // `finish`. Rank 0's order rebuilds the same buckets.
                assert_eq!(
                    (done.early, done.total, done.rebuilt),
                    (if rank == 0 { 3 } else { 2 }, 4, step == 0),
                    "step {step}: buckets started before the last gradient, of all; rebuilt"
                );
                assert_eq!(
                    group.gradient_buckets(),
                    vec![vec![4], vec![3], vec![2], vec![1, 0]]
                );
                // Two micro-batches: 2·(i + 1)·mean(r + 1) = (i + 1)(w + 1).
                for (i, p) in params.iter().enumerate() {
                    let g = p.grad();
                    if i == never {
                        assert!(!g.defined(), "step {step}: no rank had a gradient for {i}");
                        continue;
                    }
                    let want = if i == only_first {
                        2.0 * (i as f64 + 1.0) / w
                    } else {
                        (i as f64 + 1.0) * (w + 1.0)
                    };
                    let got = values(&g);
                    assert!(
                        got.iter().all(|v| (v - want).abs() < 1e-5),
                        "step {step}, parameter {i}: {got:?}, want {want}"
                    );
                }
                for p in &params {
                    let mut g = p.grad();
                    if g.defined() {
                        let _ = g.zero_();
                    }
                }
            }
            // An unarmed backward pass reduces nothing.
            let lone = params[4].sum(Kind::Float) * (r + 1.0);
            let before = values(&params[4].grad());
            lone.backward();
            let after = values(&params[4].grad());
            assert!(
                after
                    .iter()
                    .zip(&before)
                    .all(|(a, b)| (a - b - (r + 1.0)).abs() < 1e-6)
            );
            group.barrier().unwrap();
        }
        "rebuild" => {
            // Eight parameters, one per 16-byte bucket, created in the
            // order opposite to the backward pass's: y = x·p7·p6·…·p0, so
            // p0's gradient is ready first and p7's last. The first step's
            // buckets, in reverse creation order, wait for p7: none starts
            // before the last gradient. Rebuilt in the order seen, the
            // next step starts seven of eight early. From step 2 on p3 is
            // left out, on every rank: the set of gradients changes, the
            // buckets are rebuilt again with p3 last.
            let r = rank as f64;
            let opts = (Kind::Float, rank_device().0);
            let params: Vec<Tensor> = (0..8)
                .map(|_| Tensor::ones([4], opts).set_requires_grad(true))
                .collect();
            group.watch_gradients(&params, 16).unwrap();
            let x = Tensor::ones([4], opts);
            let expected = [(0, true), (7, false), (3, true), (6, false)];
            for (step, &(early, rebuilt)) in expected.iter().enumerate() {
                let skip = if step >= 2 { Some(3) } else { None };
                let y = params
                    .iter()
                    .enumerate()
                    .rev()
                    .filter(|&(i, _)| Some(i) != skip)
                    .fold(x.shallow_clone(), |y, (_, p)| y * p);
                group.arm_gradients();
                (y.sum(Kind::Float) * (r + 1.0)).backward();
                let done = group.finish_gradients().unwrap();
                assert_eq!(
                    (done.early, done.total, done.rebuilt),
                    (early, 8, rebuilt),
                    "step {step}: buckets started before the last gradient, of all; rebuilt"
                );
                let mut order: Vec<Vec<usize>> = (0..8).map(|i| vec![i]).collect();
                if step >= 2 {
                    let three = order.remove(3);
                    order.push(three);
                }
                assert_eq!(group.gradient_buckets(), order, "step {step}");
                for (i, p) in params.iter().enumerate() {
                    let g = p.grad();
                    if Some(i) == skip {
                        assert!(!g.defined(), "step {step}: no rank had a gradient for {i}");
                        continue;
                    }
                    let got = values(&g);
                    assert!(
                        got.iter().all(|v| (v - (w + 1.0) / 2.0).abs() < 1e-6),
                        "step {step}, parameter {i}: {got:?}"
                    );
                }
                // As the trainer's `zero_grad`: the gradients are dropped.
                model::fused::set_grads_to_none(&params).unwrap();
            }
            group.barrier().unwrap();
        }
        "cast_groups" => {
            // Four parameters, one per 16-byte bucket, cast to bfloat16 in
            // two groups ([0, 1], [2, 3]) as a step's weights are
            // (`model::cast`): a group's gradients reach the reducer
            // together, when its backward runs. Rank r's loss is
            // (r + 1)·Σ(i + 1)·Σcast(p_i), without p1 on ranks ≠ 0 and
            // without p3 anywhere: an output left unused gives its weight
            // no gradient, and the reducer sees none. Small integers are
            // exact in bfloat16.
            let r = rank as f64;
            let opts = (Kind::Float, rank_device().0);
            let params: Vec<Tensor> = (0..4)
                .map(|_| Tensor::ones([4], opts).set_requires_grad(true))
                .collect();
            group.watch_gradients(&params, 16).unwrap();
            let (only_first, never) = (1, 3);
            for step in 0..3 {
                let cast: Vec<Tensor> = params
                    .chunks(2)
                    .flat_map(|g| model::cast::cast_group(g, Reduced::BFloat16).unwrap())
                    .collect();
                let mut loss = Tensor::zeros([], opts);
                for (i, c) in cast.iter().enumerate() {
                    if i == never || (i == only_first && rank != 0) {
                        continue;
                    }
                    loss += c.sum(Kind::Float) * ((r + 1.0) * (i as f64 + 1.0));
                }
                group.arm_gradients();
                loss.backward();
                let done = group.finish_gradients().unwrap();
                assert_eq!(done.total, 4, "step {step}: buckets");
                for (i, p) in params.iter().enumerate() {
                    let g = p.grad();
                    if i == never {
                        assert!(!g.defined(), "step {step}: no rank had a gradient for {i}");
                        continue;
                    }
                    assert_eq!(g.kind(), Kind::Float);
                    let want = if i == only_first {
                        (i as f64 + 1.0) / w
                    } else {
                        (i as f64 + 1.0) * (w + 1.0) / 2.0
                    };
                    let got = values(&g);
                    assert!(
                        got.iter().all(|v| (v - want).abs() < 1e-6),
                        "step {step}, parameter {i}: {got:?}, want {want}"
                    );
                }
                model::fused::set_grads_to_none(&params).unwrap();
            }
            group.barrier().unwrap();
        }
        "cast_order" => {
            // y = x·p0·g1·g2·g3·g4 under bfloat16 autocast, g1…g4 asked for
            // through `model::cast::weight`, each its own group, p0 not:
            // the backward pass readies g4, g3, g2, g1, then p0, one bucket
            // each. The first step records g1…g4; from the second on they
            // are cast in groups, each where it is first used, so each
            // group's cast back runs as the backward pass leaves its
            // product and four buckets still start before p0's gradient.
            // (Cast before the forward pass, the groups would run after
            // every product: p0 ready first, and only three early.)
            let r = rank as f64;
            let opts = (Kind::Float, rank_device().0);
            let params: Vec<Tensor> = (0..5)
                .map(|_| Tensor::ones([4], opts).set_requires_grad(true))
                .collect();
            group.watch_gradients(&params, 16).unwrap();
            let casts = WeightCasts::with_group_elements(4);
            let x = Tensor::ones([4], opts);
            for step in 0..3 {
                let loss = autocast(rank_device().0, Some(Reduced::BFloat16), || {
                    let _scope = casts.begin(rank_device().0);
                    let y = params[1..]
                        .iter()
                        .fold(&x * &params[0], |y, g| y * model::cast::weight(g));
                    y.sum(Kind::Float) * (r + 1.0)
                });
                group.arm_gradients();
                loss.backward();
                let done = group.finish_gradients().unwrap();
                assert_eq!(
                    (done.early, done.total),
                    (4, 5),
                    "step {step}: buckets started before the last gradient, of all"
                );
                assert_eq!(
                    group.gradient_buckets(),
                    vec![vec![4], vec![3], vec![2], vec![1], vec![0]],
                    "step {step}"
                );
                assert_eq!(casts.groups(), vec![1; 4], "step {step}");
                for (i, p) in params.iter().enumerate() {
                    let got = values(&p.grad());
                    assert!(
                        got.iter().all(|v| (v - (w + 1.0) / 2.0).abs() < 1e-6),
                        "step {step}, parameter {i}: {got:?}"
                    );
                }
                model::fused::set_grads_to_none(&params).unwrap();
            }
            group.barrier().unwrap();
        }
        "early_exit" => {
            if rank == world - 1 {
                // Leaves without a word: no collective will ever come.
                std::process::exit(0);
            }
            let start = Instant::now();
            let t = [Tensor::ones([1000], (Kind::Float, Device::Cpu))];
            let err = group
                .all_reduce_mean(&t)
                .expect_err("an all-reduce with a dead peer must fail");
            println!("error after {:?}: {err}", start.elapsed());
            assert!(start.elapsed() < TIMEOUT + Duration::from_secs(5));
            // The process ends here without leaving the group politely: a
            // group whose peer died may block in its destructor.
            println!("rank checks passed");
            std::process::exit(0);
        }
        other => panic!("unknown scenario {other}"),
    }
    println!("rank checks passed");
}

/// The scenarios above with NCCL on CUDA tensors, one process per GPU, on
/// every GPU of the machine (one is enough: the reducer's hooks and
/// buckets, and NCCL's collectives on CUDA memory). Run on a GPU machine:
/// `dist --ignored nccl_`.
#[test]
#[ignore = "needs CUDA devices; run on a GPU machine"]
fn nccl_collectives_and_reducer_on_every_gpu() {
    let gpus = tch::Cuda::device_count() as usize;
    assert!(gpus >= 1, "no CUDA device");
    for scenario in [
        "collectives",
        "reducer",
        "rebuild",
        "cast_groups",
        "cast_order",
    ] {
        all_succeed_on(scenario, gpus, "cuda");
    }
}

/// The NCCL group is compiled in (the wheel's CUDA headers are complete
/// with `python/requirements.txt`'s `nvidia-cuda-crt` and
/// `nvidia-cuda-cccl`), and without a CUDA device joining one is an error
/// that says why, not a crash or a hang.
#[test]
fn an_nccl_group_is_built_and_refused_without_a_gpu() {
    assert!(
        model::dist::nccl_available(),
        "this build has no NCCL process group: model's build.rs found no nccl.h or CUDA headers"
    );
    if tch::Cuda::is_available() {
        return; // the refusal is what a machine without a GPU checks
    }
    let started = std::time::Instant::now();
    let err = ProcessGroup::join(&JoinOptions {
        master_addr: "127.0.0.1".into(),
        master_port: free_port(),
        rank: 0,
        world_size: 1,
        timeout: Duration::from_secs(20),
        backend: model::dist::Backend::Nccl { device: 0 },
    })
    .expect_err("an NCCL group joined on a machine without a CUDA device");
    let msg = err.to_string();
    assert!(
        msg.contains("NCCL needs CUDA device 0") && msg.contains("has 0 CUDA device(s)"),
        "the error does not say which device is missing: {msg}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the refusal waited for the timeout"
    );
}
