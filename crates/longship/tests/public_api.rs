//! Pins the public API of the published crates (`longship`,
//! `longship-raft`, `longship-storage`, `longship-transport`): the listing
//! extracted from their sources must equal the checked-in `api/<crate>.txt`
//! at the workspace root, so that every change of the surface shows up in
//! review as a change of that file. After an intended change:
//!
//! ```sh
//! LONGSHIP_BLESS_API=1 cargo test -p longship --test public_api
//! ```
//!
//! The extractor reads source text (docs/api.md says why not rustdoc JSON):
//! modules are followed from `lib.rs`; a public module lists every `pub`
//! item, a private one only the items a `pub use` re-exports by name; each
//! item is listed with its signature, public fields, enum variants, trait
//! items, derives, and the `pub fn`s and trait impls of its `impl` blocks.
//! Comments and `#[cfg(test)]` items are left out.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The crates pinned: (name, directory under `crates/`).
const CRATES: &[(&str, &str)] = &[
    ("longship", "longship"),
    ("longship-raft", "raft"),
    ("longship-storage", "storage"),
    ("longship-transport", "transport"),
];

#[test]
fn public_api_matches_the_checked_in_listing() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bless = std::env::var_os("LONGSHIP_BLESS_API").is_some();
    let mut failures = Vec::new();
    for (name, dir) in CRATES {
        let listing = listing(&root.join("crates").join(dir).join("src/lib.rs"));
        let file = root.join("api").join(format!("{name}.txt"));
        if bless {
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, &listing).unwrap();
            continue;
        }
        let pinned = std::fs::read_to_string(&file).unwrap_or_default();
        if pinned != listing {
            failures.push(format!(
                "the public API of {name} differs from api/{name}.txt \
                 (- pinned, + now):\n{}",
                diff(&pinned, &listing)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\nIf the change is intended, run \
         `LONGSHIP_BLESS_API=1 cargo test -p longship --test public_api` \
         and commit api/*.txt with it.",
        failures.join("\n")
    );
}

/// Lines only in `old` (`-`) or only in `new` (`+`), in order.
fn diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    // Longest common subsequence; the listings are a few hundred lines.
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            let _ = writeln!(out, "+ {}", b[j]);
            j += 1;
        } else {
            let _ = writeln!(out, "- {}", a[i]);
            i += 1;
        }
    }
    out
}

// ------------------------------------------------------------ modules

/// One parsed module: its path, whether it is reachable by path from the
/// crate root, and its items.
struct Module {
    path: String,
    public: bool,
    items: Vec<Item>,
}

/// The listing of the crate whose root is `lib`.
fn listing(lib: &Path) -> String {
    let mut modules = Vec::new();
    let text = std::fs::read_to_string(lib).unwrap();
    let dir = lib.parent().unwrap().to_path_buf();
    load_module("crate".into(), true, &text, &dir, &mut modules);
    // Names re-exported anywhere (by their original name), and modules
    // re-exported whole by a glob.
    let mut exported = BTreeSet::new();
    let mut globbed = BTreeSet::new();
    for m in &modules {
        for it in &m.items {
            if it.kind == "use" && it.public {
                use_names(&it.header, &mut exported, &mut globbed);
            }
        }
    }
    // Types whose `impl` blocks are listed.
    let mut types = exported.clone();
    for m in &modules {
        let whole = m.public || globbed.contains(last_segment(&m.path));
        for it in &m.items {
            if it.public && (whole || exported.contains(&it.name)) {
                types.insert(it.name.clone());
            }
        }
    }
    let mut out = String::new();
    for m in &modules {
        let whole = m.public || globbed.contains(last_segment(&m.path));
        let mut lines = Vec::new();
        for it in &m.items {
            match it.kind.as_str() {
                "impl" if types.contains(&it.name) => lines.extend(impl_lines(it)),
                "impl" => {}
                // Definitions are not API unless exported (none are).
                "macro" if it.header.starts_with("macro_rules!") => {}
                "macro" if whole || exported.iter().any(|n| mentions(&it.header, n)) => {
                    lines.push(it.header.clone())
                }
                "macro" => {}
                _ if it.public && (whole || exported.contains(&it.name)) => {
                    lines.extend(item_lines(it));
                }
                _ => {}
            }
        }
        if !lines.is_empty() {
            let vis = if m.public {
                ""
            } else {
                " (private; re-exported items)"
            };
            let _ = writeln!(out, "mod {}{vis}", m.path);
            for l in lines {
                let _ = writeln!(out, "    {l}");
            }
        }
    }
    out
}

fn last_segment(path: &str) -> &str {
    path.rsplit("::").next().unwrap_or(path)
}

/// Whether `text` mentions the identifier `name`.
fn mentions(text: &str, name: &str) -> bool {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .any(|w| w == name)
}

/// Parses module `path` from `text` (its file's directory for submodules
/// is `dir`) and, recursively, its submodules, into `out`.
fn load_module(path: String, public: bool, text: &str, dir: &Path, out: &mut Vec<Module>) {
    let items = parse_items(&strip_comments(text));
    let index = out.len();
    out.push(Module {
        path: path.clone(),
        public,
        items: Vec::new(),
    });
    let mut kept = Vec::new();
    for it in items {
        if it.kind == "mod" {
            let sub = format!("{path}::{}", it.name);
            let sub_public = public && it.public;
            match &it.body {
                Some(body) => load_module(sub, sub_public, body, &dir.join(&it.name), out),
                None => {
                    let (file, sub_dir) = module_file(dir, &it.name);
                    let text = std::fs::read_to_string(&file)
                        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                    load_module(sub, sub_public, &text, &sub_dir, out);
                }
            }
            if it.public {
                kept.push(Item {
                    kind: "pub mod".into(),
                    ..it
                });
            }
        } else {
            kept.push(it);
        }
    }
    // Listed in the parent: `pub mod x` lines belong to the listing, the
    // module's own items come with its own header.
    out[index].items = kept
        .into_iter()
        .map(|mut it| {
            if it.kind == "pub mod" {
                it.kind = "mod".into();
                it.header = format!("pub mod {}", it.name);
                it.body = None;
            }
            it
        })
        .collect();
}

/// The file of module `name` declared in a file whose submodules live in
/// `dir`, and the directory of its own submodules.
fn module_file(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let flat = dir.join(format!("{name}.rs"));
    if flat.exists() {
        (flat, dir.join(name))
    } else {
        (dir.join(name).join("mod.rs"), dir.join(name))
    }
}

/// Collects the original names a `pub use` brings in, and glob sources.
fn use_names(header: &str, names: &mut BTreeSet<String>, globs: &mut BTreeSet<String>) {
    let body = header
        .trim_start_matches("pub use ")
        .trim_end_matches(';')
        .replace(' ', "");
    collect_use(&body, names, globs);
}

fn collect_use(tree: &str, names: &mut BTreeSet<String>, globs: &mut BTreeSet<String>) {
    if let Some(open) = tree.find('{') {
        let prefix = &tree[..open];
        let inner = &tree[open + 1..tree.len() - 1];
        for part in split_top(inner, ',') {
            if part.is_empty() {
                continue;
            }
            collect_use(&format!("{prefix}{part}"), names, globs);
        }
        return;
    }
    let original = tree.split(" as ").next().unwrap_or(tree);
    let original = original.split("as").next().unwrap_or(original);
    let segments: Vec<&str> = original.split("::").collect();
    match segments.last() {
        Some(&"*") if segments.len() >= 2 => {
            globs.insert(segments[segments.len() - 2].to_string());
        }
        Some(last) => {
            names.insert(last.to_string());
        }
        None => {}
    }
}

// ------------------------------------------------------------ items

/// One top-level item of a module or block.
#[derive(Clone, Debug)]
struct Item {
    /// fn, struct, enum, trait, type, const, static, use, mod, impl, macro, union.
    kind: String,
    /// Its name (for an impl: the self type's name).
    name: String,
    public: bool,
    /// Derives and `non_exhaustive`, normalized.
    attrs: Vec<String>,
    /// Everything before the body, normalized (the whole item if it has none).
    header: String,
    /// The text inside the item's braces.
    body: Option<String>,
}

/// The listing lines of a public item.
fn item_lines(it: &Item) -> Vec<String> {
    let mut out: Vec<String> = it.attrs.clone();
    out.push(it.header.clone());
    let Some(body) = &it.body else {
        return out;
    };
    match it.kind.as_str() {
        "struct" | "union" => {
            for field in split_top(&strip_attrs(body), ',') {
                let f = normalize(&field);
                if f.starts_with("pub ") {
                    out.push(format!("    {f}"));
                }
            }
        }
        "enum" => {
            for variant in split_top(&strip_attrs(body), ',') {
                let v = normalize(&variant);
                if !v.is_empty() {
                    out.push(format!("    {v}"));
                }
            }
        }
        "trait" => {
            for inner in parse_items(body) {
                out.push(format!("    {}", inner.header));
            }
        }
        _ => {}
    }
    out
}

/// The listing lines of an impl block of a listed type: a trait impl's
/// header, an inherent impl's `pub fn`s and constants.
fn impl_lines(it: &Item) -> Vec<String> {
    let is_trait_impl = it.header.contains(" for ");
    if is_trait_impl {
        return vec![it.header.clone()];
    }
    let Some(body) = &it.body else {
        return Vec::new();
    };
    parse_items(body)
        .into_iter()
        .filter(|inner| inner.public)
        .map(|inner| format!("{} :: {}", it.header, inner.header))
        .collect()
}

/// Removes attributes (`#[...]`) from a struct or enum body.
fn strip_attrs(body: &str) -> String {
    let mut out = String::new();
    let b = body.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'#' && b.get(i + 1) == Some(&b'[') {
            i = skip_group(b, i + 1);
            continue;
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

/// Splits `text` at `sep` outside brackets, braces, parentheses and `<>`.
fn split_top(text: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut angle = 0i32;
    let mut cur = String::new();
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            '<' => angle += 1,
            // `->` and `=>` are no closing angle brackets.
            '>' if i > 0 && (chars[i - 1] == '-' || chars[i - 1] == '=') => {}
            '>' => angle -= 1,
            _ => {}
        }
        if c == sep && depth == 0 && angle <= 0 {
            out.push(cur.trim().to_string());
            cur.clear();
        } else {
            cur.push(c);
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// Collapses whitespace to single spaces and drops it where rustfmt
/// places none.
fn normalize(s: &str) -> String {
    let joined = s.split_whitespace().collect::<Vec<_>>().join(" ");
    joined
        .replace("( ", "(")
        .replace(" )", ")")
        .replace("< ", "<")
        .replace(" >", ">")
        .replace(" ,", ",")
        .replace(",)", ")")
        .replace(", )", ")")
        .replace(",}", "}")
        .replace(", }", "}")
        .replace("{ ", "{")
        .replace(" }", "}")
        .trim_end_matches(',')
        .trim()
        .to_string()
}

/// Index just past the group opened at `open` (`(`, `[` or `{`).
fn skip_group(b: &[u8], open: usize) -> usize {
    let mut depth = 0;
    let mut i = open;
    while i < b.len() {
        match b[i] {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            b'"' => i = skip_string(b, i),
            _ => {}
        }
        i += 1;
    }
    b.len()
}

/// Index of the closing quote of the string opened at `i`.
fn skip_string(b: &[u8], mut i: usize) -> usize {
    i += 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'"' => return i,
            _ => {}
        }
        i += 1;
    }
    b.len()
}

/// The items of a module or block body (comments already removed).
fn parse_items(text: &str) -> Vec<Item> {
    let b = text.as_bytes();
    let mut items = Vec::new();
    let mut i = 0;
    let mut attrs: Vec<String> = Vec::new();
    let mut cfg_test = false;
    while i < b.len() {
        if b[i].is_ascii_whitespace() || b[i] == b';' {
            i += 1;
            continue;
        }
        if b[i] == b'#' {
            // An attribute (inner ones too).
            let start = i;
            let open = if b.get(i + 1) == Some(&b'!') {
                i + 2
            } else {
                i + 1
            };
            i = skip_group(b, open);
            let attr = normalize(&text[start..i]);
            if attr.starts_with("#[cfg(test") {
                cfg_test = true;
            } else if attr.starts_with("#[derive(") || attr == "#[non_exhaustive]" {
                attrs.push(attr);
            }
            continue;
        }
        // The item: up to `;` at depth 0, or the end of its first brace
        // group for block items (a `const` or `static` goes on to its `;`).
        let start = i;
        let mut body = None;
        let mut header_end = None;
        let mut depth = 0;
        while i < b.len() {
            match b[i] {
                b'"' => i = skip_string(b, i),
                b'\'' => {
                    // A char literal ('x', '\n', '\''), or a lifetime.
                    if b.get(i + 2) == Some(&b'\'') {
                        i += 2;
                    } else if b.get(i + 1) == Some(&b'\\') {
                        i += 2;
                        while i < b.len() && b[i] != b'\'' {
                            i += 1;
                        }
                    }
                }
                b'(' | b'[' => depth += 1,
                b')' | b']' => depth -= 1,
                b'{' if depth == 0 => {
                    let end = skip_group(b, i);
                    let head = normalize(&text[start..i]);
                    let value_item = head.contains('=')
                        && (starts_with_kw(&head, "const")
                            || starts_with_kw(&head, "static")
                            || starts_with_kw(&head, "let"));
                    if value_item || head.ends_with('=') || starts_with_kw(&head, "use") {
                        i = end;
                        continue;
                    }
                    header_end = Some(i);
                    body = Some(text[i + 1..end - 1].to_string());
                    i = end;
                    break;
                }
                b'{' => depth += 1,
                b'}' => depth -= 1,
                b';' if depth == 0 => {
                    i += 1;
                    break;
                }
                _ => {}
            }
            i += 1;
        }
        let raw = &text[start..header_end.unwrap_or(i.min(b.len()))];
        let header = normalize(raw.trim_end_matches(';'));
        let item_attrs = std::mem::take(&mut attrs);
        if std::mem::take(&mut cfg_test) || header.is_empty() {
            continue;
        }
        let is_block = body.is_some();
        items.push(classify(header, body, item_attrs, is_block));
    }
    items
}

fn starts_with_kw(head: &str, kw: &str) -> bool {
    let h = head.trim_start_matches("pub ");
    h.starts_with(&format!("{kw} "))
}

/// Builds an [`Item`] from its normalized header.
fn classify(header: String, body: Option<String>, attrs: Vec<String>, is_block: bool) -> Item {
    let public = header.starts_with("pub ");
    let rest = header.trim_start_matches("pub ");
    let words: Vec<&str> = rest.split([' ', '<', '(', ':', '=', '!']).collect();
    let kind: String;
    let mut name = String::new();
    // Qualifiers before the keyword.
    let mut k = 0;
    while k < words.len()
        && matches!(
            words[k],
            "unsafe" | "async" | "extern" | "\"C\"" | "default"
        )
    {
        k += 1;
    }
    let kw = words.get(k).copied().unwrap_or("");
    match kw {
        "fn" | "struct" | "enum" | "trait" | "type" | "const" | "static" | "mod" | "union" => {
            kind = kw.into();
            name = words.get(k + 1).copied().unwrap_or("").to_string();
            if kind == "static" && name == "mut" {
                name = words.get(k + 2).copied().unwrap_or("").to_string();
            }
        }
        "use" => kind = "use".into(),
        "impl" => {
            kind = "impl".into();
            name = impl_self_type(rest);
        }
        _ if rest.contains('!') => kind = "macro".into(),
        _ => kind = "other".into(),
    }
    // A macro call is listed whole: what it generates is not visible here.
    let header = match (&body, kind == "macro" && is_block) {
        (Some(b), true) => format!("{header} {{ {} }}", normalize(b)),
        _ => header,
    };
    Item {
        kind,
        name,
        public,
        attrs,
        header,
        body,
    }
}

/// The name of the self type of an impl header (`impl<T> Tr for a::B<T>` → `B`).
fn impl_self_type(header: &str) -> String {
    let after = match header.rfind(" for ") {
        Some(p) => &header[p + 5..],
        None => {
            // Skip `impl` and its generics.
            let h = header.trim_start_matches("impl");
            let h = if h.starts_with('<') {
                let mut depth = 0;
                let mut end = 0;
                for (i, c) in h.char_indices() {
                    match c {
                        '<' => depth += 1,
                        '>' => {
                            depth -= 1;
                            if depth == 0 {
                                end = i + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                &h[end..]
            } else {
                h
            };
            h.trim()
        }
    };
    let ty = after.split(" where").next().unwrap_or(after);
    let ty = ty.split('<').next().unwrap_or(ty).trim();
    ty.rsplit("::")
        .next()
        .unwrap_or(ty)
        .trim_start_matches('&')
        .to_string()
}

/// Removes `//` and `/* */` comments (doc comments included), keeping
/// string and char literals intact.
fn strip_comments(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                out.push(b' ');
            }
            b'r' if (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#'))
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) =>
            {
                // A raw string: r"..." or r#"..."#.
                let mut j = i + 1;
                let mut hashes = 0;
                while j < b.len() && b[j] == b'#' {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    out.push(b[i]);
                    i += 1;
                    continue;
                }
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                let mut k = j + 1;
                while k < b.len() && !b[k..].starts_with(&close) {
                    k += 1;
                }
                let end = (k + close.len()).min(b.len());
                out.extend_from_slice(&b[i..end]);
                i = end;
            }
            b'"' => {
                let end = (skip_string(b, i) + 1).min(b.len());
                out.extend_from_slice(&b[i..end]);
                i = end;
            }
            b'\'' => {
                // Char literals may hold a quote or a slash: '"', '/'.
                let end = if b.get(i + 2) == Some(&b'\'') {
                    i + 3
                } else if b.get(i + 1) == Some(&b'\\') {
                    let mut k = i + 2;
                    while k < b.len() && b[k] != b'\'' {
                        k += 1;
                    }
                    k + 1
                } else {
                    i + 1
                };
                let end = end.min(b.len());
                out.extend_from_slice(&b[i..end]);
                i = end;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("UTF-8 source")
}
