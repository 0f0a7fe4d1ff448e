//! The README's examples are real: every handler snippet loads against the bundled protos (plus the
//! tour's), the tour answers as shown, and its "mistake" prints the error the README shows.

mod common;

use common::{check, Server};
use serde_json::json;

const README: &str = include_str!("../README.md");

/// Fenced blocks of one language, in order.
fn blocks(lang: &str) -> Vec<String> {
    let fence = format!("```{lang}\n");
    README
        .split(&fence)
        .skip(1)
        .map(|rest| rest.split("\n```").next().unwrap().to_string() + "\n")
        .collect()
}

/// The text of a `<<'TAG'` heredoc in the README.
fn heredoc(tag: &str) -> String {
    let start = README
        .find(&format!("<<'{tag}'\n"))
        .unwrap_or_else(|| panic!("no {tag} heredoc"));
    let body = &README[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find(&format!("\n{tag}\n")).unwrap()].to_string() + "\n"
}

/// The bundled protos and the tour's shop.proto.
fn protos() -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("protos");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    files.push(("shop.proto".into(), heredoc("PROTO")));
    files
}

/// Scripts shown in the README, named by their first line (`// handlers/NAME.rhai…`).
fn scripts() -> Vec<(String, String)> {
    blocks("rhai")
        .into_iter()
        .map(|text| {
            let name = text
                .lines()
                .next()
                .unwrap()
                .trim_start_matches("// handlers/");
            let name = name.split(':').next().unwrap().trim().to_string();
            (name, text)
        })
        .collect()
}

#[test]
fn every_handler_snippet_loads() {
    let protos = protos();
    let protos: Vec<(&str, &str)> = protos
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    let scripts = scripts();
    let toml = blocks("toml");
    assert!(
        toml.len() >= 6,
        "expected the README's handler examples, found {} toml blocks",
        toml.len()
    );
    for (i, block) in toml
        .iter()
        .chain(std::iter::once(&heredoc("TOML")))
        .enumerate()
    {
        let mut handlers: Vec<(&str, &str)> = scripts
            .iter()
            .map(|(n, t)| (n.as_str(), t.as_str()))
            .collect();
        handlers.push(("readme.toml", block));
        let (code, _, stderr) = check(&protos, &handlers);
        assert_eq!(
            code, 0,
            "README handler example #{i} does not load:\n{block}\n---\n{stderr}"
        );
    }
}

#[test]
fn the_tour_mistake_prints_what_the_readme_shows() {
    let protos = protos();
    let protos: Vec<(&str, &str)> = protos
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    let broken = heredoc("TOML").replace("price_cents = 1999", "price = 1999");
    let (code, _, stderr) = check(&protos, &[("shop.toml", &broken)]);
    assert_eq!(code, 1);
    let shown = README
        .lines()
        .find(|l| l.starts_with("handlers/shop.toml:"))
        .expect("the README shows the error");
    assert!(
        stderr.contains(shown),
        "README shows\n{shown}\nbut check printed\n{stderr}"
    );
}

#[tokio::test]
async fn the_tour_answers_as_shown() {
    let server = Server::start(
        &[("shop.proto", &heredoc("PROTO"))],
        &[("shop.toml", &heredoc("TOML"))],
    );
    let client = server.client().await;
    let item = client
        .unary("shop.Catalog/GetItem", json!({"id": "42"}))
        .await;
    assert_eq!(
        item.single(),
        &json!({"id": "42", "title": "Item 42", "priceCents": "1999"})
    );
    let missing = client
        .unary("shop.Catalog/GetItem", json!({"id": "0"}))
        .await;
    assert_eq!(missing.err(tonic::Code::NotFound), "no item 0");
    let list = client
        .server_stream("shop.Catalog/ListItems", json!({}))
        .await;
    assert_eq!(list.ok().messages.len(), 3);
}
