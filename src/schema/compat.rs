//! Schema compatibility, by the Avro specification's schema-resolution rules.
//!
//! [`can_read`] answers "can data written with `writer` be read with `reader`?" and, when not,
//! says which part of the schema breaks which rule. [`Compatibility`] applies it the way a
//! registry's compatibility mode asks, against the latest version or all of them.
//!
//! The rules (Avro specification, "Schema Resolution"):
//! - primitives match their own type; the writer may be *promoted*: int → long, float, double;
//!   long → float, double; float → double; string ↔ bytes;
//! - records match by unqualified name (or a reader alias); each reader field takes the writer
//!   field of the same name (or a reader field alias); a reader field the writer lacks needs a
//!   default; writer fields the reader lacks are skipped;
//! - enums match by name; a writer symbol the reader lacks needs the reader's enum default;
//! - fixed types match by name and size; arrays by items; maps by values;
//! - unions: every writer branch must be readable by some reader branch; a writer union read by a
//!   non-union needs every branch readable by it; a non-union writer needs some reader branch;
//! - logical types resolve as their underlying types.

use std::collections::HashSet;
use std::fmt;

use apache_avro::Schema;
use serde::{Deserialize, Serialize};

use super::avro::{full_name, primitive, writer_field, ParsedSchema, Primitive};

/// One broken rule: where, which rule (a Confluent-style error type), and a sentence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Incompatibility {
    /// The place in the schema, `$` being the top: `$.status`, `$.items[]`, `$.tags{}`.
    pub path: String,
    pub kind: Kind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Kind {
    TypeMismatch,
    NameMismatch,
    FixedSizeMismatch,
    MissingEnumSymbols,
    ReaderFieldMissingDefaultValue,
    MissingUnionBranch,
}

impl fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every reason data written with `writer` cannot be read with `reader`; empty when it can.
pub fn can_read(writer: &ParsedSchema, reader: &ParsedSchema) -> Vec<Incompatibility> {
    let mut checker = Checker {
        writer,
        reader,
        seen: HashSet::new(),
        found: Vec::new(),
    };
    checker.check(writer.schema(), reader.schema(), "$");
    checker.found
}

/// Whether data of `w` (a part of `writer`) can be read as `r` (a part of `reader`).
pub(crate) fn readable(
    writer: &ParsedSchema,
    w: &Schema,
    reader: &ParsedSchema,
    r: &Schema,
) -> bool {
    branch_match(writer, w, reader, r)
}

/// The specification's "match" that picks a union branch: same kind, and for named types the
/// same name (fixed: and size); arrays and maps by their items or values; primitives the same or
/// promotable. It stops at named types (their fields are checked once the branch is chosen), so
/// choosing a branch costs the size of the schema, not more.
fn branch_match(writer: &ParsedSchema, w: &Schema, reader: &ParsedSchema, r: &Schema) -> bool {
    let (w, r) = (writer.deref(w), reader.deref(r));
    match (w, r) {
        (Schema::Union(wu), _) => wu
            .variants()
            .iter()
            .all(|b| branch_match(writer, b, reader, r)),
        (_, Schema::Union(ru)) => ru
            .variants()
            .iter()
            .any(|b| branch_match(writer, w, reader, b)),
        (Schema::Record(a), Schema::Record(b)) => {
            names_match(&a.name, &b.name, b.aliases.as_deref())
        }
        (Schema::Enum(a), Schema::Enum(b)) => names_match(&a.name, &b.name, b.aliases.as_deref()),
        (Schema::Fixed(a), Schema::Fixed(b)) => {
            names_match(&a.name, &b.name, b.aliases.as_deref()) && a.size == b.size
        }
        (Schema::Array(a), Schema::Array(b)) => branch_match(writer, &a.items, reader, &b.items),
        (Schema::Map(a), Schema::Map(b)) => branch_match(writer, &a.types, reader, &b.types),
        (w, r) => primitives_match(w, r),
    }
}

/// Whether two non-named, non-container schemas match: the same primitive, a promotion, or the
/// same fixed-based logical type.
fn primitives_match(w: &Schema, r: &Schema) -> bool {
    if let (Schema::Decimal(a), Schema::Decimal(b)) = (w, r) {
        // Two decimals match only with the same precision and scale (the specification), or the
        // reader would scale every value wrongly.
        return a.precision == b.precision && a.scale == b.scale && a.inner == b.inner;
    }
    let (wb, rb) = (primitive(w), primitive(r));
    let same_primitive = wb == rb && wb != Primitive::Complex;
    same_primitive || promotes(wb, rb) || same_special(w, r)
}

