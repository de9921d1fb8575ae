//! Figures: percentiles, where the CPU went, the machine, and the table.

use std::time::{Duration, Instant};

use crate::load::Measured;

/// CPU seconds used so far by this process, by every Postgres process, by Redis and by
/// the whole machine. With client, server and stores on two cores, the split says who
/// the bottleneck is, and the rest says whether anything else distorted the figures.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    at: Instant,
    own: f64,
    postgres: f64,
    redis: f64,
    machine: f64,
}

/// Cores used on average over a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cores {
    pub app: f64,
    pub postgres: f64,
    pub redis: f64,
    /// Everything else: other processes, and the kernel's own threads.
    pub other: f64,
}

/// Busy time of all CPUs from the first line of /proc/stat (user, nice, system, irq,
/// softirq and steal ticks), in seconds.
fn machine_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| ticks.get(i)).sum();
    Some(busy as f64 / 100.0)
}

/// utime + stime of /proc/<pid>/stat, plus cutime + cstime (children it has reaped)
/// with `reaped`, in seconds (the kernel's tick is 100 Hz on every Linux this runs on).
fn cpu_seconds(stat: &str, reaped: bool) -> Option<f64> {
    // The command name may hold spaces; fields after it are positional.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let mut ticks = field(11)? + field(12)?;
    if reaped {
        ticks += field(13)? + field(14)?;
    }
    Some(ticks as f64 / 100.0)
}

impl CpuSample {
    pub fn now() -> Self {
        let own = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| cpu_seconds(&s, false))
            .unwrap_or(0.0);
        // A backend that exits between two samples (a closed connection) moves its time
        // to the postmaster's reaped-children count, so counting both keeps it.
        let (mut postgres, mut redis) = (0.0, 0.0);
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let path = entry.path();
                let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
                    continue;
                };
                let total = match comm.trim() {
                    "postgres" => &mut postgres,
                    "redis-server" => &mut redis,
                    _ => continue,
                };
                *total += std::fs::read_to_string(path.join("stat"))
                    .ok()
                    .and_then(|s| cpu_seconds(&s, true))
                    .unwrap_or(0.0);
            }
        }
        Self {
            at: Instant::now(),
            own,
            postgres,
            redis,
            machine: machine_seconds().unwrap_or(0.0),
        }
    }

    /// Cores used on average since `self`.
    pub fn cores_since(&self) -> Cores {
        self.cores_to(&Self::now())
    }

    /// Cores used on average between `self` and `later`.
    pub fn cores_to(&self, later: &Self) -> Cores {
        let wall = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let app = (later.own - self.own) / wall;
        let postgres = (later.postgres - self.postgres) / wall;
        let redis = (later.redis - self.redis) / wall;
        let machine = (later.machine - self.machine) / wall;
        Cores {
            app,
            postgres,
            redis,
            other: (machine - app - postgres - redis).max(0.0),
        }
    }
}

/// The latency below which a share `q` of `sorted` lies (nearest rank).
pub fn quantile(sorted: &[Duration], q: f64) -> Option<Duration> {
    let n = sorted.len();
    (n > 0).then(|| sorted[((n as f64 * q).ceil() as usize).clamp(1, n) - 1])
}

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: String,
    /// Events a second, or requests a second for a row of reads.
    pub events_per_s: f64,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
    pub max: Option<Duration>,
    pub cpu: Cores,
    pub target: Option<Target>,
    /// Whether the rate is of rows written, and so comparable with the COPY ceiling.
    pub writes: bool,
}

#[derive(Debug, Clone, Copy)]
pub enum Target {
    AtLeastPerSec(f64),
    P99AtMost(Duration),
    /// A rate, with the p99 latency no higher than the bound while at it.
    PerSecWithP99(f64, Duration),
}

impl Row {
    pub fn new(scenario: impl Into<String>, m: &mut Measured, cpu: Cores) -> Self {
        m.latencies.sort_unstable();
        Self {
            scenario: scenario.into(),
            events_per_s: m.events as f64 / m.elapsed.as_secs_f64().max(1e-9),
            p50: quantile(&m.latencies, 0.50),
            p99: quantile(&m.latencies, 0.99),
            max: m.latencies.last().copied(),
            cpu,
            target: None,
            writes: true,
        }
    }

    pub fn with_target(mut self, target: Target) -> Self {
        self.target = Some(target);
        self
    }

    /// Whether the row meets its target; `None` without one.
    pub fn met(&self) -> Option<bool> {
        Some(match self.target? {
            Target::AtLeastPerSec(t) => self.events_per_s >= t,
            Target::P99AtMost(t) => self.p99.is_some_and(|p| p <= t),
            Target::PerSecWithP99(rate, t) => self.events_per_s >= rate && self.p99.is_some_and(|p| p <= t),
        })
    }
}

