//! A Helm-subset template renderer, enough for charts/tandem without the helm binary: text/template actions
//! with `{{-`/`-}}` trimming, comments, `define`/`include`, `if`/`else`/`end`, field paths (`.Values.a.b`,
//! `.Release.Namespace`, `.Chart.AppVersion`), string and integer literals and pipelines through `default`,
//! `quote`, `toYaml`, `indent` and `nindent`. Anything else panics, so the chart cannot quietly drift into
//! syntax this renderer does not model; a missing value panics too (Helm would print nothing).

use std::collections::BTreeMap;

use serde_json::Value;

#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Output(String),
    If {
        cond: String,
        then: Vec<Node>,
        otherwise: Vec<Node>,
    },
}

/// Parsed templates: named `define`s plus the top-level body of each file.
#[derive(Default)]
pub struct Templates {
    defines: BTreeMap<String, Vec<Node>>,
    files: BTreeMap<String, Vec<Node>>,
}

enum Token {
    Text(String),
    Action(String),
}

fn tokenize(src: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut rest = src;
    let mut trim_next = false;
    while let Some(start) = rest.find("{{") {
        let mut text = rest[..start].to_owned();
        if trim_next {
            text = text.trim_start().to_owned();
        }
        let after = &rest[start + 2..];
        let end = after.find("}}").expect("unterminated {{");
        let mut action = &after[..end];
        if let Some(a) = action.strip_prefix("- ") {
            text = text.trim_end().to_owned();
            action = a;
        }
        trim_next = false;
        if let Some(a) = action.strip_suffix(" -") {
            trim_next = true;
            action = a;
        }
        tokens.push(Token::Text(text));
        tokens.push(Token::Action(action.trim().to_owned()));
        rest = &after[end + 2..];
    }
    let text = if trim_next { rest.trim_start() } else { rest };
    tokens.push(Token::Text(text.to_owned()));
    tokens
}

impl Templates {
    pub fn add(&mut self, name: &str, src: &str) {
        let mut tokens = tokenize(src).into_iter();
        let (body, closer) = self.parse(&mut tokens);
        assert!(closer.is_none(), "{name}: unexpected {{{{ {} }}}}", closer.unwrap());
        self.files.insert(name.to_owned(), body);
    }

    /// Parses nodes until `end`/`else` (returned) or the end of input.
    fn parse(&mut self, tokens: &mut impl Iterator<Item = Token>) -> (Vec<Node>, Option<String>) {
        let mut nodes = Vec::new();
        while let Some(token) = tokens.next() {
            let action = match token {
                Token::Text(t) => {
                    if !t.is_empty() {
                        nodes.push(Node::Text(t));
                    }
                    continue;
                }
                Token::Action(a) => a,
            };
            if action.starts_with("/*") {
                assert!(action.ends_with("*/"), "unterminated comment: {action}");
            } else if action == "end" || action == "else" {
                return (nodes, Some(action));
            } else if let Some(name) = action.strip_prefix("define ") {
                let name = unquote(name.trim());
                let (body, closer) = self.parse(tokens);
                assert_eq!(closer.as_deref(), Some("end"), "define {name} must close with end");
                self.defines.insert(name, body);
            } else if let Some(cond) = action.strip_prefix("if ") {
                let (then, closer) = self.parse(tokens);
                let otherwise = match closer.as_deref() {
                    Some("end") => vec![],
                    Some("else") => {
                        let (otherwise, closer) = self.parse(tokens);
                        assert_eq!(closer.as_deref(), Some("end"), "if {cond}: else must close with end");
                        otherwise
                    }
                    other => panic!("if {cond}: unclosed ({other:?})"),
                };
                nodes.push(Node::If {
                    cond: cond.to_owned(),
                    then,
                    otherwise,
                });
            } else {
                let keyword = action.split_whitespace().next().unwrap_or_default();
                assert!(
                    !["range", "with", "template", "block", "else if"].contains(&keyword),
                    "unsupported action {{{{ {action} }}}}"
                );
                nodes.push(Node::Output(action));
            }
        }
        (nodes, None)
    }

    /// Renders the file `name` with the root context `ctx` (`{"Values", "Release", "Chart"}`).
    pub fn render(&self, name: &str, ctx: &Value) -> String {
        self.render_nodes(&self.files[name], ctx)
    }

    fn render_nodes(&self, nodes: &[Node], ctx: &Value) -> String {
        let mut out = String::new();
        for node in nodes {
            match node {
                Node::Text(t) => out.push_str(t),
                Node::Output(pipeline) => out.push_str(&to_text(&self.eval(pipeline, ctx), pipeline)),
                Node::If { cond, then, otherwise } => {
                    let branch = if truthy(&self.eval(cond, ctx)) { then } else { otherwise };
                    out.push_str(&self.render_nodes(branch, ctx));
                }
            }
        }
        out
    }