struct Checker<'a> {
    writer: &'a ParsedSchema,
    reader: &'a ParsedSchema,
    /// Named pairs already being checked, so recursive types terminate.
    seen: HashSet<(String, String)>,
    found: Vec<Incompatibility>,
}

impl<'a> Checker<'a> {
    fn fail(&mut self, path: &str, kind: Kind, message: String) {
        self.found.push(Incompatibility {
            path: path.to_owned(),
            kind,
            message,
        });
    }

    fn check(&mut self, w: &'a Schema, r: &'a Schema, path: &str) {
        let (w, r) = (self.writer.deref(w), self.reader.deref(r));
        match (w, r) {
            (Schema::Union(wu), Schema::Union(_)) => {
                for (i, branch) in wu.variants().iter().enumerate() {
                    let branch_path = format!("{path}<{i}>");
                    match self.reader_branch(branch, r) {
                        Some(rb) => self.check(branch, rb, &branch_path),
                        None => {
                            let m = format!("the writer's union branch {} ({}) has no matching branch in the reader's union", i, describe(self.writer.deref(branch)));
                            self.fail(path, Kind::MissingUnionBranch, m);
                        }
                    }
                }
            }
            (Schema::Union(wu), _) => {
                for (i, branch) in wu.variants().iter().enumerate() {
                    let branch_path = format!("{path}<{i}>");
                    self.check(branch, r, &branch_path);
                }
            }
            (_, Schema::Union(_)) => match self.reader_branch(w, r) {
                Some(rb) => self.check(w, rb, path),
                None => {
                    let m = format!(
                        "the writer's {} matches no branch of the reader's union",
                        describe(w)
                    );
                    self.fail(path, Kind::MissingUnionBranch, m);
                }
            },
            (Schema::Record(wr), Schema::Record(rr)) => {
                if !names_match(&wr.name, &rr.name, rr.aliases.as_deref()) {
                    return self.name_mismatch(path, "record", &wr.name, &rr.name);
                }
                let key = (full_name(&wr.name), full_name(&rr.name));
                if !self.seen.insert(key) {
                    return;
                }
                for field in &rr.fields {
                    let field_path = format!("{path}.{}", field.name);
                    match writer_field(wr, field) {
                        Some(wf) => self.check(&wf.schema, &field.schema, &field_path),
                        None if field.default.is_some() => {}
                        None => self.fail(
                            &field_path,
                            Kind::ReaderFieldMissingDefaultValue,
                            format!("the reader's field {} has no default and the writer has no such field", field.name),
                        ),
                    }
                }
            }
            (Schema::Enum(we), Schema::Enum(re)) => {
                if !names_match(&we.name, &re.name, re.aliases.as_deref()) {
                    return self.name_mismatch(path, "enum", &we.name, &re.name);
                }
                if re.default.is_none() {
                    // A set, so that two wide enums cost O(n), not O(n * m).
                    let known: std::collections::HashSet<&String> = re.symbols.iter().collect();
                    let missing: Vec<&str> = we
                        .symbols
                        .iter()
                        .filter(|s| !known.contains(s))
                        .map(String::as_str)
                        .collect();
                    if !missing.is_empty() {
                        let m = format!("the writer's enum symbols [{}] are not in the reader's enum {}, which has no default", missing.join(", "), full_name(&re.name));
                        self.fail(path, Kind::MissingEnumSymbols, m);
                    }
                }
            }
            (Schema::Fixed(wf), Schema::Fixed(rf)) => {
                if !names_match(&wf.name, &rf.name, rf.aliases.as_deref()) {
                    return self.name_mismatch(path, "fixed", &wf.name, &rf.name);
                }
                if wf.size != rf.size {
                    let m = format!(
                        "fixed {} changed size from {} to {}",
                        full_name(&rf.name),
                        wf.size,
                        rf.size
                    );
                    self.fail(path, Kind::FixedSizeMismatch, m);
                }
            }
            (Schema::Array(wa), Schema::Array(ra)) => {
                self.check(&wa.items, &ra.items, &format!("{path}[]"))
            }
            (Schema::Map(wm), Schema::Map(rm)) => {
                self.check(&wm.types, &rm.types, &format!("{path}{{}}"))
            }
            (w, r) => {
                if !primitives_match(w, r) {
                    let m = format!(
                        "the writer's {} cannot be read as the reader's {}",
                        describe(w),
                        describe(r)
                    );
                    self.fail(path, Kind::TypeMismatch, m);
                }
            }
        }
    }

