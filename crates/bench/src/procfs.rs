//! What processes cost, read from /proc: CPU time and memory of the proxies under test, and
//! the CPU the rest of the machine used and the hypervisor took meanwhile (to tell a clean
//! phase from one that shared the machine with someone else's build or VM).

/// USER_HZ, the unit of /proc's CPU times: 100 on every Linux architecture Tarmac
/// builds for.
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU and memory of one process at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessSample {
    /// User plus system time of all its threads so far.
    pub cpu_seconds: f64,
    /// Resident memory now (VmRSS).
    pub rss_bytes: u64,
    /// Highest resident memory since it started (VmHWM).
    pub peak_rss_bytes: u64,
}

/// Reads `/proc/PID/stat` and `/proc/PID/status`; `None` if the process is gone.
pub fn read_process(pid: u32) -> Option<ProcessSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_process(&stat, &status)
}

fn parse_process(stat: &str, status: &str) -> Option<ProcessSample> {
    // Fields after the command name, which is parenthesised and may contain spaces;
    // utime and stime are fields 14 and 15 of the whole line.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // In kB whatever the page size.
    let kilobytes = |key: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some(ProcessSample {
        cpu_seconds: (utime + stime) / TICKS_PER_SECOND,
        rss_bytes: kilobytes("VmRSS:")? * 1024,
        peak_rss_bytes: kilobytes("VmHWM:")? * 1024,
    })
}

/// CPU time of the whole machine so far, all cores.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MachineTimes {
    /// Busy: everything but idle, iowait and steal.
    pub busy_seconds: f64,
    /// Stolen: time this VM's cores were ready to run but the hypervisor ran someone
    /// else's. Zero on bare metal.
    pub steal_seconds: f64,
}

pub fn machine_times() -> Option<MachineTimes> {
    parse_machine_times(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn parse_machine_times(stat: &str) -> Option<MachineTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line.split_whitespace().skip(1).map(|v| v.parse().ok()).collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal guest guest_nice; guest time is
    // already counted in user.
    let busy =
        ticks.iter().take(8).enumerate().filter(|(i, _)| ![3, 4, 7].contains(i)).map(|(_, t)| t).sum::<u64>();
    Some(MachineTimes {
        busy_seconds: busy as f64 / TICKS_PER_SECOND,
        steal_seconds: ticks.get(7).copied().unwrap_or(0) as f64 / TICKS_PER_SECOND,
    })
}

/// Watches the processes under test, and the machine, over one phase of a benchmark.
pub struct PhaseMeter {
    watched: Vec<u32>,
    ours: Vec<u32>,
    watched_start: Vec<ProcessSample>,
    ours_start: f64,
    machine_start: Option<MachineTimes>,
    started: std::time::Instant,
}

/// What a phase cost.
#[derive(Clone, Debug, Default)]
pub struct PhaseCost {
    /// CPU seconds used by each watched process, in the order given.
    pub cpu_seconds: Vec<f64>,
    /// Highest resident memory seen for each watched process during the phase.
    pub peak_rss_bytes: Vec<u64>,
    /// CPU the rest of the machine used, in cores, on average over the phase.
    pub other_cores: Option<f64>,
    /// CPU the hypervisor gave to other machines while this one was ready to run, in
    /// cores, on average over the phase.
    pub stolen_cores: Option<f64>,
}

impl PhaseMeter {
    /// `watched` are the processes whose cost is reported; `ours` every process of the
    /// benchmark (this one included): what the machine used beyond them is someone else's.
    pub fn start(watched: Vec<u32>, ours: Vec<u32>) -> Self {
        let watched_start = watched.iter().map(|&pid| read_process(pid).unwrap_or_default()).collect();
        let ours_start = total_cpu_seconds(&ours);
        Self {
            watched,
            ours,
            watched_start,
            ours_start,
            machine_start: machine_times(),
            started: std::time::Instant::now(),
        }
    }

    /// Current VmRSS of each watched process, sampled during the phase.
    pub fn rss_now(&self) -> Vec<u64> {
        self.watched.iter().map(|&pid| read_process(pid).map_or(0, |s| s.rss_bytes)).collect()
    }

    /// Ends the phase; `sampled_peaks` are the highest [`PhaseMeter::rss_now`] values.
    pub fn finish(self, sampled_peaks: &[u64]) -> PhaseCost {
        let elapsed = self.started.elapsed();
        let end: Vec<ProcessSample> =
            self.watched.iter().map(|&pid| read_process(pid).unwrap_or_default()).collect();
        let cpu_seconds = end
            .iter()
            .zip(&self.watched_start)
            .map(|(e, s)| (e.cpu_seconds - s.cpu_seconds).max(0.0))
            .collect();
        let ours = total_cpu_seconds(&self.ours) - self.ours_start;
        let seconds = elapsed.as_secs_f64();
        let machine = self.machine_start.zip(machine_times());
        let other_cores = machine
            .map(|(before, after)| ((after.busy_seconds - before.busy_seconds - ours) / seconds).max(0.0));
        let stolen_cores =
            machine.map(|(before, after)| ((after.steal_seconds - before.steal_seconds) / seconds).max(0.0));
        let peak_rss_bytes = end
            .iter()
            .enumerate()
            .map(|(i, e)| e.rss_bytes.max(sampled_peaks.get(i).copied().unwrap_or(0)))
            .collect();
        PhaseCost { cpu_seconds, peak_rss_bytes, other_cores, stolen_cores }
    }
}

/// CPU seconds used so far by the processes `pids` together; vanished ones count zero.
pub fn total_cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|&pid| read_process(pid)).map(|s| s.cpu_seconds).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_times_and_memory() {
        let stat =
            "4242 (tarmac proxy) S 1 4242 4242 0 -1 4194560 300 0 0 0 150 50 0 0 20 0 2 0 123 1000 500";
        let status = "Name:\ttarmac-proxy\nVmHWM:\t   12000 kB\nVmRSS:\t    8000 kB\nThreads:\t2\n";
        let sample = parse_process(stat, status).expect("parses");
        assert_eq!(sample.cpu_seconds, 2.0);
        assert_eq!(sample.rss_bytes, 8000 * 1024);
        assert_eq!(sample.peak_rss_bytes, 12000 * 1024);
        assert_eq!(parse_process(stat, "Name: x\n"), None);
    }

    #[test]
    fn machine_busy_time_leaves_out_idle_iowait_and_steal_which_is_kept_apart() {
        let stat = "cpu  100 10 50 9000 40 5 5 300 0 0\ncpu0 50 5 25 4500 20 2 3 150 0 0\n";
        assert_eq!(parse_machine_times(stat), Some(MachineTimes { busy_seconds: 1.7, steal_seconds: 3.0 }));
        assert_eq!(parse_machine_times("cpu  100 10 50 9000 40 5 5\n").map(|t| t.steal_seconds), Some(0.0));
    }

    #[test]
    fn this_process_is_readable() {
        let sample = read_process(std::process::id()).expect("our own /proc entry");
        assert!(sample.rss_bytes > 0 && sample.peak_rss_bytes >= sample.rss_bytes);
        assert!(machine_times().expect("/proc/stat").busy_seconds > 0.0);
    }
}
