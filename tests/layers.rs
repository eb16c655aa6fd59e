//! The layers of `src/`, as each folder's `mod.rs` and the README's "How it works" describe
//! them: a module names only modules of the layers below its own, never one of its own layer
//! or above, so no import cycle can form between them.
//!
//! The files are read as Rust (`syn`), from `src/main.rs` down its `mod` declarations, so
//! every way of naming a module counts: `crate::…`, `super::…` and `self::…` resolved against
//! the file's own module path, grouped imports (`use crate::{a, b}`), paths inside macro
//! calls, and a child module's name. `use crate as …` is refused: an alias of the crate root
//! would hide every import made through it. Test items (`#[cfg(test)]`, down to the end of
//! that one item) are left out: they may build what they need from anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

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

/// A module's path from the crate root: `["host", "state_dir", "dir"]`; the root is `[]`.
type ModPath = Vec<String>;

/// What a file names.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone)]
enum Named {
    /// A path from the crate root (it may go on past the module, into an item).
    Path(ModPath),
    /// Something the check cannot follow, and so refuses.
    Refused(String),
}

/// `#[cfg(test)]`, or `#[cfg(all(test, …))]`: an item compiled only for the unit tests.
fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        if !attr.path().is_ident("cfg") {
            return false;
        }
        let Ok(meta) = attr.parse_args::<syn::Meta>() else {
            return false;
        };
        match meta {
            syn::Meta::Path(p) => p.is_ident("test"),
            syn::Meta::List(list) if list.path.is_ident("all") => list
                .parse_args_with(
                    syn::punctuated::Punctuated::<syn::Meta, syn::Token![,]>::parse_terminated,
                )
                .is_ok_and(|all| all.iter().any(|m| m.path().is_ident("test"))),
            _ => false,
        }
    })
}

fn item_attrs(item: &syn::Item) -> &[syn::Attribute] {
    use syn::Item::*;
    match item {
        Const(i) => &i.attrs,
        Enum(i) => &i.attrs,
        ExternCrate(i) => &i.attrs,
        Fn(i) => &i.attrs,
        ForeignMod(i) => &i.attrs,
        Impl(i) => &i.attrs,
        Macro(i) => &i.attrs,
        Mod(i) => &i.attrs,
        Static(i) => &i.attrs,
        Struct(i) => &i.attrs,
        Trait(i) => &i.attrs,
        TraitAlias(i) => &i.attrs,
        Type(i) => &i.attrs,
        Union(i) => &i.attrs,
        Use(i) => &i.attrs,
        _ => &[],
    }
}

fn impl_item_attrs(item: &syn::ImplItem) -> &[syn::Attribute] {
    match item {
        syn::ImplItem::Const(i) => &i.attrs,
        syn::ImplItem::Fn(i) => &i.attrs,
        syn::ImplItem::Type(i) => &i.attrs,
        syn::ImplItem::Macro(i) => &i.attrs,
        _ => &[],
    }
}

/// Every module path a file names, read with the file's module path `at` and the modules
/// the crate has (`known`, for a child module named without `self::`).
struct Names<'k> {
    known: &'k BTreeSet<ModPath>,
    /// The module the code being read is in (a file's, or an inline `mod … {}` in it).
    at: ModPath,
    named: BTreeSet<Named>,
}

