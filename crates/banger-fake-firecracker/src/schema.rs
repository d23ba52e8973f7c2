//! The Firecracker API as its Swagger 2.0 file describes it, and validation of
//! request bodies against it.
//!
//! The fake embeds `firecracker.yaml` (the same file as
//! `shared/firecracker/firecracker.yaml`) and derives from it, generically:
//! which paths and methods exist, which path parameters they take, which
//! definition a request body must match, and whether that body is required.
//! Validation follows the schema keywords the file uses (`type`, `required`,
//! `properties`, `additionalProperties`, `enum`, `minimum`, `maximum`, `items`,
//! `$ref`, `format: int32|int64`) plus the rules Firecracker's own serde types add
//! on top of the file:
//!
//! - unknown fields are refused (Firecracker's structs are
//!   `#[serde(deny_unknown_fields)]`), unless the schema says
//!   `additionalProperties`;
//! - integers must be JSON integers (not `1.0`) and are unsigned, because
//!   Firecracker's integer fields are unsigned Rust integers, except where the
//!   schema says `format: int32`;
//! - `null` stands for "absent" on an optional property that has no `default`
//!   (Firecracker's `Option<T>` fields), and is refused elsewhere;
//! - an `enum` whose description says "case-insensitive" (the logger level)
//!   matches case-insensitively.
//!
//! Error messages read like serde's (`missing field `x``, `unknown field `y`,
//! expected one of ...`), because that is what Firecracker answers with.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Number, Value};
use yaml_rust2::{Yaml, YamlLoader};

/// The Swagger file this fake implements, verbatim.
pub const FIRECRACKER_YAML: &str = include_str!("../firecracker.yaml");

/// Why the Swagger text could not be turned into a [`Spec`].
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The text is not YAML.
    #[error("the Firecracker API spec is not valid YAML")]
    Yaml(#[from] yaml_rust2::ScanError),
    /// The YAML holds no document.
    #[error("the Firecracker API spec is empty")]
    Empty,
    /// A YAML value has no JSON equivalent.
    #[error("the Firecracker API spec holds a value JSON cannot represent: {0}")]
    Unrepresentable(String),
    /// A required top-level section is missing.
    #[error("the Firecracker API spec has no `{0}` section")]
    MissingSection(&'static str),
}

/// Whether `required` lists are enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every listed required property must be present.
    Full,
    /// Required lists are ignored: a partial update (Firecracker's
    /// `PATCH /machine-config` takes every field as optional).
    Partial,
}

/// What kind of rule a value broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViolationKind {
    /// A required property is absent.
    MissingField(String),
    /// A property the schema does not know.
    UnknownField {
        /// The offending key.
        field: String,
        /// The keys the schema knows.
        expected: Vec<String>,
    },
    /// The value has the wrong JSON type.
    InvalidType {
        /// What the value is, serde-style (`string "x"`, `integer `3``).
        found: String,
        /// What the schema wants (`a string`, `an unsigned integer`).
        expected: String,
    },
    /// A string outside the schema's enum.
    UnknownVariant {
        /// The value given.
        found: String,
        /// The values allowed.
        expected: Vec<String>,
    },
    /// A number outside `minimum`/`maximum` or the integer format's range.
    OutOfRange {
        /// The value given.
        found: String,
        /// The bound broken, as text (`an integer >= 1`).
        expected: String,
    },
    /// A `$ref` that names no definition (a bug in the spec file).
    DanglingRef(String),
}

/// A value that breaks the schema, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Dotted path to the value inside the body (`rate_limiter.bandwidth`),
    /// empty for the top level.
    pub at: String,
    /// The rule broken.
    pub kind: ViolationKind,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ViolationKind::MissingField(name) => write!(f, "missing field `{name}`")?,
            ViolationKind::UnknownField { field, expected } => {
                write!(f, "unknown field `{field}`, expected ")?;
                write_one_of(f, expected)?;
            }
            ViolationKind::InvalidType { found, expected } => {
                write!(f, "invalid type: {found}, expected {expected}")?;
            }
            ViolationKind::UnknownVariant { found, expected } => {
                write!(f, "unknown variant `{found}`, expected ")?;
                write_one_of(f, expected)?;
            }
            ViolationKind::OutOfRange { found, expected } => {
                write!(f, "invalid value: {found}, expected {expected}")?;
            }
            ViolationKind::DanglingRef(target) => {
                write!(f, "unresolvable schema reference {target}")?
            }
        }
        if !self.at.is_empty() {
            write!(f, " at `{}`", self.at)?;
        }
        Ok(())
    }
}

