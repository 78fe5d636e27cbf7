//! What the swarm measures: the auth ceiling, the masters' CPU and memory, loopback counters,
//! the CLI's output, percentiles.

#[allow(clippy::wildcard_imports)]
use super::*;

/// One core's ceiling for the master's side of `_auth`, measured for ~2 s each.
pub(crate) fn ceiling() -> Json {
    use brine_proto::auth::{AuthPolicy, KeyState, MasterIdentity, decide_auth};
    use brine_proto::crypt::{Crypticle, PrivateKey, SigAlgo};
    use brine_proto::loads::AuthRequest;
    let master = MasterIdentity::new(PrivateKey::generate(2048).expect("RSA key"), 4505);
    let keys = cached_keys(64);
    let rate = |f: &mut dyn FnMut(usize)| {
        let t = Instant::now();
        let mut n = 0;
        while t.elapsed() < Duration::from_secs(2) {
            f(n);
            n += 1;
        }
        n as f64 / t.elapsed().as_secs_f64()
    };
    let msg = vec![7u8; 1024];
    let private = rate(&mut |_| {
        master.key.sign(&msg, SigAlgo::Pkcs1v15Sha1).expect("sign");
    });
    let aes = Crypticle::generate(&mut Rng);
    let session = Crypticle::generate(&mut Rng);
    let reqs: Vec<AuthRequest> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| AuthRequest {
            id: format!("ceiling-{i}"),
            nonce: format!("{i:032x}"),
            enc_algo: "OAEP-SHA1".into(),
            sig_algo: "PKCS1v15-SHA1".into(),
            autosign_grains: None,
            token: None,
            pub_key: k.public_key().to_clean_pem(),
        })
        .collect();
    let policy = AuthPolicy {
        auto_sign: true,
        ..AuthPolicy::default()
    };
    let auths = rate(&mut |i| {
        let r = &reqs[i % reqs.len()];
        decide_auth(
            r,
            &KeyState::Unknown,
            policy,
            &master,
            &aes,
            &session,
            &mut Rng,
        )
        .expect("decide_auth");
    });
    json!({ "rsa2048_private_ops_per_sec": private, "first_contact_auths_per_sec": auths })
}

// ---- the worker process -------------------------------------------------------------------

/// Latencies (ms) of acknowledged returns, per jid, since the last report.
pub(crate) type Latencies = Arc<Mutex<HashMap<String, Vec<u32>>>>;

/// The master processes' CPU (ticks), RSS and PSS (kB), each with its children.
pub(crate) fn sample(pids: &[u32]) -> (u64, u64, u64) {
    let pss = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("Pss:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    (
        pids.iter().map(|p| cpu_ticks_tree(*p)).sum(),
        pids.iter().map(|p| rss_tree_kb(*p)).sum(),
        pids.iter().flat_map(|p| proc_tree(*p)).map(pss).sum(),
    )
}

/// Machine-wide counters that show a storm losing packets on loopback: packets dropped because
/// a CPU's input backlog (`net.core.netdev_max_backlog`) was full, connections dropped from a
/// full accept queue (the listen backlog), TCP segments retransmitted. Each costs a retry
/// (200 ms RTO, 1 s for a SYN) and CPU on both sides.
pub(crate) fn net_counters() -> [u64; 3] {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let drops = read("/proc/net/softnet_stat")
        .lines()
        .filter_map(|l| u64::from_str_radix(l.split_whitespace().nth(1)?, 16).ok())
        .sum();
    // `/proc/net/netstat` and `/proc/net/snmp`: a header line of names, then one of values.
    let field = |text: &str, prefix: &str, name: &str| -> u64 {
        let mut rows = text.lines().filter(|l| l.starts_with(prefix));
        let (Some(names), Some(values)) = (rows.next(), rows.next()) else {
            return 0;
        };
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)
    };
    [
        drops,
        field(&read("/proc/net/netstat"), "TcpExt:", "ListenOverflows"),
        field(&read("/proc/net/snmp"), "Tcp:", "RetransSegs"),
    ]
}

/// How many minions the publish command's output shows as having returned: the keys of the
/// JSON documents it printed (`--out json`, one document or one per minion), minus Salt's
/// "Minion did not return" placeholders; 0 for any other output.
pub(crate) fn cli_returned(stdout: &[u8]) -> usize {
    let mut ids = std::collections::HashSet::new();
    let mut pos = 0;
    while pos < stdout.len() {
        // Each document starts at a line opening with `{`; other lines (warnings) are skipped.
        if stdout[pos] == b'{' {
            let mut docs = serde_json::Deserializer::from_slice(&stdout[pos..]).into_iter::<Json>();
            if let Some(Ok(Json::Object(m))) = docs.next() {
                for (id, v) in m {
                    let missing = v
                        .as_str()
                        .is_some_and(|s| s.starts_with("Minion did not return"));
                    if !missing {
                        ids.insert(id);
                    }
                }
                pos += docs.byte_offset();
                continue;
            }
        }
        pos += stdout[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(stdout.len() - pos, |i| i + 1);
    }
    ids.len()
}

/// The start of a text, for the JSON summary.
pub(crate) fn head(b: &[u8], n: usize) -> String {
    String::from_utf8_lossy(&b[..b.len().min(n)]).into_owned()
}

pub(crate) fn pct(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
