//! What `monitoring/` ships: the alert rules pass `promtool check rules` and
//! their `promtool test rules` unit tests, each alert has a case that fires
//! and one that stays quiet, the Grafana dashboard loads and its queries
//! parse, and rules and dashboard name only metrics (and label values) that
//! a running `clamgate run` and `clamgate milter` really export.
//! tests/prometheus_alerts.rs proves the alerts in a real Prometheus.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;

use indymilter_test::Status;
use serde::Deserialize;
use support::daemon::live_v1;
use support::metrics::scrape_until;
use support::prometheus::{RuleFile, RuleGroup, dashboard_path, exported_names, promtool, rules_path, rules_tests_path};
use support::promql::{Selector, selectors};

/// The alert names: a contract with operators' Alertmanager routes and silences.
const ALERTS: [&str; 9] = [
    "ClamgateScanningUnhealthy",
    "ClamgateDown",
    "ClamgateSignaturesStale",
    "ClamgateUpdatesHeldBack",
    "ClamgateRolledBack",
    "ClamgateMilterTempfailing",
    "ClamgateScanSlow",
    "ClamgateCanaryNearMemoryLimit",
    "ClamgateRolloutHalted",
];

/// Labels Prometheus adds to every scraped series, not clamgate.
const TARGET_LABELS: [&str; 2] = ["job", "instance"];

#[test]
fn rules_pass_promtool_check() {
    let (ok, out) = promtool(&[OsStr::new("check"), OsStr::new("rules"), rules_path().as_os_str()]);
    assert!(ok, "promtool check rules {}:\n{out}", rules_path().display());
}

#[test]
fn every_alert_is_named_in_the_contract_and_says_what_to_do() {
    let rules = RuleFile::shipped();
    let names: Vec<&str> = rules.rules().filter_map(|r| r.alert.as_deref()).collect();
    assert_eq!(names, ALERTS, "the alert names are a contract: add, never rename");
    for r in rules.rules() {
        let name = r.alert.as_deref().unwrap();
        assert!(r.for_.is_some(), "{name} has no for:");
        assert!(matches!(r.labels.get("severity").map(String::as_str), Some("critical" | "warning")), "{name}: severity critical or warning");
        assert!(r.annotations.get("summary").is_some_and(|s| !s.is_empty()), "{name} has no summary");
        let description = r.annotations.get("description").map_or("", String::as_str);
        assert!(description.contains("`clamgate "), "{name}'s description names no clamgate command: {description}");
    }
}

#[derive(Deserialize)]
struct UnitTests {
    rule_files: Vec<String>,
    tests: Vec<UnitTest>,
}

#[derive(Deserialize)]
struct UnitTest {
    name: String,
    #[serde(default)]
    alert_rule_test: Vec<AlertCase>,
}

#[derive(Deserialize)]
struct AlertCase {
    alertname: String,
    exp_alerts: Vec<serde_norway::Value>,
}

/// The unit tests run on a copy of the rules without `description`: prose,
/// checked above; the expectations pin labels and the summary.
#[test]
fn rules_unit_tests_pass_and_cover_every_alert() {
    let text = fs::read_to_string(rules_tests_path()).unwrap();
    let unit: UnitTests = serde_norway::from_str(&text).expect("the promtool tests parse");
    assert_eq!(unit.rule_files, ["clamgate-rules.yml"], "tests the shipped rules, beside it");
    for alert in ALERTS {
        let cases: Vec<(&str, bool)> = unit
            .tests
            .iter()
            .flat_map(|t| t.alert_rule_test.iter().filter(|c| c.alertname == alert).map(|c| (t.name.as_str(), c.exp_alerts.is_empty())))
            .collect();
        assert!(cases.iter().any(|(_, quiet)| !quiet), "{alert}: no promtool case where it fires");
        assert!(cases.iter().any(|(_, quiet)| *quiet), "{alert}: no promtool case where it stays quiet");
    }

    let dir = tempfile::tempdir().unwrap();
    let mut rules = RuleFile::shipped();
    for r in rules.rules_mut() {
        r.annotations.remove("description");
    }
    rules.write(&dir.path().join("clamgate-rules.yml"));
    let tests = dir.path().join("clamgate-rules.test.yml");
    fs::write(&tests, text).unwrap();
    let (ok, out) = promtool(&[OsStr::new("test"), OsStr::new("rules"), tests.as_os_str()]);
    assert!(ok, "promtool test rules {}:\n{out}", rules_tests_path().display());
}