fn write_one_of(f: &mut fmt::Formatter<'_>, names: &[String]) -> fmt::Result {
    match names {
        [] => write!(f, "nothing"),
        [one] => write!(f, "`{one}`"),
        [a, b] => write!(f, "`{a}` or `{b}`"),
        many => {
            write!(f, "one of ")?;
            for (i, name) in many.iter().enumerate() {
                if i > 0 {
                    write!(f, ", ")?;
                }
                write!(f, "`{name}`")?;
            }
            Ok(())
        }
    }
}

/// The request body an operation takes.
#[derive(Debug, Clone, PartialEq)]
pub struct BodyParam {
    /// The body's schema (usually a `$ref`).
    pub schema: Value,
    /// Whether the spec marks the body required.
    pub required: bool,
}

/// One method on one path of the spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    /// The spec's `operationId`, e.g. `putGuestDriveByID`.
    pub id: String,
    /// Upper-case HTTP method.
    pub method: String,
    /// The path template, e.g. `/drives/{drive_id}`.
    pub path: String,
    /// The body parameter, if the operation takes one.
    pub body: Option<BodyParam>,
}

/// Where a request lands in the spec.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteMatch {
    /// A known path and method.
    Found {
        /// The operation.
        operation: Operation,
        /// Path parameters by name, e.g. `drive_id` -> `root`.
        params: BTreeMap<String, String>,
    },
    /// A path whose final `{id}` segment is missing (`PUT /drives`).
    MissingId,
    /// Nothing in the spec matches this method and path.
    NotFound,
}

/// The parsed API description.
#[derive(Debug, Clone)]
pub struct Spec {
    doc: Value,
    operations: Vec<Operation>,
}

impl Spec {
    /// Parses the embedded `firecracker.yaml`.
    pub fn embedded() -> Result<Self, SpecError> {
        Self::from_yaml(FIRECRACKER_YAML)
    }

    /// Parses a Swagger 2.0 document written in YAML.
    pub fn from_yaml(text: &str) -> Result<Self, SpecError> {
        let docs = YamlLoader::load_from_str(text)?;
        let first = docs.into_iter().next().ok_or(SpecError::Empty)?;
        let doc = yaml_to_json(&first)?;
        let paths = doc
            .get("paths")
            .and_then(Value::as_object)
            .ok_or(SpecError::MissingSection("paths"))?;
        if doc.get("definitions").and_then(Value::as_object).is_none() {
            return Err(SpecError::MissingSection("definitions"));
        }
        let mut operations = Vec::new();
        for (path, item) in paths {
            let Some(item) = item.as_object() else {
                continue;
            };
            for (method, op) in item {
                let Some(id) = op.get("operationId").and_then(Value::as_str) else {
                    continue;
                };
                let body = op
                    .get("parameters")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .find(|p| p.get("in").and_then(Value::as_str) == Some("body"))
                    .map(|p| BodyParam {
                        schema: p.get("schema").cloned().unwrap_or(Value::Null),
                        required: p.get("required").and_then(Value::as_bool).unwrap_or(false),
                    });
                operations.push(Operation {
                    id: id.to_owned(),
                    method: method.to_ascii_uppercase(),
                    path: path.clone(),
                    body,
                });
            }
        }
        Ok(Self { doc, operations })
    }

    /// The API version the spec describes (`info.version`).
    pub fn version(&self) -> Option<&str> {
        self.doc.get("info")?.get("version")?.as_str()
    }

    /// Every operation in the spec.
    pub fn operations(&self) -> &[Operation] {
        &self.operations
    }

    /// A definition by name.
    pub fn definition(&self, name: &str) -> Option<&Value> {
        self.doc.get("definitions")?.get(name)
    }

    /// Finds the operation for `method` (upper case) on `path` (no query).
    pub fn route(&self, method: &str, path: &str) -> RouteMatch {
        let segments = split_path(path);
        let mut missing_id = false;
        for op in &self.operations {
            let template = split_path(&op.path);
            if template.len() == segments.len() + 1
                && template.last().is_some_and(|s| is_param(s))
                && op.method == method
                && template
                    .iter()
                    .zip(&segments)
                    .all(|(t, s)| is_param(t) || t == s)
            {
                missing_id = true;
            }
            if template.len() != segments.len() || op.method != method {
                continue;
            }
            let mut params = BTreeMap::new();
            let matched = template.iter().zip(&segments).all(|(t, s)| {
                if is_param(t) {
                    params.insert(t[1..t.len() - 1].to_owned(), (*s).to_owned());
                    true
                } else {
                    t == s
                }
            });
            if matched {
                return RouteMatch::Found {
                    operation: op.clone(),
                    params,
                };
            }
        }
        if missing_id {
            RouteMatch::MissingId
        } else {
            RouteMatch::NotFound
        }
    }

