//! Process CPU and memory from `/proc`, for measurements.

/// CPU time (user + system) of process `pid` in clock ticks (1/100 s), from `/proc/PID/stat`;
/// 0 if it is gone.
pub fn proc_cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |x| x.1)
        .split_whitespace()
        .collect();
    // utime and stime: fields 14 and 15, i.e. the 12th and 13th after the command name.
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// A process and its descendants (from `/proc/PID/task/PID/children`).
pub fn proc_tree(root: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        out.push(pid);
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        todo.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok()),
        );
    }
    out
}

/// Resident set of a process and its descendants (kB).
pub fn rss_tree_kb(root: u32) -> u64 {
    proc_tree(root)
        .into_iter()
        .map(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

/// CPU time (user + system, clock ticks) of a process and its descendants.
pub fn cpu_ticks_tree(root: u32) -> u64 {
    proc_tree(root).into_iter().map(proc_cpu_ticks).sum()
}