impl Names<'_> {
    /// `segments` as a path from the crate root, if it starts at a module of this crate.
    fn resolve(&self, segments: &[String]) -> Option<Named> {
        let first = segments.first()?;
        let (mut base, rest) = match first.as_str() {
            "crate" => (Vec::new(), &segments[1..]),
            "self" => (self.at.clone(), &segments[1..]),
            "super" => {
                let mut base = self.at.clone();
                let supers = segments.iter().take_while(|s| *s == "super").count();
                for _ in 0..supers {
                    if base.pop().is_none() {
                        return Some(Named::Refused(format!(
                            "`{}` goes above the crate root",
                            segments.join("::")
                        )));
                    }
                }
                (base, &segments[supers..])
            }
            _ => {
                let mut child = self.at.clone();
                child.push(first.clone());
                if !self.known.contains(&child) {
                    // Another crate, a name brought in by a `use` (counted there), a type,
                    // a variant or a local.
                    return None;
                }
                (self.at.clone(), segments)
            }
        };
        base.extend(rest.iter().cloned());
        Some(Named::Path(base))
    }

    fn name(&mut self, segments: &[String]) {
        if let Some(named) = self.resolve(segments) {
            self.named.insert(named);
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => self.use_leaf(prefix, &n.ident),
            syn::UseTree::Rename(r) => {
                if prefix.is_empty() && r.ident == "crate" {
                    self.named.insert(Named::Refused(format!(
                        "`use crate as {}` hides every import made through it: name the module (`crate::…`)",
                        r.rename
                    )));
                } else {
                    self.use_leaf(prefix, &r.ident);
                }
            }
            syn::UseTree::Glob(_) => {
                let path = prefix.clone();
                self.name(&path);
            }
            syn::UseTree::Group(g) => {
                for tree in &g.items {
                    self.use_tree(prefix, tree);
                }
            }
        }
    }

    /// `use a::b::{self}` names `a::b`; `use a::b::c` names `a::b::c`.
    fn use_leaf(&mut self, prefix: &[String], ident: &syn::Ident) {
        let mut path = prefix.to_vec();
        if ident != "self" {
            path.push(ident.to_string());
        }
        self.name(&path);
    }

    /// The paths (`a::b::c`, at least two segments) in a macro call's tokens.
    fn tokens(&mut self, tokens: TokenStream) {
        let trees: Vec<TokenTree> = tokens.into_iter().collect();
        let mut path: Vec<String> = Vec::new();
        let mut colons = 0;
        let mut i = 0;
        let flush = |names: &mut Self, path: &mut Vec<String>| {
            if path.len() >= 2 {
                names.name(path);
            }
            path.clear();
        };
        while i < trees.len() {
            match &trees[i] {
                TokenTree::Ident(ident) => {
                    if !path.is_empty() && colons != 2 {
                        flush(self, &mut path);
                    }
                    // `::a` (another crate) starts no path of ours.
                    let after_leading_colons = path.is_empty() && colons == 2;
                    if !after_leading_colons {
                        path.push(ident.to_string());
                    }
                    colons = 0;
                }
                TokenTree::Punct(p) if p.as_char() == ':' => colons += 1,
                TokenTree::Group(g) => {
                    flush(self, &mut path);
                    colons = 0;
                    self.tokens(g.stream());
                }
                _ => {
                    flush(self, &mut path);
                    colons = 0;
                }
            }
            i += 1;
        }
        flush(self, &mut path);
    }
}