/// Milliseconds, with a second decimal below 10 ms, where reads from a cache live.
fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "-".into(),
        |d| {
            let ms = d.as_secs_f64() * 1e3;
            if ms < 10.0 {
                format!("{ms:.2}")
            } else {
                format!("{ms:.1}")
            }
        },
    )
}

/// The table; `ceiling` is the COPY rate every throughput is divided by.
pub fn table(rows: &[Row], ceiling: Option<f64>) -> String {
    let mut out = format!(
        "{:<66} {:>10} {:>8} {:>8} {:>8} {:>8} {:>22} {:>24} {}\n",
        "scenario", "rate/s", "p50 ms", "p99 ms", "max ms", "vs COPY", "CPU app|pg|redis|other", "target", "met"
    );
    out.push_str(&"-".repeat(out.len() + 4));
    out.push('\n');
    for r in rows {
        let ratio = match ceiling {
            Some(c) if r.writes => format!("{:.2}", r.events_per_s / c.max(1e-9)),
            _ => "-".into(),
        };
        let target = match r.target {
            None => "-".into(),
            Some(Target::AtLeastPerSec(t)) => format!(">= {:.0}/s", t),
            Some(Target::P99AtMost(t)) => format!("p99 <= {} ms", t.as_millis()),
            Some(Target::PerSecWithP99(rate, t)) => format!(">= {rate:.0}/s, p99 <= {} ms", t.as_millis()),
        };
        let met = match r.met() {
            None => "",
            Some(true) => "yes",
            Some(false) => "NO",
        };
        out.push_str(&format!(
            "{:<66} {:>10.0} {:>8} {:>8} {:>8} {:>8} {:>22} {:>24} {}\n",
            r.scenario,
            r.events_per_s,
            ms(r.p50),
            ms(r.p99),
            ms(r.max),
            ratio,
            format!(
                "{:.2}|{:.2}|{:.2}|{:.2}",
                r.cpu.app, r.cpu.postgres, r.cpu.redis, r.cpu.other
            ),
            target,
            met
        ));
    }
    out
}

/// The CPU model as /proc/cpuinfo names it.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The command line as run, quoted where a shell would need it. Under `cargo run` the
/// process sees only the binary's path, so the cargo command is rebuilt from it.
pub fn command_line() -> String {
    let quote = |a: String| {
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$&|;<>*?".contains(c)) {
            format!("'{}'", a.replace('\'', r"'\''"))
        } else {
            a
        }
    };
    let mut args = std::env::args();
    let binary = args.next().unwrap_or_default();
    let rest: Vec<String> = args.map(quote).collect();
    if std::env::var_os("CARGO").is_none() {
        return std::iter::once(quote(binary)).chain(rest).collect::<Vec<_>>().join(" ");
    }
    let release = if binary.contains("/release/") { " --release" } else { "" };
    let separator = if rest.is_empty() { "" } else { " -- " };
    format!(
        "cargo run{release} -p corvus-bench{separator}{}   (binary {binary})",
        rest.join(" ")
    )
}

/// Processes other than this one, its parent (cargo run) and the services under test
/// that used more than a tenth of a core over `window`: anything listed distorts the
/// figures on a two-core machine.
pub async fn other_busy_processes(window: Duration) -> Vec<String> {
    const EXPECTED: &[&str] = &["postgres", "redis-server"];
    let snapshot = || -> Vec<(u32, String, f64)> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| {
                let pid: u32 = e.file_name().to_str()?.parse().ok()?;
                let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
                let cpu = cpu_seconds(&std::fs::read_to_string(e.path().join("stat")).ok()?, false)?;
                Some((pid, comm.trim().to_owned(), cpu))
            })
            .collect()
    };
    let before = snapshot();
    tokio::time::sleep(window).await;
    let own = std::process::id();
    let parent = std::os::unix::process::parent_id();
    let mut busy = Vec::new();
    for (pid, comm, cpu) in snapshot() {
        if pid == own || pid == parent || EXPECTED.contains(&comm.as_str()) {
            continue;
        }
        let used = before
            .iter()
            .find(|(p, c, _)| *p == pid && *c == comm)
            .map_or(0.0, |(_, _, was)| cpu - was);
        let share = used / window.as_secs_f64();
        if share > 0.1 {
            busy.push(format!("{comm}[{pid}] {:.0}%", share * 100.0));
        }
    }
    busy
}
