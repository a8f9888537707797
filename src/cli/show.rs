//! Read-only commands for the operator: `status`, `history`, `releases`.
//! They read the state dir directly, so they work with the daemon down.

use std::io::Write;

use clap::Args;
use serde_json::{Value, json};

use super::{CliError, ConfigArg, Exit, when};
use crate::clamd::Client;
use crate::journal::Entry;
use crate::store::Store;

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub show: ShowArgs,
    /// How many entries, newest first.
    #[arg(short = 'n', default_value_t = 20)]
    pub n: usize,
}

fn open(args: &ConfigArg) -> Result<(crate::config::Config, Store), CliError> {
    let config = args.load()?;
    if !config.state_dir.is_dir() {
        return Err(CliError::usage(
            "state.missing",
            format!("state dir {} does not exist yet (has `clamgate run` ever started?)", config.state_dir.display()),
        ));
    }
    let store = Store::open(&config.state_dir).map_err(|e| CliError::environment("state.unreadable", e))?;
    Ok((config, store))
}

fn databases(m: &crate::candidate::Manifest) -> Vec<Value> {
    m.files.iter().map(|f| json!({ "name": f.name, "version": f.header.as_ref().map(|h| h.version), "signatures": f.signatures })).collect()
}

fn journal(store: &Store) -> Result<Vec<Entry>, CliError> {
    store.journal().read().map_err(|e| CliError::environment("state.unreadable", e))
}

pub async fn status(args: ShowArgs) -> Result<Exit, CliError> {
    let (config, store) = open(&args.config)?;
    let entries = journal(&store)?;
    let live = store.current().map_err(|e| CliError::environment("state.unreadable", e))?;
    let live_json = match &live {
        Some(id) => {
            let m = store.manifest(id).map_err(|e| CliError::environment("state.unreadable", e))?;
            let since = entries.iter().rev().find(|e| e.event.ends_with(".done") && e.get("id") == Some(id)).map(|e| e.ts.clone());
            json!({ "id": id, "databases": databases(&m), "signatures": m.total_signatures(), "since": since })
        }
        None => Value::Null,
    };
    let pin = store.pinned();
    let last = entries.iter().rev().find(|e| e.event == "candidate.checked" || e.event == "candidate.known_bad");
    let last_json = last.map(|e| {
        json!({
            "id": e.fields.get("id"),
            "verdict": if e.event == "candidate.known_bad" { json!("known_bad") } else { e.fields.get("verdict").cloned().unwrap_or(Value::Null) },
            "reasons": e.fields.get("reasons").cloned().unwrap_or(json!([])),
            "at": e.ts,
        })
    });
    let waiting: Vec<&str> = match &pin {
        Some(p) => {
            let since = humantime::parse_rfc3339(&p.at).ok();
            entries.iter().filter(|e| e.event == "candidate.held" && e.time() >= since).filter_map(|e| e.get("id")).collect()
        }
        None => Vec::new(),
    };
    let health = production_health(&config).await;
    let out = json!({
        "live": live_json,
        "pinned": pin.as_ref().map(|p| json!({ "by": p.by, "at": p.at, "id": p.id })).unwrap_or(Value::Bool(false)),
        "waiting": waiting,
        "last_candidate": last_json,
        "health": health,
        "state_dir": config.state_dir,
    });
    let mut o = std::io::stdout().lock();
    if args.json {
        let _ = writeln!(o, "{}", serde_json::to_string_pretty(&out).expect("serializes"));
        return Ok(Exit::Ok);
    }
    let _ = match &live {
        Some(id) => {
            let dbs: Vec<String> = out["live"]["databases"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| match d["version"].as_u64() {
                    Some(v) => format!("{} v{v}", crate::candidate::database_of(d["name"].as_str().unwrap_or("?"))),
                    None => d["name"].as_str().unwrap_or("?").to_string(),
                })
                .collect();
            let since = out["live"]["since"].as_str().map(|t| format!(", live since {}", when(t))).unwrap_or_default();
            writeln!(o, "live      {id}  {} ({} signatures){since}", dbs.join(", "), out["live"]["signatures"])
        }
        None => writeln!(o, "live      none (no release promoted yet)"),
    };
    let _ = match &pin {
        Some(p) => writeln!(o, "pinned    yes, by {} {}", p.by, when(&p.at)),
        None => writeln!(o, "pinned    no"),
    };
    if !waiting.is_empty() {
        let _ = writeln!(o, "waiting   {} (passed, held by the pin; `clamgate promote ID`)", waiting.join(", "));
    }
    let _ = match &last_json {
        Some(l) => {
            let reasons: Vec<String> = l["reasons"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| format!("{} [{}]", r["message"].as_str().unwrap_or(""), r["reason"].as_str().unwrap_or("")))
                .collect();
            writeln!(
                o,
                "last      {}  {} {}{}",
                l["id"].as_str().unwrap_or("(none)"),
                l["verdict"].as_str().unwrap_or("?"),
                when(l["at"].as_str().unwrap_or("")),
                if reasons.is_empty() { String::new() } else { format!(": {}", reasons.join("; ")) }
            )
        }
        None => writeln!(o, "last      no candidate checked yet"),
    };
    let _ = writeln!(o, "health    {}", health["summary"].as_str().unwrap_or("unknown"));
    Ok(Exit::Ok)
}