/// Every PromQL expression of the dashboard, with where it is: panel
/// targets (rows' too) and the metric selectors of `label_values` variables.
fn dashboard_queries(dash: &serde_json::Value) -> Vec<(String, String)> {
    fn panels<'a>(list: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            panels(&p["panels"], out);
        }
    }
    let mut all = Vec::new();
    panels(&dash["panels"], &mut all);
    let mut queries = Vec::new();
    for p in all {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_else(|| panic!("panel {:?} has a target without expr", p["title"]));
            queries.push((format!("panel {:?} target {}", p["title"].as_str().unwrap_or(""), t["refId"]), expr.to_string()));
        }
    }
    for v in dash["templating"]["list"].as_array().into_iter().flatten().filter(|v| v["type"] == "query") {
        let q = v["query"]["query"].as_str().or(v["query"].as_str()).unwrap_or("");
        let inner = q.strip_prefix("label_values(").and_then(|r| r.rsplit_once(',')).map(|(sel, _)| sel.to_string());
        queries.push((
            format!("variable {}", v["name"]),
            inner.unwrap_or_else(|| panic!("variable {}: only label_values(selector, label) is expected: {q}", v["name"])),
        ));
    }
    queries
}

/// Grafana's variables replaced by what Prometheus would get.
fn as_promql(expr: &str, variables: &BTreeSet<String>) -> String {
    let mut out = expr.to_string();
    for builtin in ["$__rate_interval", "$__interval", "$__range"] {
        out = out.replace(builtin, "5m");
    }
    for v in variables {
        out = out.replace(&format!("${{{v}}}"), ".+").replace(&format!("${v}"), ".+");
    }
    assert!(!out.contains('$'), "an unknown variable in {expr}");
    out
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(dashboard_path()).unwrap()).expect("the dashboard is JSON")
}

fn variables(dash: &serde_json::Value) -> BTreeSet<String> {
    dash["templating"]["list"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap().to_string()).collect()
}

#[test]
fn dashboard_loads_and_every_query_parses() {
    let dash = dashboard();
    assert_eq!(dash["uid"], "clamgate");
    assert!(dash["title"].is_string() && dash["schemaVersion"].is_u64(), "a Grafana dashboard");
    let mut ids = BTreeSet::new();
    for p in dash["panels"].as_array().expect("panels") {
        assert!(ids.insert(p["id"].as_u64().expect("panel id")), "panel id {} twice", p["id"]);
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()) && p["gridPos"]["w"].is_u64(), "panel {} has a title and a place", p["id"]);
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {:?} uses the dashboard's Prometheus", p["title"]);
            assert!(p["targets"].as_array().is_some_and(|t| !t.is_empty()), "panel {:?} has no query", p["title"]);
        }
    }

    // promtool has no bare "parse this expression" here (2.42), so each
    // query becomes a recording rule that `promtool check rules` parses.
    let vars = variables(&dash);
    let queries = dashboard_queries(&dash);
    let rules = RuleFile {
        groups: vec![RuleGroup {
            name: "dashboard".into(),
            rules: queries
                .iter()
                .enumerate()
                .map(|(i, (_, expr))| support::prometheus::Rule {
                    alert: None,
                    record: Some(format!("dashboard:query_{i}")),
                    expr: as_promql(expr, &vars),
                    for_: None,
                    labels: BTreeMap::new(),
                    annotations: BTreeMap::new(),
                })
                .collect(),
        }],
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-queries.yml");
    rules.write(&file);
    let (ok, out) = promtool(&[OsStr::new("check"), OsStr::new("rules"), file.as_os_str()]);
    let index: Vec<String> = queries.iter().enumerate().map(|(i, (at, e))| format!("query_{i}: {at}: {e}")).collect();
    assert!(ok, "a dashboard query does not parse:\n{out}\n{}", index.join("\n"));

    // What the issue asks the dashboard to show.
    let used: BTreeSet<String> = queries.iter().flat_map(|(_, e)| selectors(e)).map(|s| s.metric).collect();
    for shown in [
        "clamgate_probe_up",
        "clamgate_probes_total",
        "clamgate_probe_latency_seconds_bucket",
        "clamgate_live_release_info",
        "clamgate_live_database_version",
        "clamgate_live_database_age_seconds",
        "clamgate_candidates_total",
        "clamgate_promotions_total",
        "clamgate_rollbacks_total",
        "clamgate_milter_messages_total",
        "clamgate_milter_scan_latency_seconds_bucket",
        "clamgate_canary_load_seconds",
        "clamgate_canary_peak_bytes",
    ] {
        assert!(used.contains(shown), "the dashboard does not show {shown}");
    }
}

