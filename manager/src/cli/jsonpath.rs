//! kubectl's JSONPath template syntax (`-o jsonpath='...'`), the subset the
//! seed's commands and scripts use:
//!
//! - text outside `{}` is printed as is;
//! - `{.a.b.c}` field paths, `{.items[0].x}` indices (negative counts from
//!   the end), `{.items[*].x}` wildcards, `{.a['k.with.dots']}` and `\.`
//!   escapes for keys with dots, `{@}` / `{$}` for the current / root object;
//! - `{"text"}` quoted literals with `\n`, `\t`, `\"`, `\\` escapes;
//! - `{range <path>}...{end}`: the body once per result, with `.` paths in
//!   the body relative to that result;
//! - filters `[?(@.type=="Ready")]`, `[?(@.x!='y')]` and `[?(@.x)]`
//!   (existence) over a list.
//!
//! Output follows client-go's `JSONPath.PrintResults` as kubectl runs it
//! (`AllowMissingKeys(true)`): a missing key, or an index past the end,
//! yields no result and prints nothing; several results of one expression
//! are separated by a space; strings print raw, numbers and booleans as
//! their text, `null` as `null`, maps and lists as compact JSON.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("jsonpath template {template:?}: {reason}")]
pub struct JsonPathError {
    pub template: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    Index(i64),
    Wildcard,
    /// Keep list elements where `path` exists (op None) or compares
    /// (true: ==, false: !=).
    Filter {
        path: Vec<Step>,
        op: Option<(bool, Value)>,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Path {
    /// Relative to the current object (`.x`, `@.x`).
    Current(Vec<Step>),
    /// Relative to the root (`$.x`).
    Root(Vec<Step>),
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Text(String),
    Expr(Path),
    Range(Path, Vec<Node>),
}

/// A parsed template; `render` it against any number of objects.
#[derive(Debug, Clone)]
pub struct Template {
    nodes: Vec<Node>,
}

impl Template {
    pub fn parse(template: &str) -> Result<Self, JsonPathError> {
        let err = |reason: String| JsonPathError {
            template: template.to_owned(),
            reason,
        };
        // Tokenise into text and `{...}` actions.
        let mut actions: Vec<(bool, String)> = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            match rest.find('{') {
                None => {
                    actions.push((false, rest.to_owned()));
                    break;
                }
                Some(i) => {
                    if i > 0 {
                        actions.push((false, rest[..i].to_owned()));
                    }
                    let body = &rest[i + 1..];
                    let end = find_close(body).ok_or_else(|| err("unclosed {".into()))?;
                    actions.push((true, body[..end].trim().to_owned()));
                    rest = &body[end + 1..];
                }
            }
        }
        let mut stack: Vec<(Option<Path>, Vec<Node>)> = vec![(None, Vec::new())];
        for (is_action, s) in actions {
            let top = &mut stack.last_mut().expect("stack never empty").1;
            if !is_action {
                top.push(Node::Text(s));
            } else if s == "end" {
                if stack.len() == 1 {
                    return Err(err("{end} without {range}".into()));
                }
                let (path, body) = stack.pop().expect("checked length");
                let path = path.expect("range frames carry a path");
                stack
                    .last_mut()
                    .expect("outer frame")
                    .1
                    .push(Node::Range(path, body));
            } else if let Some(p) = s.strip_prefix("range ") {
                let path = parse_path(p.trim()).map_err(err)?;
                stack.push((Some(path), Vec::new()));
            } else if s.starts_with('"') || s.starts_with('\'') {
                top.push(Node::Text(unquote(&s).map_err(err)?));
            } else {
                top.push(Node::Expr(parse_path(&s).map_err(err)?));
            }
        }
        if stack.len() != 1 {
            return Err(err("{range} without {end}".into()));
        }
        Ok(Self {
            nodes: stack.pop().expect("one frame").1,
        })
    }

    pub fn render(&self, root: &Value) -> String {
        let mut out = String::new();
        render_nodes(&self.nodes, root, root, &mut out);
        out
    }
}

fn find_close(s: &str) -> Option<usize> {
    // A `}` inside a quoted literal or a ['...'] key does not close.
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match (quote, c) {
            (_, '\\') => escaped = true,
            (Some(q), c) if c == q => quote = None,
            (None, '"') | (None, '\'') => quote = Some(c),
            (None, '}') => return Some(i),
            _ => {}
        }
    }
    None
}

fn unquote(s: &str) -> Result<String, String> {
    let q = s.chars().next().unwrap_or('"');
    let inner = s
        .strip_prefix(q)
        .and_then(|r| r.strip_suffix(q))
        .ok_or_else(|| format!("unterminated string {s}"))?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some(c) => out.push(c),
            None => out.push('\\'),
        }
    }
    Ok(out)
}