impl<'ast> Visit<'ast> for Names<'_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        if !is_test_only(item_attrs(item)) {
            syn::visit::visit_item(self, item);
        }
    }

    fn visit_impl_item(&mut self, item: &'ast syn::ImplItem) {
        if !is_test_only(impl_item_attrs(item)) {
            syn::visit::visit_impl_item(self, item);
        }
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        // `mod x;` declares a module (read as its own file); it names nothing.
        if let Some((_, items)) = &item.content {
            self.at.push(item.ident.to_string());
            for item in items {
                self.visit_item(item);
            }
            self.at.pop();
        }
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        if item.leading_colon.is_none() {
            self.use_tree(&mut Vec::new(), &item.tree);
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        if path.leading_colon.is_none() && path.segments.len() >= 2 {
            let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
            self.name(&segments);
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.tokens(mac.tokens.clone());
        syn::visit::visit_macro(self, mac);
    }
}

/// What the code of the module at `at` names, given the crate's modules.
fn names_in(code: &str, at: &[&str], known: &BTreeSet<ModPath>) -> BTreeSet<Named> {
    let file = syn::parse_file(code).unwrap_or_else(|e| panic!("not Rust: {e}"));
    let mut names = Names {
        known,
        at: at.iter().map(|s| s.to_string()).collect(),
        named: BTreeSet::new(),
    };
    names.visit_file(&file);
    names.named
}

/// The crate's module tree, from `src/main.rs` down its non-test `mod` declarations: each
/// module's path and the file it is in (an inline module is in its parent's file).
fn module_tree(src: &Path) -> BTreeMap<ModPath, PathBuf> {
    fn walk(
        items: &[syn::Item],
        at: &ModPath,
        dir: &Path,
        file: &Path,
        out: &mut BTreeMap<ModPath, PathBuf>,
    ) {
        for item in items {
            let syn::Item::Mod(m) = item else { continue };
            if is_test_only(&m.attrs) {
                continue;
            }
            let mut path = at.clone();
            path.push(m.ident.to_string());
            let name = m.ident.to_string();
            match &m.content {
                Some((_, inner)) => {
                    out.insert(path.clone(), file.to_path_buf());
                    walk(inner, &path, &dir.join(&name), file, out);
                }
                None => {
                    let flat = dir.join(format!("{name}.rs"));
                    let (child, child_dir) = if flat.exists() {
                        (flat, dir.join(&name))
                    } else {
                        (dir.join(&name).join("mod.rs"), dir.join(&name))
                    };
                    let parsed = parse(&child);
                    out.insert(path.clone(), child.clone());
                    walk(&parsed.items, &path, &child_dir, &child, out);
                }
            }
        }
    }
    let main = src.join("main.rs");
    let mut out = BTreeMap::from([(Vec::new(), main.clone())]);
    walk(&parse(&main).items, &Vec::new(), src, &main, &mut out);
    out
}

fn parse(file: &Path) -> syn::File {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: not Rust: {e}", file.display()))
}

/// The module of `tree` a path from the crate root lands in: its longest prefix that is one.
fn module_of<'t>(tree: &'t BTreeMap<ModPath, PathBuf>, path: &[String]) -> &'t ModPath {
    (0..=path.len())
        .rev()
        .find_map(|n| tree.get_key_value(&path[..n]).map(|(k, _)| k))
        .expect("the crate root is in the tree")
}

/// The module a file starts: `module` itself, or the one whose file an inline module is in.
fn file_module(tree: &BTreeMap<ModPath, PathBuf>, module: &[String]) -> ModPath {
    let mut module = module.to_vec();
    while !module.is_empty() && tree.get(&module[..module.len() - 1]) == tree.get(&module) {
        module.pop();
    }
    module
}

/// Each file of `src/` with the files it names (itself left out), and what it names that the
/// check refuses.
struct Graph {
    src: PathBuf,
    tree: BTreeMap<ModPath, PathBuf>,
    /// A file's module (the first one in it, not an inline one) → the modules it names.
    edges: BTreeMap<ModPath, BTreeSet<ModPath>>,
    refused: Vec<String>,
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let tree = module_tree(&src);
    let known: BTreeSet<ModPath> = tree.keys().cloned().collect();
    let mut edges = BTreeMap::new();
    let mut refused = Vec::new();
    for (module, file) in &tree {
        // An inline module is read with the file it is in.
        if !module.is_empty() && tree.get(&module[..module.len() - 1]) == Some(file) {
            continue;
        }
        let at: Vec<&str> = module.iter().map(String::as_str).collect();
        let code = std::fs::read_to_string(file).unwrap();
        let mut targets = BTreeSet::new();
        for named in names_in(&code, &at, &known) {
            match named {
                Named::Path(path) => {
                    let target = file_module(&tree, module_of(&tree, &path));
                    if tree[&target] != *file {
                        targets.insert(target);
                    }
                }
                Named::Refused(why) => refused.push(format!("{}: {why}", shown(&src, file))),
            }
        }
        edges.insert(module.clone(), targets);
    }
    Graph {
        src,
        tree,
        edges,
        refused,
    }
}

