//! docs/walkthrough.md cannot go stale: every file it links exists, and
//! every kiln function it names after a link (`Type::function` or a
//! snake_case `function`, in the same paragraph) is defined in that file.
//! No VM runs here.

use std::path::Path;

/// (file, name) pairs the walk-through refers to, in order.
fn references(doc: &str) -> Vec<(String, String)> {
    // Paragraphs, and each numbered step on its own.
    let mut text = String::new();
    for line in doc.lines() {
        let t = line.trim_start();
        let numbered = t
            .split_once(". ")
            .is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
        if numbered {
            text.push('\n');
        }
        text.push_str(line);
        text.push('\n');
    }
    let mut refs = Vec::new();
    for paragraph in text.split("\n\n") {
        let mut file: Option<String> = None;
        let mut rest = paragraph;
        while let Some(tick) = rest.find('`') {
            // A link `[...](../path)` before this span sets the file.
            let before = &rest[..tick];
            if let Some(link) = before.rfind("](../") {
                let path = &before[link + 5..];
                if let Some(end) = path.find(')') {
                    file = Some(path[..end].to_string());
                }
            }
            let after = &rest[tick + 1..];
            let Some(close) = after.find('`') else { break };
            let span = &after[..close];
            rest = &after[close + 1..];
            // The link text itself is a path: skip it.
            if rest.starts_with("](") {
                continue;
            }
            let ident =
                |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            let checked = match span.split_once("::") {
                Some((ty, f)) => ident(ty) && ident(f),
                None => ident(span) && span.chars().all(|c| !c.is_ascii_uppercase()),
            };
            if let (true, Some(f)) = (checked, &file) {
                refs.push((f.clone(), span.to_string()));
            }
        }
    }
    refs
}

#[test]
fn every_file_and_function_the_walkthrough_names_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/walkthrough.md")).unwrap();
    let refs = references(&doc);
    assert!(
        refs.len() >= 30,
        "the walk-through names kiln's code: {refs:?}"
    );
    let mut missing = Vec::new();
    for (file, name) in &refs {
        let path = root.join(file);
        let Ok(text) = std::fs::read_to_string(&path) else {
            missing.push(format!("{file} does not exist"));
            continue;
        };
        let (ty, func) = name.split_once("::").unwrap_or(("", name));
        if !text.contains(&format!("fn {func}(")) && !text.contains(&format!("fn {func}<")) {
            missing.push(format!("{file} defines no fn {func} ({name})"));
        }
        if !ty.is_empty()
            && !text.contains(&format!("struct {ty}"))
            && !text.contains(&format!("for {ty} "))
            && !text.contains(&format!("impl {ty} "))
        {
            missing.push(format!("{file} has no type {ty} ({name})"));
        }
    }
    assert!(missing.is_empty(), "stale references: {missing:#?}");
}

#[test]
fn the_checker_sees_a_stale_reference() {
    let doc =
        "[`src/vcpu/mod.rs`](../src/vcpu/mod.rs) `Vcpu::run` and `KVM_RUN`, `IoOut`.\n\n`orphan`";
    assert_eq!(
        references(doc),
        [("src/vcpu/mod.rs".to_string(), "Vcpu::run".to_string())]
    );
}