    /// The reader union's branch that data of `w` resolves to: the first that matches.
    fn reader_branch(&self, w: &'a Schema, reader_union: &'a Schema) -> Option<&'a Schema> {
        let Schema::Union(ru) = reader_union else {
            return None;
        };
        ru.variants()
            .iter()
            .find(|rb| branch_match(self.writer, w, self.reader, rb))
    }

    fn name_mismatch(
        &mut self,
        path: &str,
        what: &str,
        w: &apache_avro::schema::Name,
        r: &apache_avro::schema::Name,
    ) {
        let m = format!(
            "the writer's {what} {} is not the reader's {what} {} (nor one of its aliases)",
            full_name(w),
            full_name(r)
        );
        self.fail(path, Kind::NameMismatch, m);
    }
}

/// Named types match on their unqualified names, or when a reader alias names the writer.
fn names_match(
    w: &apache_avro::schema::Name,
    r: &apache_avro::schema::Name,
    reader_aliases: Option<&[apache_avro::schema::Alias]>,
) -> bool {
    w.name == r.name
        || reader_aliases.into_iter().flatten().any(|alias| {
            let alias = alias.fullname(r.namespace.clone());
            alias == full_name(w) || alias.rsplit('.').next() == Some(w.name.as_str())
        })
}

fn promotes(w: Primitive, r: Primitive) -> bool {
    use Primitive::*;
    matches!(
        (w, r),
        (Int, Long | Float | Double)
            | (Long, Float | Double)
            | (Float, Double)
            | (String, Bytes)
            | (Bytes, String)
    )
}

/// `duration` (a logical type on an anonymous fixed) matches only itself.
fn same_special(w: &Schema, r: &Schema) -> bool {
    matches!((w, r), (Schema::Duration, Schema::Duration))
}

fn describe(schema: &Schema) -> String {
    match schema {
        Schema::Record(r) => format!("record {}", full_name(&r.name)),
        Schema::Enum(e) => format!("enum {}", full_name(&e.name)),
        Schema::Fixed(f) => format!("fixed {}", full_name(&f.name)),
        Schema::Ref { name } => full_name(name),
        Schema::Union(_) => "union".into(),
        Schema::Array(_) => "array".into(),
        Schema::Map(_) => "map".into(),
        other => format!("{:?}", primitive(other)).to_lowercase(),
    }
}

/// A subject's compatibility mode: which earlier versions a new one is checked against, and in
/// which direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Compatibility {
    /// The new schema can read data written with the latest one.
    Backward,
    /// The new schema can read data written with every earlier one. keel's default.
    BackwardTransitive,
    /// The latest schema can read data written with the new one.
    Forward,
    ForwardTransitive,
    /// Backward and forward, against the latest.
    Full,
    FullTransitive,
    None,
}

impl Compatibility {
    pub const ALL: [Compatibility; 7] = [
        Self::Backward,
        Self::BackwardTransitive,
        Self::Forward,
        Self::ForwardTransitive,
        Self::Full,
        Self::FullTransitive,
        Self::None,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backward => "BACKWARD",
            Self::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Self::Forward => "FORWARD",
            Self::ForwardTransitive => "FORWARD_TRANSITIVE",
            Self::Full => "FULL",
            Self::FullTransitive => "FULL_TRANSITIVE",
            Self::None => "NONE",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Checks `new` against `existing` (oldest first, as `(version, schema)`); every
    /// incompatibility is prefixed with the version and direction it breaks.
    pub fn check(
        self,
        new: &ParsedSchema,
        existing: &[(i32, &ParsedSchema)],
    ) -> Vec<Incompatibility> {
        let (backward, forward, transitive) = match self {
            Self::None => return Vec::new(),
            Self::Backward => (true, false, false),
            Self::BackwardTransitive => (true, false, true),
            Self::Forward => (false, true, false),
            Self::ForwardTransitive => (false, true, true),
            Self::Full => (true, true, false),
            Self::FullTransitive => (true, true, true),
        };
        let against: &[(i32, &ParsedSchema)] = match existing.split_last() {
            Some((last, _)) if !transitive => std::slice::from_ref(last),
            _ => existing,
        };
        let mut found = Vec::new();
        for (version, old) in against {
            if backward {
                for mut i in can_read(old, new) {
                    i.message = format!(
                        "new schema cannot read data written with version {version}: {}",
                        i.message
                    );
                    found.push(i);
                }
            }
            if forward {
                for mut i in can_read(new, old) {
                    i.message = format!(
                        "version {version} cannot read data written with the new schema: {}",
                        i.message
                    );
                    found.push(i);
                }
            }
        }
        found
    }
}

impl fmt::Display for Compatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
#[path = "compat_tests.rs"]
mod tests;