/// A direct look at production: VERSION and a real scan of the smoke samples.
async fn production_health(config: &crate::config::Config) -> Value {
    let client = Client::new(config.clamd.endpoint.clone(), std::time::Duration::from_secs(5));
    let version = match client.version().await {
        Ok(v) => v,
        Err(e) => return json!({ "status": "fail", "summary": format!("fail: production clamd unreachable: {e}") }),
    };
    let corpus = match crate::corpus::Corpus::load(&config.corpus_dir) {
        Ok(c) => c,
        Err(e) => return json!({ "status": "warn", "version": version, "summary": format!("warn: clamd answers, smoke scan skipped: {e}") }),
    };
    let smoke = match crate::promote::smoke_samples(&corpus, &config.smoke_samples) {
        Ok(s) => s,
        Err(e) => return json!({ "status": "warn", "version": version, "summary": format!("warn: {e}") }),
    };
    let prod = crate::promote::Production { client, reload_timeout: config.clamd.reload_timeout, smoke };
    match prod.smoke().await {
        Ok(()) => json!({ "status": "pass", "version": version, "summary": format!(
            "pass: production clamd {} scans{}",
            version.engine,
            version.database.map(|d| format!(" (daily {d})")).unwrap_or_default()
        ) }),
        Err(e) => json!({ "status": "fail", "version": version, "summary": format!("fail: {e}") }),
    }
}

pub async fn history(args: HistoryArgs) -> Result<Exit, CliError> {
    let (_, store) = open(&args.show.config)?;
    let entries = journal(&store)?;
    let newest: Vec<&Entry> = entries.iter().rev().take(args.n).collect();
    let mut o = std::io::stdout().lock();
    if args.show.json {
        let _ = writeln!(o, "{}", serde_json::to_string_pretty(&newest).expect("serializes"));
        return Ok(Exit::Ok);
    }
    let _ = writeln!(o, "{:<34} {:<22} {:<12} DETAIL", "WHEN", "EVENT", "ID");
    for e in newest {
        let mut detail = Vec::new();
        for key in ["verdict", "from", "production", "reason", "by", "pinned_by", "why", "error"] {
            if let Some(v) = e.fields.get(key).filter(|v| !v.is_null()) {
                detail.push(format!("{key}={}", v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())));
            }
        }
        if let Some(reasons) = e.fields.get("reasons").and_then(Value::as_array).filter(|r| !r.is_empty()) {
            let codes: Vec<&str> = reasons.iter().filter_map(|r| r["reason"].as_str()).collect();
            detail.push(format!("reasons={}", codes.join(",")));
        }
        let _ = writeln!(o, "{:<34} {:<22} {:<12} {}", when(&e.ts), e.event, e.get("id").unwrap_or("-"), detail.join(" "));
    }
    Ok(Exit::Ok)
}

pub async fn releases(args: ShowArgs) -> Result<Exit, CliError> {
    let (_, store) = open(&args.config)?;
    let list = store.releases().map_err(|e| CliError::environment("state.unreadable", e))?;
    let rows: Vec<Value> = list
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "live": r.live,
                "created": r.created,
                "databases": databases(&r.manifest),
                "signatures": r.manifest.total_signatures(),
                "bad": store.quarantined(&r.id).map(|q| json!({ "source": q.source, "at": q.at, "reasons": q.reasons })),
            })
        })
        .collect();
    let mut o = std::io::stdout().lock();
    if args.json {
        let _ = writeln!(o, "{}", serde_json::to_string_pretty(&rows).expect("serializes"));
        return Ok(Exit::Ok);
    }
    let _ = writeln!(o, "  {:<12}  {:<34}  {:>10}  {:<24}  STATUS", "ID", "CREATED", "SIGS", "DATABASES");
    for (r, row) in list.iter().zip(&rows) {
        let dbs: Vec<String> = r
            .manifest
            .files
            .iter()
            .map(|f| match &f.header {
                Some(h) => format!("{} v{}", f.database(), h.version),
                None => f.name.clone(),
            })
            .collect();
        let status = if r.live {
            "live".to_string()
        } else if let Some(q) = row["bad"].as_object() {
            format!("bad ({})", q["source"].as_str().unwrap_or(""))
        } else {
            "kept".to_string()
        };
        let _ = writeln!(
            o,
            "{} {:<12}  {:<34}  {:>10}  {:<24}  {status}",
            if r.live { "*" } else { " " },
            r.id,
            r.created.as_deref().map(when).unwrap_or_default(),
            r.manifest.total_signatures(),
            dbs.join(", "),
        );
    }
    Ok(Exit::Ok)
}