    /// Validates `value` against the named definition.
    pub fn validate_definition(
        &self,
        name: &str,
        value: &Value,
        mode: Mode,
    ) -> Result<(), Violation> {
        let schema = Value::String(format!("#/definitions/{name}"));
        let mut reference = Map::new();
        reference.insert("$ref".to_owned(), schema);
        self.validate(&Value::Object(reference), value, mode)
    }

    /// Validates `value` against `schema` (a schema object from the spec).
    pub fn validate(&self, schema: &Value, value: &Value, mode: Mode) -> Result<(), Violation> {
        let mut at = Vec::new();
        self.check(schema, value, mode, &mut at)
    }

    /// The definition `schema` refers to (following `$ref`), or `schema` itself.
    fn resolve<'a>(&'a self, schema: &'a Value) -> Result<&'a Value, ViolationKind> {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(target) => target
                .strip_prefix("#/definitions/")
                .and_then(|name| self.definition(name))
                .ok_or_else(|| ViolationKind::DanglingRef(target.to_owned())),
            None => Ok(schema),
        }
    }

    fn check(
        &self,
        schema: &Value,
        value: &Value,
        mode: Mode,
        at: &mut Vec<String>,
    ) -> Result<(), Violation> {
        let here = |kind| Violation {
            at: at.join("."),
            kind,
        };
        let schema = self.resolve(schema).map_err(here)?;
        let ty = schema.get("type").and_then(Value::as_str);
        match ty {
            Some("object") => self.check_object(schema, value, mode, at),
            Some("array") => {
                let items = value.as_array().ok_or_else(|| {
                    here(ViolationKind::InvalidType {
                        found: describe(value),
                        expected: "a sequence".to_owned(),
                    })
                })?;
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        at.push(i.to_string());
                        self.check(item_schema, item, mode, at)?;
                        at.pop();
                    }
                }
                Ok(())
            }
            Some("string") => {
                let text = value.as_str().ok_or_else(|| {
                    here(ViolationKind::InvalidType {
                        found: describe(value),
                        expected: "a string".to_owned(),
                    })
                })?;
                check_enum(schema, text).map_err(here)
            }
            Some("integer") => check_integer(schema, value).map_err(here),
            Some("number") => match value.is_number() {
                true => Ok(()),
                false => Err(here(ViolationKind::InvalidType {
                    found: describe(value),
                    expected: "a number".to_owned(),
                })),
            },
            Some("boolean") => match value.is_boolean() {
                true => Ok(()),
                false => Err(here(ViolationKind::InvalidType {
                    found: describe(value),
                    expected: "a boolean".to_owned(),
                })),
            },
            // A schema without a type (none in firecracker.yaml today) accepts anything.
            _ => Ok(()),
        }
    }

    fn check_object(
        &self,
        schema: &Value,
        value: &Value,
        mode: Mode,
        at: &mut Vec<String>,
    ) -> Result<(), Violation> {
        let here = |at: &Vec<String>, kind| Violation {
            at: at.join("."),
            kind,
        };
        let object = value.as_object().ok_or_else(|| {
            here(
                at,
                ViolationKind::InvalidType {
                    found: describe(value),
                    expected: "a map".to_owned(),
                },
            )
        })?;
        let empty = Map::new();
        let properties = schema
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        if mode == Mode::Full {
            for name in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(name) = name.as_str() else { continue };
                if !object.contains_key(name) {
                    return Err(here(at, ViolationKind::MissingField(name.to_owned())));
                }
            }
        }
        let additional = schema.get("additionalProperties");
        for (key, field) in object {
            at.push(key.clone());
            match properties.get(key) {
                Some(property) => {
                    let required = schema
                        .get("required")
                        .and_then(Value::as_array)
                        .is_some_and(|r| r.iter().any(|n| n.as_str() == Some(key)));
                    let nullable = !required && property.get("default").is_none();
                    if !(field.is_null() && nullable) {
                        self.check(property, field, mode, at)?;
                    }
                }
                None => match additional {
                    Some(Value::Bool(true)) => {}
                    Some(extra @ Value::Object(_)) => self.check(extra, field, mode, at)?,
                    _ => {
                        at.pop();
                        return Err(here(
                            at,
                            ViolationKind::UnknownField {
                                field: key.clone(),
                                expected: properties.keys().cloned().collect(),
                            },
                        ));
                    }
                },
            }
            at.pop();
        }
        Ok(())
    }

    /// Returns `value` (an object valid for definition `name`) with every
    /// property the definition declares present: absent ones take the
    /// property's `default`, or `null` (Firecracker serializes its `Option`
    /// fields as `null`).
    pub fn normalize(&self, name: &str, value: &Value) -> Value {
        let mut out = value.as_object().cloned().unwrap_or_default();
        let properties = self
            .definition(name)
            .and_then(|d| d.get("properties"))
            .and_then(Value::as_object);
        for (key, property) in properties.into_iter().flatten() {
            if !out.contains_key(key) || out.get(key).is_some_and(Value::is_null) {
                out.insert(
                    key.clone(),
                    property.get("default").cloned().unwrap_or(Value::Null),
                );
            }
        }
        Value::Object(out)
    }
}

