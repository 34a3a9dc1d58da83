//! CPU time and memory of processes, from `/proc`.

use anyhow::Context;

/// Clock ticks per second for `/proc/<pid>/stat` (`getconf CLK_TCK`; 100 on Linux).
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(100.0)
}

/// user + system CPU seconds of `pid` (all its threads).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; fields after its closing parenthesis.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: f64 = fields.get(11).context("utime")?.parse()?;
    let stime: f64 = fields.get(12).context("stime")?.parse()?;
    Ok((utime + stime) / clock_ticks())
}

/// The parent pid of `pid`.
fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `pid` and its direct children (nginx: the master and its workers).
pub fn family(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            if let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
                && ppid(child) == Some(pid)
            {
                pids.push(child);
            }
        }
    }
    pids
}

/// CPU seconds of `pid` and its children.
pub fn family_cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for p in family(pid) {
        total += cpu_seconds(p)?;
    }
    Ok(total)
}

/// A `kB` line of `/proc/<pid>/status`, in bytes.
fn status_kb(pid: u32, key: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(key))
        .with_context(|| format!("no {key} in /proc/{pid}/status"))?;
    let kb: u64 = line
        .trim_start_matches(key)
        .trim_start_matches(':')
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kb * 1024)
}

/// VmRSS of `pid` (and its children), bytes.
pub fn rss(pid: u32) -> anyhow::Result<u64> {
    let mut total = 0;
    for p in family(pid) {
        total += status_kb(p, "VmRSS")?;
    }
    Ok(total)
}

/// VmHWM (peak RSS) of `pid` (and its children), bytes.
pub fn hwm(pid: u32) -> anyhow::Result<u64> {
    let mut total = 0;
    for p in family(pid) {
        total += status_kb(p, "VmHWM")?;
    }
    Ok(total)
}

/// Samples the peak VmRSS of some processes until told to stop.
pub struct RssSampler {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<u64>>,
}

impl RssSampler {
    pub fn start(pids: Vec<u32>) -> RssSampler {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut peaks = vec![0u64; pids.len()];
            loop {
                for (peak, pid) in peaks.iter_mut().zip(&pids) {
                    if let Ok(r) = rss(*pid) {
                        *peak = (*peak).max(r);
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
                    _ = stopped.changed() => break,
                }
            }
            peaks
        });
        RssSampler { stop, task }
    }

    /// The peak VmRSS of each process, in the order given.
    pub async fn finish(self) -> anyhow::Result<Vec<u64>> {
        let _ = self.stop.send(true);
        Ok(self.task.await?)
    }
}
