//! Hand-rolled argument parsing that reproduces swift-argument-parser's error and usage
//! formats (kind C failures of the spec, exit 64).

use crate::Fail;

pub struct Opt {
    pub long: &'static str,
    pub short: Option<char>,
    /// Value name for options that take a value (`--cpu <cpu>`), `None` for flags.
    pub value: Option<&'static str>,
}

pub const fn flag(long: &'static str) -> Opt {
    Opt {
        long,
        short: None,
        value: None,
    }
}
pub const fn opt(long: &'static str, value: &'static str) -> Opt {
    Opt {
        long,
        short: None,
        value: Some(value),
    }
}
pub const fn sflag(long: &'static str, short: char) -> Opt {
    Opt {
        long,
        short: Some(short),
        value: None,
    }
}
pub const fn sopt(long: &'static str, short: char, value: &'static str) -> Opt {
    Opt {
        long,
        short: Some(short),
        value: Some(value),
    }
}

pub struct Cmd {
    pub name: &'static str,
    pub opts: &'static [Opt],
    /// Positional value names; `min` of them are required.
    pub positionals: &'static [&'static str],
    pub min: usize,
    /// The last positional takes every remaining argument (`delete <name> ...`).
    pub repeating_last: bool,
    /// Everything after the first positional is passed through untouched (`exec`).
    pub passthrough: bool,
    pub usage: &'static str,
}

#[derive(Default, Debug)]
pub struct Parsed {
    pub opts: Vec<(&'static str, Option<String>)>,
    pub pos: Vec<String>,
}

impl Parsed {
    pub fn has(&self, long: &str) -> bool {
        self.opts.iter().any(|(l, _)| *l == long)
    }
    /// Last value given for an option (swift-argument-parser: last one wins).
    pub fn get(&self, long: &str) -> Option<&str> {
        self.opts
            .iter()
            .rev()
            .find(|(l, _)| *l == long)
            .and_then(|(_, v)| v.as_deref())
    }
    pub fn all(&self, long: &str) -> Vec<String> {
        self.opts
            .iter()
            .filter(|(l, _)| *l == long)
            .filter_map(|(_, v)| v.clone())
            .collect()
    }
}

pub fn usage_error(cmd: &Cmd, msg: impl Into<String>) -> Fail {
    Fail::Usage {
        msg: msg.into(),
        help: None,
        usage: cmd.usage.to_string(),
        cmd: cmd.name.to_string(),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = if a[i - 1] == b[j - 1] { 0 } else { 1 };
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        prev = cur;
    }
    prev[b.len()]
}

pub fn help_text(cmd: &Cmd) -> String {
    let mut s = format!("USAGE: {}\n", cmd.usage);
    if !cmd.positionals.is_empty() {
        s.push_str("\nARGUMENTS:\n");
        for p in cmd.positionals {
            s.push_str(&format!("  <{p}>\n"));
        }
    }
    s.push_str("\nOPTIONS:\n");
    for o in cmd.opts {
        let mut n = String::new();
        if let Some(c) = o.short {
            n.push_str(&format!("-{c}, "));
        }
        n.push_str(&format!("--{}", o.long));
        if let Some(v) = o.value {
            n.push_str(&format!(" <{v}>"));
        }
        s.push_str(&format!("  {n}\n"));
    }
    s.push_str("  --version               Show the version.\n  -h, --help              Show help information.\n");
    s
}

pub fn parse(cmd: &Cmd, args: &[String]) -> Result<Parsed, Fail> {
    let mut p = Parsed::default();
    let mut i = 0;
    let mut only_pos = false;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if only_pos || (cmd.passthrough && !p.pos.is_empty()) {
            p.pos.push(a.clone());
            continue;
        }
        if a == "--" {
            only_pos = true;
            continue;
        }
        if a == "--help" || a == "-h" {
            return Err(Fail::Help(help_text(cmd)));
        }
        if a == "--version" {
            return Err(Fail::Help(format!("{}\n", crate::VERSION)));
        }
        if let Some(body) = a.strip_prefix("--") {
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            let Some(o) = cmd.opts.iter().find(|o| o.long == name) else {
                let given = format!("--{name}");
                let sugg = cmd
                    .opts
                    .iter()
                    .map(|o| format!("--{}", o.long))
                    .filter(|n| edit_distance(n, &given) < 4)
                    .min_by_key(|n| edit_distance(n, &given));
                let msg = match sugg {
                    Some(s) => format!("Unknown option '{given}'. Did you mean '{s}'?"),
                    None => format!("Unknown option '{given}'"),
                };
                return Err(usage_error(cmd, msg));
            };
            match o.value {
                Some(v) => {
                    let val = match inline {
                        Some(val) => val,
                        None => {
                            if i < args.len() && !(args[i].starts_with('-') && args[i].len() > 1) {
                                i += 1;
                                args[i - 1].clone()
                            } else {
                                return Err(usage_error(
                                    cmd,
                                    format!("Missing value for '--{} <{v}>'", o.long),
                                ));
                            }
                        }
                    };
                    p.opts.push((o.long, Some(val)));
                }
                None => {
                    if let Some(val) = inline {
                        return Err(usage_error(
                            cmd,
                            format!("The option '--{}' does not take any value, but '{val}' was specified.", o.long),
                        ));
                    }
                    p.opts.push((o.long, None));
                }
            }
            continue;
        }
        if a.starts_with('-') && a.len() > 1 && !a[1..].starts_with(|c: char| c.is_ascii_digit()) {
            let chars: Vec<char> = a[1..].chars().collect();
            let mut k = 0;
            while k < chars.len() {
                let c = chars[k];
                k += 1;
                let Some(o) = cmd.opts.iter().find(|o| o.short == Some(c)) else {
                    return Err(usage_error(cmd, format!("Unknown option '-{c}'")));
                };
                match o.value {
                    Some(v) => {
                        let rest: String = chars[k..].iter().collect();
                        let val = if !rest.is_empty() {
                            k = chars.len();
                            rest
                        } else if i < args.len() {
                            i += 1;
                            args[i - 1].clone()
                        } else {
                            return Err(usage_error(
                                cmd,
                                format!("Missing value for '-{c} <{v}>'"),
                            ));
                        };
                        p.opts.push((o.long, Some(val)));
                    }
                    None => p.opts.push((o.long, None)),
                }
            }
            continue;
        }
        p.pos.push(a.clone());
    }
    if p.pos.len() < cmd.min {
        return Err(usage_error(
            cmd,
            format!(
                "Missing expected argument '<{}>'",
                cmd.positionals[p.pos.len()]
            ),
        ));
    }
    if !cmd.passthrough && !cmd.repeating_last && p.pos.len() > cmd.positionals.len() {
        let extra: Vec<String> = p.pos[cmd.positionals.len()..].to_vec();
        let msg = if extra.len() == 1 {
            format!("Unexpected argument '{}'", extra[0])
        } else {
            format!(
                "{} unexpected arguments: '{}'",
                extra.len(),
                extra.join("', '")
            )
        };
        return Err(usage_error(cmd, msg));
    }
    Ok(p)
}

