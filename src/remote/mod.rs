//! `protodrop calls`, `verify`, `rules …`: a thin client of a running server's admin API, through
//! its HTTP/JSON routes (`/protodrop/admin/v1/…`, see `admin/admin.proto`) — the same requests a
//! test suite sends with curl, so the CLI adds no protocol and no second contract.
//!
//! One command is one request on one connection: hyper's own client connection (`hyper::client::
//! conn::http1`, over a plain socket or tokio-rustls for `https://`) on a current-thread runtime.
//! No pool is needed for one request, and TLS is the rustls the server already links, so nothing new
//! is compiled. The server's answers are printed as a summary for people, or as the admin JSON
//! itself (`--json`) for scripts; a refused request prints the server's own message (a rule's
//! diagnostic names the line and column of the submitted file), a server that cannot be reached is
//! named with its URL.
//!
//! It sits below `run` (which turns the parsed flags into the values here) and uses only `codes`
//! and `admin`'s paths: it knows nothing of what the server does with a request.

mod http;
mod show;

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use serde_json::{json, Value as Json};

use crate::admin::ROUTE_PREFIX;
pub(crate) use http::Server;

/// Where the server is, as given by `--server` and the TLS flags.
pub(crate) struct Target {
    pub(crate) url: String,
    /// PEM file of the CA that signed an `https://` server's certificate.
    pub(crate) cacert: Option<PathBuf>,
    /// Certificate and key PEM files, for a server that asks for a client certificate.
    pub(crate) client_identity: Option<(PathBuf, PathBuf)>,
}

/// A file of rules or a filter, or `-` for stdin, read whole; TOML unless it is JSON (a `.json`
/// name, or text that starts with `{`).
struct Submitted {
    /// How the server's diagnostics should name it: the path, or `<stdin>`.
    name: String,
    text: String,
    json: bool,
}

impl Submitted {
    fn read(path: &Path) -> anyhow::Result<Submitted> {
        let (name, text) = if path == Path::new("-") {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading stdin")?;
            ("<stdin>".to_string(), text)
        } else {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            (path.display().to_string(), text)
        };
        let json =
            path.extension().is_some_and(|e| e == "json") || text.trim_start().starts_with('{');
        Ok(Submitted { name, text, json })
    }

    /// The text as a JSON object, for the request's `json`/`filterJson` field.
    fn object(&self) -> anyhow::Result<Json> {
        let value: Json = serde_json::from_str(&self.text).map_err(|e| {
            anyhow::anyhow!("{}:{}:{}: not JSON: {e}", self.name, e.line(), e.column())
        })?;
        if !value.is_object() {
            bail!("{}:1:1: the JSON must be an object", self.name);
        }
        Ok(value)
    }

    /// The server names submitted TOML `submitted.toml`; its lines and columns are this file's,
    /// so its messages name this file instead. (Submitted JSON is re-printed by the server, one
    /// key a line, so its positions are the server's and its name is kept.)
    fn rename(&self, error: anyhow::Error) -> anyhow::Error {
        match error.downcast::<http::Refused>() {
            Ok(refused) if !self.json => {
                let message = refused
                    .message
                    .replace("submitted.toml:", &format!("{}:", self.name));
                anyhow::Error::new(http::Refused { message, ..refused })
            }
            Ok(refused) => anyhow::Error::new(refused),
            Err(other) => other,
        }
    }
}

fn route(tail: &str) -> String {
    format!("{ROUTE_PREFIX}{tail}")
}

/// `protodrop calls`: the journaled calls, oldest first.
pub(crate) fn calls(
    target: &Target,
    method: Option<&str>,
    limit: Option<u32>,
    json: bool,
) -> anyhow::Result<()> {
    let server = Server::new(target)?;
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(method) = method {
        query.append_pair("method", method);
    }
    if let Some(limit) = limit {
        query.append_pair("limit", &limit.to_string());
    }
    let query = query.finish();
    let path = match query.is_empty() {
        true => route("calls"),
        false => format!("{}?{query}", route("calls")),
    };
    let answer = server.get(&path)?;
    if json {
        return show::raw(&answer);
    }
    let listing: show::Listing = answer.parse()?;
    show::calls(&listing.calls)?;
    show::notes(&listing);
    Ok(())
}