fn parse_path(s: &str) -> Result<Path, String> {
    let (root, mut rest) = if let Some(r) = s.strip_prefix('$') {
        (true, r)
    } else if let Some(r) = s.strip_prefix('@') {
        (false, r)
    } else if s.starts_with('.') || s.starts_with('[') {
        (false, s)
    } else {
        return Err(format!(
            "unrecognised expression {s:?} (expected a path starting with '.')"
        ));
    };
    let mut steps = Vec::new();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            if r.starts_with('.') {
                return Err("recursive descent (..) is not supported".into());
            }
            // A field name runs to the next unescaped '.' or '['.
            let mut name = String::new();
            let mut chars = r.char_indices().peekable();
            let mut end = r.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            name.push(n);
                        }
                    }
                    '.' | '[' => {
                        end = i;
                        break;
                    }
                    c => name.push(c),
                }
            }
            rest = &r[end..];
            if name == "*" {
                steps.push(Step::Wildcard);
            } else if !name.is_empty() {
                steps.push(Step::Field(name));
            }
        } else if let Some(r) = rest.strip_prefix('[') {
            if let Some(f) = r.strip_prefix("?(") {
                let end = f.find(")]").ok_or("unclosed filter [?(...)]")?;
                steps.push(parse_filter(f[..end].trim())?);
                rest = &f[end + 2..];
                continue;
            }
            let close = if r.starts_with('\'') || r.starts_with('"') {
                let q = &r[..1];
                let qend = r[1..].find(q).ok_or("unterminated quoted key")? + 1;
                if !r[qend + 1..].starts_with(']') {
                    return Err("expected ] after quoted key".into());
                }
                steps.push(Step::Field(r[1..qend].to_owned()));
                qend + 1
            } else {
                let close = r.find(']').ok_or("unclosed [")?;
                let inner = r[..close].trim();
                if inner == "*" {
                    steps.push(Step::Wildcard);
                } else if inner.contains(':') || inner.contains(',') {
                    return Err(format!("[{inner}]: slices and unions are not supported"));
                } else {
                    let i: i64 = inner.parse().map_err(|_| format!("bad index [{inner}]"))?;
                    steps.push(Step::Index(i));
                }
                close
            };
            rest = &r[close + 1..];
        } else {
            return Err(format!("unexpected {rest:?}"));
        }
    }
    Ok(if root {
        Path::Root(steps)
    } else {
        Path::Current(steps)
    })
}

/// `@.a.b == "x"`, `@.a != 'x'`, `@.n == 3`, `@.flag == true`, `@.a`.
fn parse_filter(expr: &str) -> Result<Step, String> {
    let (lhs, op) = match (expr.find("=="), expr.find("!=")) {
        (Some(i), _) => (&expr[..i], Some((true, &expr[i + 2..]))),
        (None, Some(i)) => (&expr[..i], Some((false, &expr[i + 2..]))),
        (None, None) if expr.contains(['<', '>', '&', '|']) => {
            return Err(format!(
                "filter {expr:?}: only ==, != and existence are supported"
            ))
        }
        (None, None) => (expr, None),
    };
    let lhs = lhs.trim();
    if !lhs.starts_with('@') {
        return Err(format!("filter {expr:?} must start with @"));
    }
    let path = match parse_path(lhs)? {
        Path::Current(steps) => steps,
        Path::Root(_) => unreachable!("starts with @"),
    };
    let op = match op {
        None => None,
        Some((eq, lit)) => {
            let lit = lit.trim();
            let value = if lit.starts_with('"') || lit.starts_with('\'') {
                Value::String(unquote(lit)?)
            } else {
                serde_json::from_str::<Value>(lit)
                    .map_err(|_| format!("filter {expr:?}: bad literal {lit:?}"))?
            };
            Some((eq, value))
        }
    };
    Ok(Step::Filter { path, op })
}

fn eval<'v>(path: &Path, current: &'v Value, root: &'v Value) -> Vec<&'v Value> {
    let (mut set, steps) = match path {
        Path::Current(s) => (vec![current], s),
        Path::Root(s) => (vec![root], s),
    };
    for step in steps {
        let mut next = Vec::new();
        for v in set {
            match step {
                Step::Field(f) => next.extend(v.get(f.as_str())),
                Step::Index(i) => {
                    if let Some(a) = v.as_array() {
                        let idx = if *i < 0 { a.len() as i64 + i } else { *i };
                        if idx >= 0 {
                            next.extend(a.get(idx as usize));
                        }
                    }
                }
                Step::Filter { path, op } => {
                    for item in v.as_array().into_iter().flatten() {
                        let found = eval(&Path::Current(path.clone()), item, root);
                        let keep = match op {
                            None => !found.is_empty(),
                            Some((eq, lit)) => found.iter().any(|f| (*f == lit) == *eq),
                        };
                        if keep {
                            next.push(item);
                        }
                    }
                }
                Step::Wildcard => match v {
                    Value::Array(a) => next.extend(a.iter()),
                    Value::Object(m) => next.extend(m.values()),
                    _ => {}
                },
            }
        }
        set = next;
    }
    set
}

