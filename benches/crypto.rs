//! Crypticle seal/open of a ~2 KB return, and the RSA operations that bound an auth storm.

use std::hint::black_box;

use brine_proto::codec;
use brine_proto::crypt::{CountingEntropy, Crypticle, EncAlgo, PrivateKey, SigAlgo};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

#[path = "codec.rs"]
#[allow(dead_code)]
mod codec_bench;

fn bench(c: &mut Criterion) {
    let mut rng = CountingEntropy::default();
    let key = Crypticle::generate(&mut rng);
    let ret = codec_bench::return_load_2k();
    let size = codec::encode_wire(&ret).len();
    let blob = key.dumps(&ret, Some("0123456789abcdef0123456789abcdef"), &mut rng);
    let mut g = c.benchmark_group("crypticle");
    g.throughput(Throughput::Elements(1));
    g.bench_function(format!("seal return {size} B"), |b| {
        b.iter(|| {
            key.dumps(
                black_box(&ret),
                Some("0123456789abcdef0123456789abcdef"),
                &mut rng,
            )
        })
    });
    g.bench_function(format!("open return {size} B"), |b| {
        b.iter(|| {
            key.loads(black_box(&blob), Some("0123456789abcdef0123456789abcdef"))
                .unwrap()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("rsa");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    for bits in [2048u32, 4096] {
        let k = PrivateKey::generate(bits).unwrap();
        let public = k.public_key();
        let ct = public
            .encrypt_oaep(
                b"a 76-char crypticle key string ...",
                EncAlgo::OaepSha1,
                &mut rng,
            )
            .unwrap();
        let digest = brine_proto::crypt::sha256_hex(b"aes key string");
        g.bench_function(format!("{bits} OAEP-SHA1 private decrypt"), |b| {
            b.iter(|| k.decrypt_oaep(black_box(&ct), EncAlgo::OaepSha1).unwrap())
        });
        g.bench_function(format!("{bits} X9.31 sign (auth sig)"), |b| {
            b.iter(|| k.sign_x931(black_box(digest.as_bytes())).unwrap())
        });
        g.bench_function(format!("{bits} PKCS1v15-SHA1 sign"), |b| {
            b.iter(|| {
                k.sign(black_box(b"signed auth reply bytes"), SigAlgo::Pkcs1v15Sha1)
                    .unwrap()
            })
        });
        g.bench_function(format!("{bits} OAEP-SHA1 public encrypt"), |b| {
            b.iter(|| {
                public
                    .encrypt_oaep(
                        black_box(b"session key string"),
                        EncAlgo::OaepSha1,
                        &mut rng,
                    )
                    .unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