fn shown(src: &Path, file: &Path) -> String {
    file.strip_prefix(src).unwrap().display().to_string()
}

/// `crate::…` for `[]` too.
fn crate_path(path: &[String]) -> String {
    std::iter::once("crate")
        .chain(path.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join("::")
}

/// The imports of `graph` that do not go down the layers.
fn upward_imports(graph: &Graph) -> Vec<String> {
    let mut upward = Vec::new();
    for (module, targets) in &graph.edges {
        let Some(top) = module.first() else { continue };
        let file = shown(&graph.src, &graph.tree[module]);
        let Some(own) = layer_of(top) else {
            panic!(
                "{file} belongs to no layer: add `{top}` to LAYERS in tests/layers.rs, and say in the README where it sits"
            );
        };
        for target in targets {
            let target_top = target.first().map_or("main", String::as_str);
            if target_top == top {
                continue;
            }
            match layer_of(target_top) {
                Some(layer) if layer < own => {}
                _ => upward.push(format!(
                    "{file} ({}) names {}",
                    LAYERS[own].0,
                    crate_path(target)
                )),
            }
        }
    }
    upward
}

/// The groups of two or more files of `graph` that import one another round a cycle (the
/// strongly connected components, Tarjan's algorithm), each with the imports inside it.
fn cycles(edges: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<Vec<(ModPath, ModPath)>> {
    struct Walk<'e> {
        edges: &'e BTreeMap<ModPath, BTreeSet<ModPath>>,
        index: BTreeMap<&'e ModPath, usize>,
        low: BTreeMap<&'e ModPath, usize>,
        stack: Vec<&'e ModPath>,
        on_stack: BTreeSet<&'e ModPath>,
        groups: Vec<BTreeSet<&'e ModPath>>,
    }
    impl<'e> Walk<'e> {
        fn visit(&mut self, v: &'e ModPath) {
            let at = self.index.len();
            self.index.insert(v, at);
            self.low.insert(v, at);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.edges.get(v).into_iter().flatten() {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut group = BTreeSet::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    group.insert(w);
                    if w == v {
                        break;
                    }
                }
                self.groups.push(group);
            }
        }
    }
    let mut walk = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        groups: Vec::new(),
    };
    for v in edges.keys() {
        if !walk.index.contains_key(v) {
            walk.visit(v);
        }
    }
    let mut groups: Vec<Vec<(ModPath, ModPath)>> = walk
        .groups
        .iter()
        .filter(|group| group.len() > 1)
        .map(|group| {
            group
                .iter()
                .flat_map(|from| {
                    edges[*from]
                        .iter()
                        .filter(|to| group.contains(to))
                        .map(|to| ((*from).clone(), to.clone()))
                })
                .collect()
        })
        .collect();
    groups.sort();
    groups
}

