//! What every subcommand needs to report: its own CPU time (to show the client is not the bottleneck), percentiles,
//! and one JSON line on stdout. The JSON is written by hand: a handful of flat fields does not justify a dependency.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;

/// A value in the result line.
pub enum Value {
    Number(f64),
    Count(u64),
    Flag(bool),
    Text(String),
}

/// CPU seconds (user + system) used so far by this process, all threads.
pub fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes into the zeroed struct we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// The `fraction` percentile (0.5 = median) of unsorted samples, nearest rank; zero for no samples.
pub fn percentile(samples: &mut [Duration], fraction: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let rank = ((samples.len() as f64 * fraction).ceil() as usize).clamp(1, samples.len());
    samples[rank - 1]
}

/// Prints the result line and flushes it, so a driver reading line by line sees it at once.
pub fn print(fields: &[(&str, Value)]) {
    let mut line = String::from("{");
    for (index, (name, value)) in fields.iter().enumerate() {
        if index > 0 {
            line.push_str(", ");
        }
        let _ = write!(line, "\"{name}\": ");
        match value {
            Value::Number(number) if number.is_finite() => {
                let _ = write!(line, "{number:.6}");
            }
            Value::Number(_) => line.push_str("null"),
            Value::Count(count) => {
                let _ = write!(line, "{count}");
            }
            Value::Flag(flag) => {
                let _ = write!(line, "{flag}");
            }
            Value::Text(text) => push_json_string(&mut line, text),
        }
    }
    line.push('}');
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn push_json_string(line: &mut String, text: &str) {
    line.push('"');
    for character in text.chars() {
        match character {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(line, "\\u{:04x}", c as u32);
            }
            c => line.push(c),
        }
    }
    line.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        assert_eq!(percentile(&mut samples, 0.5), Duration::from_micros(50));
        assert_eq!(percentile(&mut samples, 0.99), Duration::from_micros(99));
        assert_eq!(percentile(&mut [], 0.5), Duration::ZERO);
    }
}