    fn eval(&self, pipeline: &str, ctx: &Value) -> Value {
        let mut piped: Option<Value> = None;
        for command in split_outside_quotes(pipeline, '|') {
            let words = words(&command);
            let (head, args) = words
                .split_first()
                .unwrap_or_else(|| panic!("empty command in {pipeline}"));
            let mut args: Vec<Value> = args.iter().map(|a| self.operand(a, ctx)).collect();
            args.extend(piped.take());
            piped = Some(match head.as_str() {
                "include" => {
                    let [Value::String(name), inner] = &args[..] else {
                        panic!("include takes a name and a context: {pipeline}")
                    };
                    let body = self.defines.get(name).unwrap_or_else(|| panic!("no define {name}"));
                    Value::String(self.render_nodes(body, inner))
                }
                "default" => {
                    let [fallback, given] = &args[..] else {
                        panic!("default takes two values: {pipeline}")
                    };
                    if truthy(given) { given.clone() } else { fallback.clone() }
                }
                "quote" => {
                    let [v] = &args[..] else {
                        panic!("quote takes one value: {pipeline}")
                    };
                    Value::String(serde_json::to_string(&to_text(v, pipeline)).unwrap())
                }
                "toYaml" => {
                    let [v] = &args[..] else {
                        panic!("toYaml takes one value: {pipeline}")
                    };
                    let yaml = serde_yaml::to_string(v).unwrap();
                    Value::String(yaml.trim_end_matches('\n').to_owned())
                }
                "indent" | "nindent" => {
                    let [Value::Number(n), v] = &args[..] else {
                        panic!("{head} takes a width and a value: {pipeline}")
                    };
                    let pad = " ".repeat(n.as_u64().unwrap() as usize);
                    let indented = format!("{pad}{}", to_text(v, pipeline).replace('\n', &format!("\n{pad}")));
                    Value::String(if head == "nindent" {
                        format!("\n{indented}")
                    } else {
                        indented
                    })
                }
                _ if args.is_empty() => self.operand(head, ctx),
                _ => panic!("unsupported function {head} in {pipeline}"),
            });
        }
        piped.unwrap()
    }

    fn operand(&self, word: &str, ctx: &Value) -> Value {
        if word == "." {
            return ctx.clone();
        }
        if let Some(path) = word.strip_prefix('.') {
            return path.split('.').fold(ctx.clone(), |v, key| {
                v.get(key).cloned().unwrap_or_else(|| panic!("no value at {word}"))
            });
        }
        if word.starts_with('"') {
            return Value::String(unquote(word));
        }
        if let Ok(n) = word.parse::<u64>() {
            return Value::from(n);
        }
        panic!("unsupported operand {word}")
    }
}

fn unquote(s: &str) -> String {
    serde_json::from_str(s).unwrap_or_else(|_| panic!("not a string literal: {s}"))
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn to_text(v: &Value, pipeline: &str) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("{{{{ {pipeline} }}}} printed a non-scalar: {other}"),
    }
}

fn split_outside_quotes(s: &str, sep: char) -> Vec<String> {
    let (mut parts, mut current, mut quoted) = (Vec::new(), String::new(), false);
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            c if c == sep && !quoted => parts.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    parts.push(current);
    parts.into_iter().map(|p| p.trim().to_owned()).collect()
}

fn words(command: &str) -> Vec<String> {
    assert!(
        !command.contains('('),
        "parenthesised expressions are not supported: {command}"
    );
    split_outside_quotes(command, ' ')
        .into_iter()
        .filter(|w| !w.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(src: &str, ctx: Value) -> String {
        let mut t = Templates::default();
        t.add("t", src);
        t.render("t", &ctx)
    }

    #[test]
    fn trims_defines_includes_and_pipelines_like_helm() {
        let src = "{{- define \"l\" -}}\na: 1\nb: {{ .Values.v | quote }}\n{{- end }}\nm:\n  labels:\n    {{- include \"l\" . | nindent 4 }}\n  x: {{ .Values.t | default \"d\" }}\n";
        assert_eq!(
            render(src, json!({"Values": {"v": "q", "t": ""}})),
            "\nm:\n  labels:\n    a: 1\n    b: \"q\"\n  x: d\n"
        );
    }

    #[test]
    fn if_else_and_to_yaml() {
        let src = "{{- if .Values.l }}\nl:\n{{- toYaml .Values.l | nindent 2 }}\n{{- else }}\nnone: true\n{{- end }}\n";
        assert_eq!(
            render(src, json!({"Values": {"l": [{"name": "r"}]}})),
            "\nl:\n  - name: r\n"
        );
        assert_eq!(render(src, json!({"Values": {"l": []}})), "\nnone: true\n");
    }

    #[test]
    #[should_panic(expected = "no value at .Values.missing")]
    fn a_missing_value_is_an_error() {
        render("{{ .Values.missing }}", json!({"Values": {}}));
    }
}