/// Parses an integer option the way swift-argument-parser does, with its error text.
pub fn int_opt<T: std::str::FromStr>(
    cmd: &Cmd,
    p: &Parsed,
    long: &'static str,
) -> Result<Option<T>, Fail> {
    let Some(v) = p.get(long) else {
        return Ok(None);
    };
    let vn = cmd
        .opts
        .iter()
        .find(|o| o.long == long)
        .and_then(|o| o.value)
        .unwrap_or("value");
    v.parse::<T>().map(Some).map_err(|_| {
        usage_error(
            cmd,
            format!("The value '{v}' is invalid for '--{long} <{vn}>'"),
        )
    })
}

/// Validates a value of an enum-like option (`--format text|json`).
pub fn enum_opt<'a>(
    cmd: &Cmd,
    p: &'a Parsed,
    long: &'static str,
    allowed: &[&str],
) -> Result<Option<&'a str>, Fail> {
    let Some(v) = p.get(long) else {
        return Ok(None);
    };
    if allowed.contains(&v) {
        return Ok(Some(v));
    }
    let vn = cmd
        .opts
        .iter()
        .find(|o| o.long == long)
        .and_then(|o| o.value)
        .unwrap_or("value");
    let q: Vec<String> = allowed.iter().map(|a| format!("'{a}'")).collect();
    let list = if q.len() <= 2 {
        q.join(" and ")
    } else {
        format!("{} or {}", q[..q.len() - 1].join(", "), q[q.len() - 1])
    };
    Err(usage_error(
        cmd,
        format!("The value '{v}' is invalid for '--{long} <{vn}>'. Please provide one of {list}."),
    ))
}