fn check_enum(schema: &Value, text: &str) -> Result<(), ViolationKind> {
    let Some(variants) = schema.get("enum").and_then(Value::as_array) else {
        return Ok(());
    };
    let insensitive = schema
        .get("description")
        .and_then(Value::as_str)
        .is_some_and(|d| d.contains("case-insensitive"));
    let names: Vec<String> = variants.iter().map(scalar_text).collect();
    let matches = names.iter().any(|n| match insensitive {
        true => n.eq_ignore_ascii_case(text),
        false => n == text,
    });
    match matches {
        true => Ok(()),
        false => Err(ViolationKind::UnknownVariant {
            found: text.to_owned(),
            expected: names,
        }),
    }
}

fn check_integer(schema: &Value, value: &Value) -> Result<(), ViolationKind> {
    let signed = schema.get("format").and_then(Value::as_str) == Some("int32");
    let expected = match signed {
        true => "a 32-bit integer",
        false => "an unsigned integer",
    };
    let invalid = || ViolationKind::InvalidType {
        found: describe(value),
        expected: expected.to_owned(),
    };
    let Value::Number(n) = value else {
        return Err(invalid());
    };
    let n: i128 = match (n.as_u64(), n.as_i64()) {
        (Some(u), _) => i128::from(u),
        (None, Some(i)) => i128::from(i),
        (None, None) => return Err(invalid()),
    };
    let out_of_range = |bound: String| ViolationKind::OutOfRange {
        found: format!("integer `{n}`"),
        expected: bound,
    };
    if signed && (n < i128::from(i32::MIN) || n > i128::from(i32::MAX)) {
        return Err(out_of_range("a 32-bit integer".to_owned()));
    }
    if !signed && n < 0 {
        return Err(out_of_range("an unsigned integer".to_owned()));
    }
    if let Some(min) = schema.get("minimum").and_then(Value::as_i64)
        && n < i128::from(min)
    {
        return Err(out_of_range(format!("an integer >= {min}")));
    }
    if let Some(max) = schema.get("maximum").and_then(Value::as_u64)
        && n > i128::from(max)
    {
        return Err(out_of_range(format!("an integer <= {max}")));
    }
    Ok(())
}

/// Describes a JSON value the way serde's `invalid type` errors do.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("boolean `{b}`"),
        Value::Number(n) if n.is_f64() => format!("floating point `{n}`"),
        Value::Number(n) => format!("integer `{n}`"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "sequence".to_owned(),
        Value::Object(_) => "map".to_owned(),
    }
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn split_path(path: &str) -> Vec<&str> {
    path.trim_start_matches('/').split_terminator('/').collect()
}

fn is_param(segment: &str) -> bool {
    segment.len() > 2 && segment.starts_with('{') && segment.ends_with('}')
}

