//! Where lb's time goes: a `perf record` of the lb process during a small keep-alive run,
//! summarised for the report (share of samples in the kernel and in each binary, and the top
//! symbols). Runs when Debian's `perf` is installed; the figures are shares of lb's own CPU
//! time, so they answer "what would a fix save" next to the report's CPU per request.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// How many symbols the report lists.
const TOP: usize = 20;

/// True if `perf` can be run here.
pub fn available() -> bool {
    Command::new("perf")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Samples `pid` for `seconds` into `dir/perf.data`, then summarises it.
pub fn record(pid: u32, seconds: u64, dir: &Path) -> Result<Value> {
    let data = dir.join("perf.data");
    let out = Command::new("perf")
        .arg("record")
        .arg("-q")
        .arg("-o")
        .arg(&data)
        .arg("-p")
        .arg(pid.to_string())
        .arg("--")
        .arg("sleep")
        .arg(seconds.to_string())
        .output()
        .context("running perf record")?;
    if !out.status.success() {
        bail!(
            "perf record failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let report = |sort: &str| -> Result<String> {
        let out = Command::new("perf")
            .arg("report")
            .arg("-i")
            .arg(&data)
            .args(["--stdio", "--no-children", "-g", "none", "--sort", sort])
            .output()
            .context("running perf report")?;
        if !out.status.success() {
            bail!(
                "perf report failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let by_dso = parse(&report("dso")?, false);
    let top = parse(&report("dso,symbol")?, true);
    Ok(summary(&by_dso, &top))
}

/// One row of `perf report --stdio`: share in percent, the binary, and (sorted by symbol
/// too) the symbol.
#[derive(Debug, PartialEq)]
pub struct Row {
    pub pct: f64,
    pub dso: String,
    pub symbol: String,
}

/// Reads the rows of a `perf report --stdio -g none` listing, sorted by `dso` or by
/// `dso,symbol`. Lines look like `    11.35%  [kernel.kallsyms]  [k] tcp_ack   -   -`; the
/// trailing dashes are empty IPC columns.
pub fn parse(text: &str, with_symbol: bool) -> Vec<Row> {
    let mut rows = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let Some(pct) = words
            .next()
            .and_then(|w| w.strip_suffix('%'))
            .and_then(|w| w.parse::<f64>().ok())
        else {
            continue;
        };
        let Some(dso) = words.next() else { continue };
        let symbol = if with_symbol {
            // Skip the `[k]` / `[.]` marker; the symbol may contain spaces.
            let rest: Vec<&str> = words.skip(1).collect();
            let mut end = rest.len();
            while end > 0 && rest[end - 1] == "-" {
                end -= 1;
            }
            rest[..end].join(" ")
        } else {
            String::new()
        };
        rows.push(Row {
            pct,
            dso: dso.to_string(),
            symbol,
        });
    }
    rows
}

fn summary(by_dso: &[Row], top: &[Row]) -> Value {
    let kernel: f64 = by_dso
        .iter()
        .filter(|r| r.dso.starts_with("[kernel"))
        .map(|r| r.pct)
        .sum();
    json!({
        "proxy": "lb",
        "scenario": "small_keepalive",
        "kernel_pct": kernel,
        "by_binary": by_dso.iter().map(|r| json!({ "binary": r.dso, "pct": r.pct })).collect::<Vec<_>>(),
        "top": top.iter().take(TOP).map(|r| json!({ "pct": r.pct, "binary": r.dso, "symbol": r.symbol })).collect::<Vec<_>>(),
    })
}

/// The report's section for a profile.
pub fn markdown(p: &Value) -> String {
    let mut s = String::from("\n## Where lb's time goes\n\n`perf record` of the lb process during a small keep-alive run; shares of lb's own CPU time.\n\n");
    let binaries: Vec<String> = p["by_binary"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["pct"].as_f64().unwrap_or(0.0) >= 0.1)
        .map(|b| {
            format!(
                "{} {:.1}%",
                b["binary"].as_str().unwrap_or("?"),
                b["pct"].as_f64().unwrap_or(0.0)
            )
        })
        .collect();
    s.push_str(&format!("By binary: {}.\n\n", binaries.join(", ")));
    s.push_str("| % | binary | symbol |\n|---|---|---|\n");
    for r in p["top"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "| {:.2} | {} | `{}` |\n",
            r["pct"].as_f64().unwrap_or(0.0),
            r["binary"].as_str().unwrap_or(""),
            r["symbol"].as_str().unwrap_or("")
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_perf_report_rows() {
        let dso = "# Samples: 19K\n#\n    79.56%  [kernel.kallsyms]\n    18.55%  lb               \n     1.26%  libc.so.6\n";
        let rows = parse(dso, false);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].dso, "lb");
        let sym = "    11.35%  [kernel.kallsyms]  [k] _raw_spin_unlock_irqrestore      -      -  \n     3.29%  lb  [.] lb::proxy::exchange::proxy::{{closure}}   -   -\n     0.24%  lb  [.] <metrics::A<f64> as metrics::B>::record\n";
        let rows = parse(sym, true);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].symbol, "_raw_spin_unlock_irqrestore");
        assert_eq!(rows[1].symbol, "lb::proxy::exchange::proxy::{{closure}}");
        assert_eq!(rows[2].symbol, "<metrics::A<f64> as metrics::B>::record");
        let s = summary(&parse(dso, false), &rows);
        assert!((s["kernel_pct"].as_f64().unwrap() - 79.56).abs() < 1e-9);
        let md = markdown(&s);
        assert!(md.contains("[kernel.kallsyms] 79.6%"), "{md}");
        assert!(md.contains("| 11.35 | [kernel.kallsyms] | `_raw_spin_unlock_irqrestore` |"));
    }
}
