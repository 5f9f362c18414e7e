//! The HTML reports: `report.html` per scenario and `index.html` per run.
//! Each page is one self-contained file: inline CSS and SVG, no script, no
//! font or image fetched (its Content-Security-Policy forbids every fetch,
//! so a slip shows as a console error in the browser test). It reads with
//! JavaScript off; the log-scale switch is a checkbox and CSS. Light and
//! dark follow `prefers-color-scheme`.
//!
//! Pages are drawn from a [`Report`] alone, so report.json re-renders them.

use std::fmt::Write as _;

use super::Report;
use super::svg::{Frame, Plot, Scale, escape, sparkline};
use crate::checks::{CheckResult, SloUnit, Verdict};

/// The geometry every plot of a page shares, so their time axes line up.
const WIDTH_PX: f64 = 1000.0;
const LEFT_PX: f64 = 190.0;
const RIGHT_PX: f64 = 16.0;
const TOP_PX: f64 = 32.0;
const BOTTOM_PX: f64 = 24.0;
/// The height of one row of a strip (probes, SLO windows).
const ROW_PX: f64 = 16.0;
/// How long a health sample stands for when it is the last one.
const PROBE_PERIOD_S: f64 = 0.25;

const STYLE: &str = r#"
:root { color-scheme: light dark; --bg: #ffffff; --fg: #1f2328; --muted: #59636e; --line: #d1d9e0;
  --grid: #eef1f4; --fault: rgba(217, 119, 6, 0.16); --fault-edge: #b45309; --p50: #1f6feb;
  --p99: #8250df; --max: #0a7ea4; --err: #cf222e; --ok: #1a7f37; --warn: #9a6700; --code: #f6f8fa; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #0d1117; --fg: #e6edf3; --muted: #9198a1; --line: #3d444d; --grid: #1c2128;
    --fault: rgba(245, 158, 11, 0.20); --fault-edge: #f0b72f; --p50: #4493f8; --p99: #ab7df8;
    --max: #39c5cf; --err: #f85149; --ok: #3fb950; --warn: #d29922; --code: #161b22; }
}
body { background: var(--bg); color: var(--fg); font: 14px/1.45 system-ui, sans-serif; margin: 24px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
a { color: var(--p50); } code, pre { background: var(--code); font: 12px ui-monospace, monospace; }
code { padding: 1px 4px; border-radius: 4px; } pre { padding: 8px; overflow-x: auto; white-space: pre-wrap; }
table { border-collapse: collapse; margin: 8px 0; } th, td { border-bottom: 1px solid var(--line);
  padding: 4px 8px; text-align: left; vertical-align: top; } th { color: var(--muted); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.meta { color: var(--muted); } .meta dt { float: left; clear: left; width: 9em; } .meta dd { margin: 0 0 2px 9em; color: var(--fg); }
.verdict { font-weight: 700; padding: 1px 8px; border-radius: 10px; color: #fff; }
.verdict.pass { background: var(--ok); } .verdict.fail { background: var(--err); } .verdict.vacuous { background: var(--warn); }
tr.fail td, tr.vacuous td { background: color-mix(in srgb, var(--err) 8%, transparent); }
svg.plot { display: block; max-width: 100%; height: auto; overflow: visible; }
svg text { fill: var(--muted); font: 11px system-ui, sans-serif; }
svg .tick.y { text-anchor: end; } svg .tick.x { text-anchor: middle; }
svg .grid { stroke: var(--grid); } svg .axis, svg .tick-mark { stroke: var(--line); }
svg .band.fault rect { fill: var(--fault); stroke: var(--fault-edge); stroke-dasharray: 3 2; stroke-width: 0.8; }
svg .band.fault.not-applied rect { fill: none; }
svg .band-label { fill: var(--fault-edge); font-weight: 600; }
svg .series { fill: none; stroke-width: 1.6; } svg .series.p50 { stroke: var(--p50); }
svg .series.p99 { stroke: var(--p99); } svg .series.max { stroke: var(--max); stroke-dasharray: 4 2; }
svg .series.ok { stroke: var(--ok); } svg .series.errors, svg .series.error-rate { stroke: var(--err); }
svg .marker.error { fill: var(--err); }
svg .threshold { stroke-width: 2; stroke-dasharray: 6 3; } svg .threshold.pass { stroke: var(--ok); }
svg .threshold.fail { stroke: var(--err); stroke-width: 3; }
svg .probe-ok { fill: var(--ok); } svg .probe-bad { fill: var(--err); } svg .probe-none { fill: var(--muted); }
svg .slo-pass { fill: color-mix(in srgb, var(--ok) 55%, transparent); } svg .slo-fail { fill: var(--err); }
svg .slo-empty { fill: none; stroke: var(--muted); stroke-dasharray: 2 2; }
svg.sparkline path { fill: none; stroke: var(--p99); stroke-width: 1.2; } svg.sparkline.fail path { stroke: var(--err); }
.legend span { margin-right: 14px; white-space: nowrap; } .legend i { display: inline-block; width: 18px; height: 3px;
  vertical-align: middle; margin-right: 4px; }
.scale-switch { margin: 4px 0; } #log-scale:checked ~ .latency .linear { display: none; }
#log-scale:not(:checked) ~ .latency .log { display: none; }
details summary { cursor: pointer; color: var(--muted); }
"#;

/// The page around `body`, titled `title`.
fn page(title: &str, body: &str) -> String {
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<meta name="color-scheme" content="light dark">
<title>{}</title>
<style>{STYLE}</style>
</head>
<body>
{body}
</body>
</html>
"#,
        escape(title)
    )
}

fn verdict_badge(verdict: Verdict) -> String {
    format!(r#"<span class="verdict {0}">{0}</span>"#, verdict.as_str())
}

fn run_verdict(report: &Report) -> Verdict {
    if report.passed {
        Verdict::Pass
    } else {
        Verdict::Fail
    }
}

/// The end of the time axis: the load's last second, or later if a fault,
/// probe or SLO window reaches further.
fn end_seconds(report: &Report) -> f64 {
    let mut end = report.load.windows.len() as f64;
    for fault in &report.faults {
        for ms in [
            Some(fault.scheduled_ms),
            fault.applied_ms,
            fault.reverted_ms,
        ]
        .into_iter()
        .flatten()
        {
            end = end.max(ms / 1000.0);
        }
    }
    if let Some(last) = report.health.last() {
        end = end.max(last.at_ms / 1000.0 + PROBE_PERIOD_S);
    }
    for check in &report.checks {
        for span in check.slo.iter().flat_map(|p| &p.spans) {
            end = end.max(span.to_ms / 1000.0);
        }
    }
    end.ceil().max(1.0)
}

fn frame(report: &Report) -> Frame {
    Frame {
        width: WIDTH_PX,
        left: LEFT_PX,
        right: RIGHT_PX,
        top: TOP_PX,
        bottom: BOTTOM_PX,
        end_s: end_seconds(report),
    }
}

/// Shades every fault's window on `plot`: from when it was applied to when
/// it was reverted (to the end of the axis if it never was); a fault never
/// applied is outlined at its scheduled time.
fn shade_faults(plot: &mut Plot, report: &Report, end_s: f64, labelled: bool) {
    for (row, fault) in report.faults.iter().enumerate() {
        let (from_s, to_s, class) = match fault.applied_ms {
            Some(applied) => (
                applied / 1000.0,
                fault.reverted_ms.map_or(end_s, |r| r / 1000.0),
                "fault",
            ),
            None => (
                fault.scheduled_ms / 1000.0,
                fault.scheduled_ms / 1000.0,
                "fault not-applied",
            ),
        };
        let text = format!("{} ({})", fault.name, fault.kind);
        plot.band(
            from_s,
            to_s,
            class,
            labelled.then_some(text.as_str()),
            row,
            &[("fault", &fault.name), ("kind", &fault.kind)],
        );
    }
}

/// Draws the thresholds of the SLOs measured in `unit` (times `factor`) on
/// `plot`, green where the window held and red where it failed.
fn thresholds(plot: &mut Plot, report: &Report, unit: SloUnit, factor: f64) {
    for check in &report.checks {
        let Some(slo) = check.slo.as_ref().filter(|p| p.unit == unit) else {
            continue;
        };
        // Failed positions last, so that they draw over passing ones.
        let mut spans: Vec<_> = slo.spans.iter().collect();
        spans.sort_by_key(|s| !s.passed);
        for span in spans {
            let tip = format!(
                "{} {} {}: {}",
                check.name,
                check.window.as_deref().unwrap_or("all"),
                check.expected,
                if span.passed { "held" } else { "failed" }
            );
            plot.threshold(
                span.from_ms / 1000.0,
                span.to_ms / 1000.0,
                slo.threshold * factor,
                if span.passed { "pass" } else { "fail" },
                &tip,
            );
        }
    }
}

/// The thresholds of the SLOs in `unit`, as values to fit the scale to.
fn threshold_values(report: &Report, unit: SloUnit, factor: f64) -> Vec<f64> {
    report
        .checks
        .iter()
        .filter_map(|c| c.slo.as_ref())
        .filter(|p| p.unit == unit)
        .map(|p| p.threshold * factor)
        .collect()
}

/// How much higher than the run's p99 the top of the latency plot may be
/// before the linear scale flattens the data into its bottom tenth.
const LOG_SCALE_RATIO: f64 = 10.0;

/// Whether the page opens on the log scale: when a threshold or an outlier
/// (a 5 s SLO over 5 ms answers, a timeout among fast errors) would leave
/// the linear plot's series flat along the axis.
fn log_by_default(report: &Report) -> bool {
    let top = threshold_values(report, SloUnit::LatencyMs, 1.0)
        .into_iter()
        .chain([report.load.overall.max_ms])
        .fold(0.0_f64, f64::max);
    top > LOG_SCALE_RATIO * report.load.overall.p99_ms.max(1.0)
}

/// Latency per second: p50, p99 and max of the successes, the slowest error
/// of each second as a red marker, fault windows and latency SLOs.
fn latency_plot(report: &Report, log: bool) -> String {
    let f = frame(report);
    let windows = &report.load.windows;
    let at = |second: u32| f64::from(second) + 0.5;
    let series = |pick: fn(&crate::load::LatencySummary) -> f64| -> Vec<(f64, Option<f64>)> {
        windows
            .iter()
            .map(|w| {
                (
                    at(w.second),
                    (w.ok_latency.count > 0).then(|| pick(&w.ok_latency)),
                )
            })
            .collect()
    };
    let p50 = series(|l| l.p50_ms);
    let p99 = series(|l| l.p99_ms);
    let max = series(|l| l.max_ms);
    let errors: Vec<(f64, f64, String)> = windows
        .iter()
        .filter(|w| w.error_latency.count > 0)
        .map(|w| {
            (
                at(w.second),
                w.error_latency.max_ms,
                format!(
                    "second {}: {} errors, the slowest after {:.1} ms",
                    w.second, w.error_latency.count, w.error_latency.max_ms
                ),
            )
        })
        .collect();
    let values = max
        .iter()
        .filter_map(|p| p.1)
        .chain(p50.iter().filter_map(|p| p.1))
        .chain(errors.iter().map(|e| e.1))
        .chain(threshold_values(report, SloUnit::LatencyMs, 1.0));
    let scale = if log {
        Scale::log(values)
    } else {
        Scale::linear(values)
    };
    let class = if log {
        "latency-plot log"
    } else {
        "latency-plot linear"
    };
    let mut plot = Plot::new(f, 260.0, Some(scale), class);
    plot.axes("ms");
    shade_faults(&mut plot, report, f.end_s, true);
    plot.series(&max, "max", "max of successes");
    plot.series(&p99, "p99", "p99 of successes");
    plot.series(&p50, "p50", "p50 of successes");
    plot.markers(&errors, "error");
    thresholds(&mut plot, report, SloUnit::LatencyMs, 1.0);
    plot.finish(&format!(
        "latency per second ({} scale)",
        if log { "log" } else { "linear" }
    ))
}

/// Successes and errors per second, with throughput SLOs.
fn throughput_plot(report: &Report) -> String {
    let f = frame(report);
    let at = |second: u32| f64::from(second) + 0.5;
    let ok: Vec<(f64, Option<f64>)> = report
        .load
        .windows
        .iter()
        .map(|w| (at(w.second), Some(w.ok as f64)))
        .collect();
    let errors: Vec<(f64, Option<f64>)> = report
        .load
        .windows
        .iter()
        .map(|w| (at(w.second), Some(w.errors as f64)))
        .collect();
    let scale = Scale::linear(
        ok.iter()
            .chain(&errors)
            .filter_map(|p| p.1)
            .chain(threshold_values(report, SloUnit::ThroughputRps, 1.0)),
    );
    let mut plot = Plot::new(f, 190.0, Some(scale), "throughput-plot");
    plot.axes("req/s");
    shade_faults(&mut plot, report, f.end_s, false);
    plot.series(&ok, "ok", "2xx per second");
    plot.series(&errors, "errors", "errors per second");
    thresholds(&mut plot, report, SloUnit::ThroughputRps, 1.0);
    plot.finish("successes and errors per second")
}

/// The error rate per second, in percent, with error-rate SLOs.
fn error_rate_plot(report: &Report) -> String {
    let f = frame(report);
    let rate: Vec<(f64, Option<f64>)> = report
        .load
        .windows
        .iter()
        .map(|w| {
            (
                f64::from(w.second) + 0.5,
                (w.sent > 0).then(|| 100.0 * w.errors as f64 / w.sent as f64),
            )
        })
        .collect();
    let scale = Scale::linear(
        rate.iter()
            .filter_map(|p| p.1)
            .chain(threshold_values(report, SloUnit::ErrorRate, 100.0))
            .chain([1.0]),
    );
    let mut plot = Plot::new(f, 170.0, Some(scale), "error-rate-plot");
    plot.axes("%");
    shade_faults(&mut plot, report, f.end_s, false);
    plot.series(&rate, "error-rate", "error rate per second");
    thresholds(&mut plot, report, SloUnit::ErrorRate, 100.0);
    plot.finish("error rate per second")
}

/// The liveness and readiness probes as two rows of coloured bars.
fn probes_strip(report: &Report) -> String {
    let f = frame(report);
    let rows = 2;
    let height = TOP_PX + BOTTOM_PX + ROW_PX * rows as f64;
    let mut plot = Plot::new(f, height, None, "probes-strip");
    plot.axes("");
    shade_faults(&mut plot, report, f.end_s, false);
    plot.row_label(0, rows, "live");
    plot.row_label(1, rows, "ready");
    let samples = &report.health;
    for (i, sample) in samples.iter().enumerate() {
        let from_s = sample.at_ms / 1000.0;
        let to_s = samples
            .get(i + 1)
            .map_or(from_s + PROBE_PERIOD_S, |next| next.at_ms / 1000.0);
        for (row, (name, status)) in [("live", sample.live), ("ready", sample.ready)]
            .into_iter()
            .enumerate()
        {
            let (class, text) = match status {
                Some(s) if (200..300).contains(&s) => ("probe-ok", s.to_string()),
                Some(s) => ("probe-bad", s.to_string()),
                None => ("probe-none", "no answer".to_owned()),
            };
            let tip = format!("{name} at {from_s:.2}s: {text}");
            plot.bar(from_s, to_s, row, rows, class, &tip);
        }
    }
    plot.finish("liveness and readiness probes")
}

/// Every SLO's window as a row: green where it held, red where it failed,
/// outlined where it had no traffic to judge.
fn slo_strip(report: &Report) -> Option<String> {
    let slos: Vec<&CheckResult> = report.checks.iter().filter(|c| c.slo.is_some()).collect();
    if slos.is_empty() {
        return None;
    }
    let f = frame(report);
    let rows = slos.len();
    let height = TOP_PX + BOTTOM_PX + ROW_PX * rows as f64;
    let mut plot = Plot::new(f, height, None, "slo-strip");
    plot.axes("");
    shade_faults(&mut plot, report, f.end_s, false);
    for (row, check) in slos.iter().enumerate() {
        let window = check.window.as_deref().unwrap_or("all");
        plot.row_label(row, rows, &format!("{} {window}", check.name));
        let Some(slo) = &check.slo else { continue };
        let mut spans: Vec<_> = slo.spans.iter().collect();
        spans.sort_by_key(|s| !s.passed);
        for span in spans {
            let class = match (span.passed, span.value) {
                (false, _) => "slo-fail",
                (true, Some(_)) => "slo-pass",
                (true, None) => "slo-empty",
            };
            let value = span
                .value
                .map_or_else(|| "no traffic".to_owned(), |v| format!("{v:.4}"));
            let tip = format!(
                "{} {window} {} over [{:.1}s, {:.1}s): {value}",
                check.name,
                check.expected,
                span.from_ms / 1000.0,
                span.to_ms / 1000.0
            );
            plot.bar(
                span.from_ms / 1000.0,
                span.to_ms / 1000.0,
                row,
                rows,
                class,
                &tip,
            );
        }
    }
    Some(plot.finish("SLO windows"))
}

fn checks_table(report: &Report) -> String {
    let mut out = String::from(
        "<table class=\"checks\"><thead><tr><th>verdict</th><th>kind</th><th>check</th><th>window</th><th>expected</th><th>observed</th><th>exercised</th><th>evidence</th></tr></thead><tbody>\n",
    );
    // Failures first: they are what a reader opens the page for.
    let mut checks: Vec<&CheckResult> = report.checks.iter().collect();
    checks.sort_by_key(|c| c.passed());
    for c in checks {
        let evidence = if c.evidence.is_empty() {
            String::new()
        } else {
            format!(
                "<details{}><summary>{} lines</summary><pre>{}</pre></details>",
                if c.passed() { "" } else { " open" },
                c.evidence.len(),
                escape(&c.evidence.join("\n"))
            )
        };
        let _ = writeln!(
            out,
            r#"<tr class="check {}"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class="num">{}</td><td>{evidence}</td></tr>"#,
            c.verdict.as_str(),
            verdict_badge(c.verdict),
            c.kind.as_str(),
            escape(&c.name),
            escape(c.window.as_deref().unwrap_or("-")),
            escape(&c.expected),
            escape(&c.observed),
            c.exercised,
        );
    }
    out.push_str("</tbody></table>\n");
    out
}

fn ms_cell(ms: Option<f64>) -> String {
    ms.map_or_else(|| "-".to_owned(), |ms| format!("{:.2}s", ms / 1000.0))
}

fn faults_table(report: &Report) -> String {
    if report.faults.is_empty() {
        return "<p class=\"meta\">no faults</p>\n".to_owned();
    }
    let mut out = String::from(
        "<table class=\"faults\"><thead><tr><th>fault</th><th>kind</th><th>class</th><th>target</th><th>scheduled</th><th>applied</th><th>reverted</th><th>error</th></tr></thead><tbody>\n",
    );
    for fault in &report.faults {
        let _ = writeln!(
            out,
            r#"<tr class="fault"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td>{}</td></tr>"#,
            escape(&fault.name),
            escape(&fault.kind),
            escape(&fault.class),
            escape(&fault.target),
            ms_cell(Some(fault.scheduled_ms)),
            ms_cell(fault.applied_ms),
            ms_cell(fault.reverted_ms),
            escape(fault.error.as_deref().unwrap_or("")),
        );
    }
    out.push_str("</tbody></table>\n");
    out
}

fn legend(items: &[(&str, &str)]) -> String {
    let mut out = String::from("<p class=\"legend\">");
    for (colour, text) in items {
        let _ = write!(
            out,
            r#"<span><i style="background: var({colour})"></i>{}</span>"#,
            escape(text)
        );
    }
    out.push_str("</p>\n");
    out
}

/// The page of one scenario run, linking back to the run's index at
/// `index_href` when there is one.
pub fn scenario_page(report: &Report, index_href: Option<&str>) -> String {
    let tally = super::tally(report);
    let mut body = String::new();
    if let Some(href) = index_href {
        let _ = writeln!(
            body,
            r#"<p class="meta"><a href="{}">all scenarios of the run</a></p>"#,
            escape(href)
        );
    }
    let _ = writeln!(
        body,
        r#"<h1>{} {}</h1><p>{}</p>"#,
        escape(&report.scenario),
        verdict_badge(run_verdict(report)),
        escape(&report.description)
    );
    let replay = report.replay_command.as_deref().map_or_else(
        || "an explored schedule: see explore.json and minimal.yaml".to_owned(),
        |c| format!("<code class=\"replay\">{}</code>", escape(c)),
    );
    let _ = writeln!(
        body,
        r#"<dl class="meta"><dt>checks</dt><dd>{} passed, {} failed, {} vacuous</dd><dt>seed</dt><dd>{}</dd><dt>config digest</dt><dd><code>{}</code></dd><dt>replay</dt><dd>{replay}</dd><dt>backend</dt><dd>{}</dd><dt>scale</dt><dd>{}</dd><dt>duration</dt><dd>{:.1}s</dd><dt>requests</dt><dd>{} planned, {} sent, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms</dd><dt>files</dt><dd><a href="report.json">report.json</a> · <a href="history.jsonl">history.jsonl</a> · <a href="verdict.yaml">verdict.yaml</a> · <a href="orchestrator.log">orchestrator.log</a></dd><dt>source</dt><dd><code>{}</code>, gauntlet {}, run {}</dd></dl>"#,
        tally.passed,
        tally.failed,
        tally.vacuous,
        report.seed,
        escape(&report.config_digest),
        escape(&report.backend),
        report.scale,
        report.duration_ms as f64 / 1000.0,
        report.load.planned,
        report.load.sent,
        report.load.overall.p50_ms,
        report.load.overall.p99_ms,
        report.load.overall.max_ms,
        escape(&report.source),
        escape(&report.gauntlet_version),
        escape(&report.run_id),
    );
    // The picture first: a spike two seconds after a fault is what a reader
    // comes for, and the checks table below says which check it broke.
    body.push_str("<h2>Latency</h2>\n");
    body.push_str(&legend(&[
        ("--p50", "p50 of successes"),
        ("--p99", "p99 of successes"),
        ("--max", "max of successes"),
        ("--err", "slowest error of the second"),
        ("--fault", "fault window"),
        ("--ok", "SLO threshold, held"),
        ("--err", "SLO threshold, failed"),
    ]));
    let _ = writeln!(
        body,
        "<input type=\"checkbox\" id=\"log-scale\" class=\"scale-switch\"{}><label for=\"log-scale\"> log scale</label>\n<div class=\"latency\">",
        if log_by_default(report) {
            " checked"
        } else {
            ""
        }
    );
    body.push_str(&latency_plot(report, false));
    body.push('\n');
    body.push_str(&latency_plot(report, true));
    body.push_str("\n</div>\n<h2>Throughput</h2>\n");
    body.push_str(&legend(&[
        ("--ok", "2xx per second"),
        ("--err", "errors per second"),
    ]));
    body.push_str(&throughput_plot(report));
    body.push_str("\n<h2>Error rate</h2>\n");
    body.push_str(&error_rate_plot(report));
    body.push_str("\n<h2>Probes</h2>\n");
    body.push_str(&legend(&[
        ("--ok", "2xx"),
        ("--err", "other status"),
        ("--muted", "no answer"),
    ]));
    body.push_str(&probes_strip(report));
    if let Some(strip) = slo_strip(report) {
        body.push_str("\n<h2>SLO windows</h2>\n");
        body.push_str(&legend(&[
            ("--ok", "held"),
            ("--err", "failed"),
            ("--muted", "no traffic (outlined)"),
        ]));
        body.push_str(&strip);
    }
    body.push_str("\n<h2>Checks</h2>\n");
    body.push_str(&checks_table(report));
    body.push_str("\n<h2>Faults</h2>\n");
    body.push_str(&faults_table(report));
    if !report.process_events.is_empty() {
        body.push_str("<h2>Process events</h2>\n<pre class=\"process-events\">");
        for e in &report.process_events {
            let _ = writeln!(body, "{:>9.1}ms  {}", e.elapsed_ms, escape(&e.event));
        }
        body.push_str("</pre>\n");
    }
    page(&format!("{} · gauntlet", report.scenario), &body)
}

/// One row of the index: a report and the link to its page.
pub struct IndexEntry<'a> {
    /// The run's report.
    pub report: &'a Report,
    /// Its page, relative to the index.
    pub href: String,
}

/// The page of a whole run: one row per scenario, with its verdict, a
/// sparkline of its p99 latency per second and a link to its page.
pub fn index_page(title: &str, entries: &[IndexEntry<'_>]) -> String {
    let failed = entries.iter().filter(|e| !e.report.passed).count();
    let mut body = String::new();
    let _ = writeln!(
        body,
        r#"<h1>{} {}</h1><p class="meta">{} scenarios, {} passed, {failed} failed</p>"#,
        escape(title),
        verdict_badge(if failed == 0 {
            Verdict::Pass
        } else {
            Verdict::Fail
        }),
        entries.len(),
        entries.len() - failed,
    );
    body.push_str(
        "<table class=\"index\"><thead><tr><th>verdict</th><th>scenario</th><th>checks</th><th>p99 per second</th><th>seed</th><th>duration</th><th>replay</th></tr></thead><tbody>\n",
    );
    for entry in entries {
        let r = entry.report;
        let tally = super::tally(r);
        let p99: Vec<Option<f64>> = r
            .load
            .windows
            .iter()
            .map(|w| (w.latency.count > 0).then_some(w.latency.p99_ms))
            .collect();
        let _ = writeln!(
            body,
            r#"<tr class="scenario {}"><td>{}</td><td><a href="{}">{}</a></td><td>{} passed, {} failed, {} vacuous</td><td>{}</td><td class="num">{}</td><td class="num">{:.1}s</td><td>{}</td></tr>"#,
            run_verdict(r).as_str(),
            verdict_badge(run_verdict(r)),
            escape(&entry.href),
            escape(&r.scenario),
            tally.passed,
            tally.failed,
            tally.vacuous,
            sparkline(&p99, 140.0, 26.0, run_verdict(r).as_str()),
            r.seed,
            r.duration_ms as f64 / 1000.0,
            if r.passed {
                String::new()
            } else {
                r.replay_command
                    .as_deref()
                    .map(|c| format!("<code>{}</code>", escape(c)))
                    .unwrap_or_default()
            },
        );
    }
    body.push_str("</tbody></table>\n");
    page(title, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Report {
        let path = format!(
            "{}/../fixtures/reports/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).expect("fixture");
        Report::from_json(&text).expect("fixture parses")
    }

    #[test]
    fn every_plot_shades_one_band_per_fault_labelled_once() {
        let report = fixture("smoke");
        let html = scenario_page(&report, Some("../index.html"));
        // Two latency plots, throughput, error rate, probes, SLO windows.
        let plots = html.matches("<svg class=\"plot").count();
        assert_eq!(plots, 6, "plots");
        for fault in &report.faults {
            let band = format!(
                r#"<g class="band fault" data-fault="{}" data-kind="{}">"#,
                fault.name, fault.kind
            );
            assert_eq!(
                html.matches(&band).count(),
                plots,
                "bands of {}",
                fault.name
            );
            let label = format!(">{} ({})</text>", fault.name, fault.kind);
            assert_eq!(html.matches(&label).count(), 2, "labels of {}", fault.name);
        }
    }

    #[test]
    fn a_failed_slo_is_drawn_red_and_the_page_names_the_replay() {
        let report = fixture("weakened-no-retries");
        let html = scenario_page(&report, Some("../index.html"));
        assert!(
            html.contains(r#"<line class="threshold fail""#),
            "red threshold"
        );
        assert!(html.contains(r#"<rect class="slo-fail""#), "red SLO window");
        assert!(html.contains(
            "<code class=\"replay\">gauntlet run fixtures/scenarios/weakened/no-retries.yaml --seed 11</code>"
        ));
        assert!(html.contains(r#"<tr class="check fail">"#));
        let passed = fixture("smoke");
        assert!(!scenario_page(&passed, None).contains("threshold fail"));
    }

    #[test]
    fn pages_fetch_nothing_and_run_no_script() {
        for name in ["smoke", "weakened-no-retries"] {
            let report = fixture(name);
            let html = scenario_page(&report, Some("../index.html"));
            let index = index_page(
                "run",
                &[IndexEntry {
                    report: &report,
                    href: "x/report.html".to_owned(),
                }],
            );
            for page in [&html, &index] {
                assert!(!page.contains("<script"), "{name}: a script");
                assert!(!page.contains("src="), "{name}: a fetched resource");
                assert!(!page.contains("@import"), "{name}: an imported style");
                assert!(!page.contains("url("), "{name}: a fetched style resource");
            }
        }
    }

    #[test]
    fn the_index_links_each_scenario_with_its_sparkline() {
        let (smoke, weak) = (fixture("smoke"), fixture("weakened-no-retries"));
        let index = index_page(
            "gauntlet run",
            &[
                IndexEntry {
                    report: &smoke,
                    href: "smoke/report.html".to_owned(),
                },
                IndexEntry {
                    report: &weak,
                    href: "weakened-no-retries/report.html".to_owned(),
                },
            ],
        );
        assert!(index.contains(r#"<a href="smoke/report.html">smoke</a>"#));
        assert!(index.contains(r#"<tr class="scenario fail">"#));
        assert_eq!(index.matches("<svg class=\"sparkline").count(), 2);
        assert!(index.contains("2 scenarios, 1 passed, 1 failed"));
    }
}
