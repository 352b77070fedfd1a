//! The one place that writes the Prometheus text exposition format: metric
//! families as values ([`Family`]), rendered with escaped label values.
//! Whoever computes metrics builds families; nobody else formats lines.

use std::fmt::Write as _;

/// A family's `# TYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// One series: label pairs (fixed keys, in the order given) and a value.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

/// A metric family. A family with no series renders only its HELP/TYPE
/// lines, so scrapers still learn the name.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub series: Vec<Series>,
}

impl Family {
    pub fn new(name: &'static str, kind: Kind, help: &'static str) -> Self {
        Self {
            name,
            help,
            kind,
            series: Vec::new(),
        }
    }

    /// Adds a series (builder style).
    pub fn with(mut self, labels: Vec<(&'static str, String)>, value: f64) -> Self {
        self.push(labels, value);
        self
    }

    pub fn push(&mut self, labels: Vec<(&'static str, String)>, value: f64) {
        self.series.push(Series { labels, value });
    }
}

/// A label value with `\`, `"` and newlines escaped, as the format requires.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn value_text(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        // Whole numbers (bytes, counts, unix seconds) without an exponent.
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Appends `families` to `out` in the text format.
pub fn render_into(out: &mut String, families: &[Family]) {
    for f in families {
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help.replace('\n', " "));
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.as_str());
        for s in &f.series {
            out.push_str(f.name);
            if !s.labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in s.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{k}=\"{}\"", escape_label(v));
                }
                out.push('}');
            }
            let _ = writeln!(out, " {}", value_text(s.value));
        }
    }
}

pub fn render(families: &[Family]) -> String {
    let mut out = String::new();
    render_into(&mut out, families);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_help_type_and_labelled_series() {
        let f = Family::new("x_bytes", Kind::Gauge, "Some bytes.")
            .with(
                vec![("namespace", "ns".into()), ("name", "vm".into())],
                42.0,
            )
            .with(vec![], 0.5);
        assert_eq!(
            render(&[f]),
            "# HELP x_bytes Some bytes.\n# TYPE x_bytes gauge\n\
             x_bytes{namespace=\"ns\",name=\"vm\"} 42\nx_bytes 0.5\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let f = Family::new("c_total", Kind::Counter, "c")
            .with(vec![("reason", "a\"b\\c\nd".into())], 1.0);
        assert!(render(&[f]).contains("c_total{reason=\"a\\\"b\\\\c\\nd\"} 1\n"));
    }

    #[test]
    fn empty_family_still_names_itself() {
        let f = Family::new("g", Kind::Gauge, "g");
        assert_eq!(render(&[f]), "# HELP g g\n# TYPE g gauge\n");
    }

    #[test]
    fn large_whole_values_have_no_exponent() {
        let f = Family::new("t", Kind::Gauge, "t").with(vec![], 1_765_000_000.0);
        assert!(render(&[f]).ends_with("t 1765000000\n"));
    }
}