#[test]
fn no_files_of_src_import_one_another_round_a_cycle() {
    let graph = graph();
    let shown_cycles: Vec<String> = cycles(&graph.edges)
        .iter()
        .map(|group| {
            group
                .iter()
                .map(|(from, to)| {
                    format!(
                        "  {} names {}",
                        shown(&graph.src, &graph.tree[from]),
                        crate_path(to)
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect();
    assert!(
        shown_cycles.is_empty(),
        "{} groups of files import one another round a cycle:\n{}",
        shown_cycles.len(),
        shown_cycles.join("\n\n")
    );
}

#[test]
fn the_cycle_check_finds_files_that_import_one_another_through_a_third() {
    let path = |p: &str| -> ModPath { p.split("::").map(String::from).collect() };
    let edges = BTreeMap::from([
        (path("doctor"), BTreeSet::from([path("doctor::host")])),
        (path("doctor::host"), BTreeSet::from([path("doctor::tart")])),
        (
            path("doctor::tart"),
            BTreeSet::from([path("doctor"), path("model")]),
        ),
        (
            path("doctor::report"),
            BTreeSet::from([path("doctor::host")]),
        ),
        (path("model"), BTreeSet::new()),
    ]);
    let found = cycles(&edges);
    assert_eq!(
        found,
        [vec![
            (path("doctor"), path("doctor::host")),
            (path("doctor::host"), path("doctor::tart")),
            (path("doctor::tart"), path("doctor")),
        ]]
    );
}

#[test]
fn every_module_of_src_imports_only_from_the_layers_below_its_own() {
    let graph = graph();
    assert!(
        graph.refused.is_empty(),
        "imports the layer check cannot follow:\n{}",
        graph.refused.join("\n")
    );
    let upward = upward_imports(&graph);
    assert!(
        upward.is_empty(),
        "imports that do not go down:\n{}",
        upward.join("\n")
    );
}

fn known(modules: &[&str]) -> BTreeSet<ModPath> {
    modules
        .iter()
        .map(|m| {
            m.split("::")
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .collect()
}

/// The modules of `known` that `code`, read as the module at `at`, names.
fn modules_named(code: &str, at: &str, modules: &[&str]) -> Vec<String> {
    let known = known(modules);
    let tree: BTreeMap<ModPath, PathBuf> =
        known.iter().map(|k| (k.clone(), PathBuf::new())).collect();
    let at: Vec<&str> = at.split("::").filter(|s| !s.is_empty()).collect();
    names_in(code, &at, &known)
        .into_iter()
        .map(|named| match named {
            Named::Path(path) => crate_path(module_of(&tree, &path)),
            Named::Refused(why) => format!("refused: {why}"),
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

const CRATE: &[&str] = &[
    "",
    "host",
    "host::state_dir",
    "host::state_dir::dir",
    "host::vm",
    "settings",
    "job",
    "stages",
    "stages::prepare",
    "doctor",
    "cli",
    "backend",
];

#[test]
fn the_layer_check_sees_an_import_outside_comments_strings_and_tests() {
    let named = modules_named(
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
        "",
        CRATE,
    );
    assert_eq!(named, ["crate::host::vm", "crate::settings"]);
}

#[test]
fn the_layer_check_reads_the_code_after_a_test_module_declared_without_a_body() {
    let named = modules_named(
        "
        #[cfg(test)]
        mod hostile_tests;
        use crate::stages::prepare::prepare;
        pub struct JobContext {}
        ",
        "job",
        CRATE,
    );
    assert_eq!(named, ["crate::stages::prepare"]);
}

#[test]
fn the_layer_check_sees_each_module_of_a_grouped_import() {
    let named = modules_named("use crate::{cli, doctor};", "job", CRATE);
    assert_eq!(named, ["crate::cli", "crate::doctor"]);
}

#[test]
fn the_layer_check_resolves_super_in_a_top_level_module() {
    let named = modules_named("use super::stages::prepare;", "doctor", CRATE);
    assert_eq!(named, ["crate::stages::prepare"]);
}

#[test]
fn the_layer_check_resolves_super_super_super_from_a_nested_file() {
    let named = modules_named(
        "fn f() { super::super::super::backend::destroy() }",
        "host::state_dir::dir",
        CRATE,
    );
    assert_eq!(named, ["crate::backend"]);
}

#[test]
fn the_layer_check_refuses_an_alias_of_the_crate_root() {
    let named = modules_named(
        "use crate as root; fn f() { root::cli::run() }",
        "job",
        CRATE,
    );
    assert_eq!(
        named,
        ["refused: `use crate as root` hides every import made through it: name the module (`crate::…`)"]
    );
}

#[test]
fn the_layer_check_sees_a_path_inside_a_macro_call() {
    let named = modules_named(
        r#"fn f() { let _ = format!("{}", crate::cli::NAME); }"#,
        "job",
        CRATE,
    );
    assert_eq!(named, ["crate::cli"]);
}

#[test]
fn the_layer_check_sees_a_child_module_named_without_self() {
    let named = modules_named("fn f() { state_dir::dir::open() }", "host", CRATE);
    assert_eq!(named, ["crate::host::state_dir::dir"]);
}