fn render_nodes(nodes: &[Node], current: &Value, root: &Value, out: &mut String) {
    for n in nodes {
        match n {
            Node::Text(t) => out.push_str(t),
            Node::Expr(p) => {
                let results = eval(p, current, root);
                for (i, v) in results.iter().enumerate() {
                    if i > 0 {
                        out.push(' ');
                    }
                    out.push_str(&to_text(v));
                }
            }
            Node::Range(p, body) => {
                for item in eval(p, current, root) {
                    render_nodes(body, item, root, out);
                }
            }
        }
    }
}

fn to_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Object(_) | Value::Array(_) => v.to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(t: &str, v: &Value) -> String {
        Template::parse(t).unwrap().render(v)
    }

    fn vmi() -> Value {
        json!({
            "metadata": {"name": "vmi-fedora", "annotations": {"k8s.v1.cni.cncf.io/networks": "n@migration0"}},
            "status": {
                "migrationState": {"targetNodeAddress": "10.200.5.3:43891", "completed": true},
                "conditions": [{"type": "LiveMigratable", "status": "True"}, {"type": "Ready", "status": "False"}],
                "nodeName": "node1",
                "count": 800
            }
        })
    }

    #[test]
    fn the_seed_command() {
        assert_eq!(
            render("{.status.migrationState.targetNodeAddress}", &vmi()),
            "10.200.5.3:43891"
        );
    }

    #[test]
    fn missing_keys_print_nothing_like_kubectl() {
        assert_eq!(render("{.status.nope.deeper}", &vmi()), "");
        assert_eq!(render("a{.spec}b", &vmi()), "ab");
        assert_eq!(render("{.status.conditions[7].type}", &vmi()), "");
    }

    #[test]
    fn indices_wildcards_and_text() {
        let v = vmi();
        assert_eq!(render("{.status.conditions[0].type}", &v), "LiveMigratable");
        assert_eq!(render("{.status.conditions[-1].type}", &v), "Ready");
        assert_eq!(
            render("{.status.conditions[*].status}", &v),
            "True False",
            "several results are space-separated"
        );
        assert_eq!(
            render("node={.status.nodeName} n={.status.count}{\"\\n\"}", &v),
            "node=node1 n=800\n"
        );
        assert_eq!(render("{.status.migrationState.completed}", &v), "true");
    }

    #[test]
    fn maps_and_lists_print_as_compact_json() {
        assert_eq!(
            render("{.status.migrationState}", &vmi()),
            r#"{"completed":true,"targetNodeAddress":"10.200.5.3:43891"}"#
        );
        assert_eq!(render("{.a}", &json!({"a": [1, "x"]})), r#"[1,"x"]"#);
        assert_eq!(render("{.a}", &json!({"a": null})), "null");
    }

    #[test]
    fn keys_with_dots() {
        let v = vmi();
        assert_eq!(
            render(
                r"{.metadata.annotations.k8s\.v1\.cni\.cncf\.io/networks}",
                &v
            ),
            "n@migration0"
        );
        assert_eq!(
            render("{.metadata.annotations['k8s.v1.cni.cncf.io/networks']}", &v),
            "n@migration0"
        );
    }

    #[test]
    fn range_over_items() {
        let list = json!({"items": [{"metadata": {"name": "a"}}, {"metadata": {"name": "b"}}]});
        assert_eq!(
            render("{range .items[*]}{.metadata.name}{\"\\n\"}{end}", &list),
            "a\nb\n"
        );
        assert_eq!(render("{.items[*].metadata.name}", &list), "a b");
        assert_eq!(render("{$.items[1].metadata.name}", &list), "b");
        assert_eq!(render("{@.items[0].metadata.name}", &list), "a");
    }

    #[test]
    fn filters() {
        let v = vmi();
        assert_eq!(
            render(r#"{.status.conditions[?(@.type=="Ready")].status}"#, &v),
            "False"
        );
        assert_eq!(
            render("{.status.conditions[?(@.type != 'Ready')].type}", &v),
            "LiveMigratable"
        );
        assert_eq!(render("{.status.conditions[?(@.reason)].type}", &v), "");
        let list = json!({"items": [{"n": 1, "ok": true}, {"n": 2}]});
        assert_eq!(render("{.items[?(@.n==2)].n}", &list), "2");
        assert_eq!(render("{.items[?(@.ok==true)].n}", &list), "1");
        assert_eq!(render("{.items[?(@.ok)].n}", &list), "1");
    }

    #[test]
    fn bad_templates_are_errors() {
        for t in [
            "{.a",
            "{range .a}",
            "{end}",
            "{foo}",
            "{..a}",
            "{.a[1:2]}",
            "{.a[x]}",
            "{.a[?(@.x<3)]}",
            "{.a[?(.x==1)]}",
            "{.a[?(@.x==1]}",
        ] {
            assert!(Template::parse(t).is_err(), "{t}");
        }
    }
}
