//! msgpack encode/decode of Salt loads, and target matching over many ids.

use brine_proto::Value;
use brine_proto::codec;
use brine_proto::loads::JobLoad;
use brine_proto::target::{self, Facts, NoNodegroups};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn publish_load() -> Value {
    let jid = brine_proto::jid::Jid::from_unix_micros(1_795_744_610_747_396);
    let mut j = JobLoad::new("test.ping", vec![], Value::str("*"), "glob", &jid);
    j.serial = Some(1);
    j.to_value()
}

/// A ~2 KB return like a small `state.apply`'s.
pub(crate) fn return_load_2k() -> Value {
    let mut states = Value::map();
    for i in 0..8 {
        states.insert(
            &format!("file_|-/etc/brine/conf{i}_|-/etc/brine/conf{i}_|-managed"),
            Value::map()
                .with("name", format!("/etc/brine/conf{i}"))
                .with("changes", Value::map())
                .with("result", true)
                .with("comment", "File /etc/brine/conf is in the correct state")
                .with("__sls__", "brine.config")
                .with("__run_num__", i as i64)
                .with("start_time", "03:13:33.123456")
                .with("duration", 1.25f64),
        );
    }
    brine_proto::loads::ReturnLoad {
        id: "web01.example.com".into(),
        success: true,
        ret: states,
        retcode: 0,
        jid: "20261127015650747396".into(),
        fun: Value::str("state.apply"),
        fun_args: Value::Array(vec![]),
        user: Some("root".into()),
        out: Some("highstate".into()),
        stamp: Some("2026-11-27T01:56:51.112705".into()),
        extra: vec![],
    }
    .to_value()
}

fn bench(c: &mut Criterion) {
    let publish = publish_load();
    let ret = return_load_2k();
    let publish_bytes = codec::encode_wire(&publish);
    let ret_bytes = codec::encode_wire(&ret);
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode publish", |b| {
        b.iter(|| codec::encode_wire(black_box(&publish)))
    });
    g.bench_function("decode publish", |b| {
        b.iter(|| codec::decode(black_box(&publish_bytes)).unwrap())
    });
    g.bench_function(format!("encode return {} B", ret_bytes.len()), |b| {
        b.iter(|| codec::encode_wire(black_box(&ret)))
    });
    g.bench_function(format!("decode return {} B", ret_bytes.len()), |b| {
        b.iter(|| codec::decode(black_box(&ret_bytes)).unwrap())
    });
    g.finish();

    let ids: Vec<String> = (0..10_000)
        .map(|i| format!("web{i:05}.dc{}.example.com", i % 3))
        .collect();
    let grains = Value::map()
        .with("os", "Debian")
        .with("roles", Value::Array(vec![Value::str("web")]));
    let expr = Value::str(
        "( web0* or E@web1\\d+\\.dc1 ) and G@os:Debian and not L@web00001.dc1.example.com",
    );
    let mut g = c.benchmark_group("target");
    g.throughput(Throughput::Elements(ids.len() as u64));
    g.bench_function("compound over 10k ids", |b| {
        b.iter(|| {
            ids.iter()
                .filter(|id| {
                    let f = Facts {
                        id,
                        grains: &grains,
                        pillar: &Value::Nil,
                    };
                    target::matches(&expr, "compound", ":", &f, &NoNodegroups).unwrap()
                })
                .count()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