/// Every query of the rules and the dashboard, with where it is.
fn all_queries() -> Vec<(String, String)> {
    let mut queries: Vec<(String, String)> =
        RuleFile::shipped().rules().map(|r| (format!("rule {}", r.alert.as_deref().unwrap_or("?")), r.expr.clone())).collect();
    queries.extend(dashboard_queries(&dashboard()));
    queries
}

/// Run both binaries in the state where every metric is known (a release
/// promoted, so a canary ran; production scanning; the milter has acted on
/// a health answer) and compare what they export with what is queried.
#[tokio::test(flavor = "multi_thread")]
async fn rules_and_dashboard_use_only_what_the_binaries_export() {
    // A gate with [publish] (one ring, no hosts), so the rollout metrics exist too.
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = support::fleet::keygen(keys_dir.path());
    let publish = format!(
        "[publish]\ndir = \"{}\"\nlisten = \"\"\nkey = \"{}\"\nhost_poll_interval = \"200ms\"\n[[publish.ring]]\nname = \"all\"\nhosts = []\nsoak = \"0s\"\n",
        keys_dir.path().join("publish").display(),
        keys.key.display()
    );
    let (env, _d, _prod) = live_v1(&publish).await;
    let m = env.spawn_milter("mode = \"gate\"\n");
    assert_eq!(support::milter::rcpt(m.addr).await, Status::Accept);
    let daemon = scrape_until(env.health, "production's daily version and the rollout known", |s| {
        s.has("clamgate_live_database_version") && s.has("clamgate_rollout_halted")
    })
    .await;
    let milter =
        scrape_until(m.metrics, "the milter's accept counted", |s| s.value("clamgate_milter_messages_total", &[("action", "accept")]) >= Some(1.0)).await;

    let mut exported = exported_names(&daemon.text);
    exported.extend(exported_names(&milter.text));
    // Prometheus's own per-target series.
    exported.insert("up".into());
    let samples: Vec<&prometheus_parse::Sample> = daemon.samples.iter().chain(&milter.samples).collect();

    let mut wrong = Vec::new();
    for (at, expr) in all_queries() {
        for Selector { metric, equal } in selectors(&expr) {
            if !exported.contains(&metric) {
                wrong.push(format!("{at}: {metric} is not exported"));
                continue;
            }
            for (label, value) in equal.iter().filter(|(l, _)| !TARGET_LABELS.contains(&l.as_str())) {
                if !samples.iter().any(|s| s.metric == metric && s.labels.get(label) == Some(value.as_str())) {
                    wrong.push(format!("{at}: no {metric} series has {label}=\"{value}\""));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}\n\ndaemon /metrics:\n{}\nmilter /metrics:\n{}", wrong.join("\n"), daemon.text, milter.text);
}

#[test]
fn selectors_are_read_out_of_promql() {
    let sel = |m: &str, eq: &[(&str, &str)]| Selector { metric: m.into(), equal: eq.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() };
    let cases: [(&str, Vec<Selector>); 5] = [
        ("up == 0", vec![sel("up", &[])]),
        (
            r#"sum by (job, le) (rate(a_bucket{job="x", le=~"1|2"}[5m])) > ignoring (database) b offset 1d"#,
            vec![sel("a_bucket", &[("job", "x")]), sel("b", &[])],
        ),
        (r#"time() - c{k="v \"q\" }"} and on (job) group_left d"#, vec![sel("c", &[("k", r#"v \"q\" }"#)]), sel("d", &[])]),
        ("histogram_quantile(0.9, sum without (instance) (e)) * 3e2 # f", vec![sel("e", &[])]),
        ("absent(g:rec{a = 'b', c != \"d\"})", vec![sel("g:rec", &[("a", "b")])]),
    ];
    for (expr, want) in cases {
        assert_eq!(selectors(expr), want, "{expr}");
    }
}
