//! The layers of `src/`, as each folder's `mod.rs` and the README's "How it works" describe
//! them: a module names (`crate::…`) only modules of the layers below its own, never one of
//! its own layer or above, so no import cycle can form between them. Tests inside a module
//! (`#[cfg(test)] mod …`) are left out: they may build what they need from anywhere.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// From the bottom up. Modules of one layer never import each other.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "the shared kinds and small utilities",
        // `testing`: the unit tests' helpers, compiled only for them.
        &["model", "failure", "clock", "rt", "fault", "testing"],
    ),
    ("logging", &["logging"]),
    ("this Mac", &["host"]),
    ("inside the VM", &["guest"]),
    ("the Orchard controller's client", &["orchard"]),
    ("the admin's settings", &["settings"]),
    ("the job's request", &["job"]),
    ("the warm pool's records", &["warm"]),
    ("the backend seam", &["backend"]),
    ("the commands", &["stages", "doctor", "runner_config"]),
    ("the command line", &["cli"]),
    ("the manual pages", &["manuals"]),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, mods)| mods.contains(&module))
}

/// `src/<module>.rs` or `src/<module>/…`: the top-level module a file belongs to.
fn top_module(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a Rust file without comments, string and char literals, and test modules.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let rest = &text[i..];
        if rest.starts_with("//") {
            i += rest.find('\n').unwrap_or(rest.len());
        } else if let Some(body) = rest.strip_prefix("/*") {
            i += body.find("*/").map_or(rest.len(), |e| e + 4);
        } else if let Some(hashes) = raw_string_start(text, i) {
            let open = i + rest.find('"').unwrap() + 1;
            let close = format!("\"{}", "#".repeat(hashes));
            i = text[open..]
                .find(&close)
                .map_or(b.len(), |e| open + e + close.len());
            out.push_str("\"\"");
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if let Some(len) = char_literal(rest) {
            i += len;
            out.push_str("' '");
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    drop_test_modules(&out)
}

/// `r"`, `r#"`, `br"`…: the number of `#`, at a raw string's start.
fn raw_string_start(text: &str, i: usize) -> Option<usize> {
    let prev = text[..i].chars().next_back();
    if prev.is_some_and(|c| c.is_alphanumeric() || c == '_') {
        return None;
    }
    let rest = text[i..].strip_prefix('b').unwrap_or(&text[i..]);
    let rest = rest.strip_prefix('r')?;
    let hashes = rest.len() - rest.trim_start_matches('#').len();
    rest[hashes..].starts_with('"').then_some(hashes)
}

/// The length of a char literal (`'a'`, `'\n'`, `'\''`) at the start of `rest`; a
/// lifetime is none.
fn char_literal(rest: &str) -> Option<usize> {
    if !rest.starts_with('\'') {
        return None;
    }
    let mut chars = rest.char_indices().skip(1);
    let (_, c) = chars.next()?;
    if c == '\\' {
        let (_, _) = chars.next()?;
        return chars.find(|&(_, c)| c == '\'').map(|(at, _)| at + 1);
    }
    let (at, close) = chars.next()?;
    (close == '\'').then_some(at + 1)
}

fn drop_test_modules(code: &str) -> String {
    let mut code = code.to_string();
    while let Some(start) = code.find("#[cfg(test)]") {
        let Some(open) = code[start..].find('{').map(|o| start + o) else {
            break;
        };
        let mut depth = 0;
        let mut end = code.len();
        for (at, c) in code[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + at + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        code.replace_range(start..end, "");
    }
    code
}

/// The top-level modules `code` names through `crate::`.
fn named_modules(code: &str) -> BTreeSet<String> {
    code.match_indices("crate::")
        .filter(|(at, _)| {
            !code[..*at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
        })
        .map(|(at, m)| {
            code[at + m.len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect()
        })
        .filter(|name: &String| !name.is_empty())
        .collect()
}

#[test]
fn every_module_of_src_imports_only_from_the_layers_below_its_own() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut upward = Vec::new();
    for file in &files {
        let module = top_module(&src, file);
        if module == "main" {
            continue;
        }
        let Some(own) = layer_of(&module) else {
            panic!(
                "{} belongs to no layer: add `{module}` to LAYERS in tests/layers.rs, and say in the README where it sits",
                file.display()
            );
        };
        let code = code_only(&std::fs::read_to_string(file).unwrap());
        for named in named_modules(&code) {
            if named == module {
                continue;
            }
            match layer_of(&named) {
                Some(layer) if layer < own => {}
                _ => upward.push(format!(
                    "{} ({}) names crate::{named}",
                    file.strip_prefix(&src).unwrap().display(),
                    LAYERS[own].0
                )),
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that do not go down:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_layer_check_sees_an_import_outside_comments_strings_and_tests() {
    let code = code_only(
        r##"
        use crate::host::vm::VmState; // crate::stages in a comment
        /* crate::doctor */
        const S: &str = "crate::cli";
        const R: &str = r#"crate::backend"#;
        const Q: char = '"';
        fn f<'a>(x: &'a str) -> bool { crate::settings::check(x) }
        #[cfg(test)]
        mod tests {
            use crate::job::JobContext;
        }
        "##,
    );
    let named: Vec<String> = named_modules(&code).into_iter().collect();
    assert_eq!(named, ["host", "settings"]);
}