/// `protodrop calls clear`: empties the journal.
pub(crate) fn clear_calls(target: &Target) -> anyhow::Result<()> {
    let answer = Server::new(target)?.send(http::Verb::Delete, &route("calls"), None)?;
    println!(
        "cleared {} call(s)",
        show::number(&answer.json()?["cleared"])
    );
    Ok(())
}

/// `protodrop verify`: the count of matching calls and the calls; `Ok(false)` when `expect` is
/// given and the count differs.
pub(crate) fn verify(
    target: &Target,
    filter: &Path,
    expect: Option<u64>,
    json: bool,
) -> anyhow::Result<bool> {
    let submitted = Submitted::read(filter)?;
    let body = match submitted.json {
        true => json!({ "filterJson": submitted.object()?, "list": true }),
        false => json!({ "filter": submitted.text, "list": true }),
    };
    let server = Server::new(target)?;
    let answer = server
        .send(http::Verb::Post, &route("calls:verify"), Some(&body))
        .map_err(|e| submitted.rename(e))?;
    let listing: show::Listing = answer.parse()?;
    let count = show::number(&listing.count);
    if json {
        show::raw(&answer)?;
    } else {
        show::line(&format!("{count} matching call(s)"))?;
        show::calls(&listing.calls)?;
        show::notes(&listing);
    }
    match expect {
        Some(expected) if expected != count => {
            eprintln!("error: expected {expected} matching call(s), found {count}");
            Ok(false)
        }
        _ => Ok(true),
    }
}

/// `protodrop rules add`: the rules of a file, added at once (all or none).
pub(crate) fn add_rules(target: &Target, file: &Path, json: bool) -> anyhow::Result<()> {
    let submitted = Submitted::read(file)?;
    let body = match submitted.json {
        true => json!({ "json": submitted.object()? }),
        false => json!({ "toml": submitted.text }),
    };
    let server = Server::new(target)?;
    let answer = server
        .send(http::Verb::Post, &route("rules"), Some(&body))
        .map_err(|e| submitted.rename(e))?;
    rules_answer(&answer, json)
}

/// `protodrop rules list`: every rule served, runtime and files', in the order tried.
pub(crate) fn list_rules(target: &Target, method: Option<&str>, json: bool) -> anyhow::Result<()> {
    let path = match method {
        Some(method) => {
            let query = form_urlencoded::Serializer::new(String::new())
                .append_pair("method", method)
                .finish();
            format!("{}?{query}", route("rules"))
        }
        None => route("rules"),
    };
    let answer = Server::new(target)?.get(&path)?;
    rules_answer(&answer, json)
}

/// An answer that lists rules (AddRules, ListRules): as it came with `--json`, else a line each.
fn rules_answer(answer: &http::Answer, json: bool) -> anyhow::Result<()> {
    if json {
        return show::raw(answer);
    }
    show::rules(
        answer.json()?["rules"]
            .as_array()
            .map_or(&[][..], Vec::as_slice),
    )
}

/// `protodrop rules delete ID`.
pub(crate) fn delete_rule(target: &Target, id: &str) -> anyhow::Result<()> {
    let id_path = form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>();
    Server::new(target)?.send(
        http::Verb::Delete,
        &route(&format!("rules/{id_path}")),
        None,
    )?;
    println!("deleted {id}");
    Ok(())
}

/// `protodrop rules reset`: every runtime rule deleted.
pub(crate) fn reset_rules(target: &Target) -> anyhow::Result<()> {
    let answer =
        Server::new(target)?.send(http::Verb::Post, &route("rules:reset"), Some(&json!({})))?;
    println!(
        "deleted {} runtime rule(s)",
        show::number(&answer.json()?["deleted"])
    );
    Ok(())
}