fn yaml_to_json(yaml: &Yaml) -> Result<Value, SpecError> {
    Ok(match yaml {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => Value::Number((*i).into()),
        Yaml::Real(text) => {
            let float: f64 = text
                .parse()
                .map_err(|_| SpecError::Unrepresentable(text.clone()))?;
            Value::Number(
                Number::from_f64(float).ok_or_else(|| SpecError::Unrepresentable(text.clone()))?,
            )
        }
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(items) => {
            Value::Array(items.iter().map(yaml_to_json).collect::<Result<_, _>>()?)
        }
        Yaml::Hash(hash) => {
            let mut map = Map::new();
            for (key, value) in hash {
                let key = match key {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    Yaml::Real(r) => r.clone(),
                    other => return Err(SpecError::Unrepresentable(format!("map key {other:?}"))),
                };
                map.insert(key, yaml_to_json(value)?);
            }
            Value::Object(map)
        }
        Yaml::Alias(_) | Yaml::BadValue => {
            return Err(SpecError::Unrepresentable(format!("{yaml:?}")));
        }
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec() -> Spec {
        Spec::embedded().expect("embedded spec parses")
    }

    fn err(def: &str, body: Value) -> String {
        spec()
            .validate_definition(def, &body, Mode::Full)
            .expect_err("body must be refused")
            .to_string()
    }

    #[test]
    fn embedded_spec_is_the_shared_one() {
        let shared = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/firecracker/firecracker.yaml");
        if let Ok(text) = std::fs::read_to_string(&shared) {
            assert_eq!(
                text, FIRECRACKER_YAML,
                "crate copy of firecracker.yaml drifted from shared/"
            );
        }
        assert_eq!(spec().version(), Some("1.17.0-dev"));
    }

    #[test]
    fn every_ref_in_the_spec_resolves() {
        fn walk(spec: &Spec, v: &Value) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(target)) = m.get("$ref") {
                        assert!(spec.resolve(v).is_ok(), "dangling {target}");
                    }
                    m.values().for_each(|x| walk(spec, x));
                }
                Value::Array(a) => a.iter().for_each(|x| walk(spec, x)),
                _ => {}
            }
        }
        let s = spec();
        walk(&s, &s.doc);
    }

    #[test]
    fn routes_follow_the_spec() {
        let s = spec();
        match s.route("PUT", "/drives/root") {
            RouteMatch::Found { operation, params } => {
                assert_eq!(operation.id, "putGuestDriveByID");
                assert_eq!(params.get("drive_id").map(String::as_str), Some("root"));
                let body = operation.body.expect("drive PUT has a body");
                assert!(body.required);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            matches!(s.route("GET", "/"), RouteMatch::Found { operation, .. } if operation.id == "describeInstance")
        );
        assert!(
            matches!(s.route("GET", "/vm/config"), RouteMatch::Found { operation, .. } if operation.id == "getExportVmConfig")
        );
        assert!(
            matches!(s.route("PATCH", "/vm"), RouteMatch::Found { operation, .. } if operation.id == "patchVm")
        );
        assert_eq!(s.route("PUT", "/drives"), RouteMatch::MissingId);
        assert_eq!(s.route("GET", "/nope"), RouteMatch::NotFound);
        assert_eq!(s.route("DELETE", "/drives/root"), RouteMatch::NotFound);
        assert_eq!(s.route("GET", "/actions"), RouteMatch::NotFound);
    }

    #[test]
    fn accepts_a_full_drive() {
        let body = json!({
            "drive_id": "root", "path_on_host": "/x", "is_root_device": true, "is_read_only": false,
            "cache_type": "Writeback", "io_engine": "Async", "partuuid": null,
            "rate_limiter": {"bandwidth": {"size": 1, "refill_time": 100, "one_time_burst": 0}}
        });
        spec()
            .validate_definition("Drive", &body, Mode::Full)
            .expect("valid drive");
    }

    #[test]
    fn refuses_missing_required_field() {
        assert_eq!(
            err("BootSource", json!({"boot_args": "x"})),
            "missing field `kernel_image_path`"
        );
    }

    #[test]
    fn refuses_unknown_field_like_deny_unknown_fields() {
        assert_eq!(
            err("BootSource", json!({"kernel_image_path": "k", "bogus": 1})),
            "unknown field `bogus`, expected one of `boot_args`, `initrd_path`, `kernel_image_path`"
        );
    }

    #[test]
    fn refuses_wrong_types() {
        assert_eq!(
            err(
                "MachineConfiguration",
                json!({"vcpu_count": "2", "mem_size_mib": 128})
            ),
            "invalid type: string \"2\", expected an unsigned integer at `vcpu_count`"
        );
        assert_eq!(
            err(
                "MachineConfiguration",
                json!({"vcpu_count": 2.0, "mem_size_mib": 128})
            ),
            "invalid type: floating point `2.0`, expected an unsigned integer at `vcpu_count`"
        );
        assert_eq!(
            err("Drive", json!({"drive_id": "a", "is_root_device": "yes"})),
            "invalid type: string \"yes\", expected a boolean at `is_root_device`"
        );
        assert_eq!(
            err("Drive", json!([1])),
            "invalid type: sequence, expected a map"
        );
        assert_eq!(
            err("MmdsConfig", json!({"network_interfaces": "eth0"})),
            "invalid type: string \"eth0\", expected a sequence at `network_interfaces`"
        );
    }

    #[test]
    fn refuses_null_for_required_and_defaulted_fields() {
        assert_eq!(
            err("BootSource", json!({"kernel_image_path": null})),
            "invalid type: null, expected a string at `kernel_image_path`"
        );
        assert_eq!(
            err(
                "MachineConfiguration",
                json!({"vcpu_count": 1, "mem_size_mib": 1, "smt": null})
            ),
            "invalid type: null, expected a boolean at `smt`"
        );
        spec()
            .validate_definition(
                "BootSource",
                &json!({"kernel_image_path": "k", "initrd_path": null}),
                Mode::Full,
            )
            .expect("null optional without default is absent");
    }

    #[test]
    fn enforces_enums_and_ranges() {
        assert_eq!(
            err("Vm", json!({"state": "Running"})),
            "unknown variant `Running`, expected `Paused` or `Resumed` at `state`"
        );
        assert_eq!(
            err(
                "MachineConfiguration",
                json!({"vcpu_count": 0, "mem_size_mib": 128})
            ),
            "invalid value: integer `0`, expected an integer >= 1 at `vcpu_count`"
        );
        assert_eq!(
            err(
                "MachineConfiguration",
                json!({"vcpu_count": 33, "mem_size_mib": 128})
            ),
            "invalid value: integer `33`, expected an integer <= 32 at `vcpu_count`"
        );
        assert_eq!(
            err("Vsock", json!({"guest_cid": 2, "uds_path": "/v"})),
            "invalid value: integer `2`, expected an integer >= 3 at `guest_cid`"
        );
        assert_eq!(
            err(
                "MachineConfiguration",
                json!({"vcpu_count": 1, "mem_size_mib": -1})
            ),
            "invalid value: integer `-1`, expected an unsigned integer at `mem_size_mib`"
        );
    }

    #[test]
    fn nested_refs_and_items_are_checked() {
        assert_eq!(
            err(
                "Drive",
                json!({"drive_id": "a", "is_root_device": false, "rate_limiter": {"ops": {"size": 1}}})
            ),
            "missing field `refill_time` at `rate_limiter.ops`"
        );
        assert_eq!(
            err(
                "SnapshotLoadParams",
                json!({"snapshot_path": "s", "network_overrides": [{"iface_id": "a"}]})
            ),
            "missing field `host_dev_name` at `network_overrides.0`"
        );
    }

    #[test]
    fn additional_properties_are_honoured() {
        let s = spec();
        s.validate_definition(
            "MmdsContentsObject",
            &json!({"anything": {"goes": [1]}}),
            Mode::Full,
        )
        .expect("free-form object");
        s.validate_definition(
            "Metrics",
            &json!({"metrics_path": "m", "properties": {"k": "v"}}),
            Mode::Full,
        )
        .expect("string map");
        assert_eq!(
            err(
                "Metrics",
                json!({"metrics_path": "m", "properties": {"k": 1}})
            ),
            "invalid type: integer `1`, expected a string at `properties.k`"
        );
    }

    #[test]
    fn case_insensitive_enum_when_the_spec_says_so() {
        spec()
            .validate_definition("Logger", &json!({"level": "debug"}), Mode::Full)
            .expect("logger level is case-insensitive");
        assert!(err("Logger", json!({"level": "loud"})).starts_with("unknown variant `loud`"));
    }

    #[test]
    fn partial_mode_ignores_required() {
        spec()
            .validate_definition(
                "MachineConfiguration",
                &json!({"vcpu_count": 2}),
                Mode::Partial,
            )
            .expect("partial update");
    }

    #[test]
    fn normalize_fills_defaults_and_nulls() {
        let out = spec().normalize(
            "Drive",
            &json!({"drive_id": "a", "is_root_device": true, "path_on_host": "/p"}),
        );
        assert_eq!(out["cache_type"], "Unsafe");
        assert_eq!(out["io_engine"], "Sync");
        assert_eq!(out["partuuid"], Value::Null);
        assert_eq!(out["path_on_host"], "/p");
        spec()
            .validate_definition("Drive", &out, Mode::Full)
            .expect("normalized output stays valid");
    }
}
