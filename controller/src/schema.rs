//! Istio's CRD schemas, checked the way the Kubernetes API server checks a custom resource.
//!
//! The CRDs are Istio 1.30.3's generated `customresourcedefinitions.gen.yaml`, embedded in the binary
//! (see `controller/crds/README.md` for where it comes from). For one whole object (apiVersion, kind,
//! metadata, spec) [`check`] reports:
//!
//! - the OpenAPI v3 structural schema of the served version named by `apiVersion` (types, enums,
//!   `required`, patterns, bounds, `maxItems`/`maxLength`/`maxProperties`, `oneOf`/`anyOf`/`not`
//!   field exclusions, `x-kubernetes-int-or-string`, `nullable`), validated with the `jsonschema`
//!   crate after the few OpenAPI-only keywords are translated to JSON Schema;
//! - unknown fields: the API server prunes them silently, but `kubectl apply` (field validation
//!   `Strict`, kubectl's default) refuses them with `unknown field "spec.x"`, and so does wasmesh.
//!   Fields under `x-kubernetes-preserve-unknown-fields` (WasmPlugin `pluginConfig`, EnvoyFilter
//!   `patch.value`, `status`) are free-form, as there;
//! - `null` on a non-nullable field is pruned (treated as absent), as the API server does;
//! - `x-kubernetes-list-type: map|set` duplicates (`Duplicate value`);
//! - every CEL `x-kubernetes-validations` rule, with the `message` Istio wrote for it, evaluated with
//!   the `cel` crate plus the Kubernetes CEL library functions Istio's rules call (`isURL`, `url`,
//!   `getScheme`, the strings extension's `substring`). A rule that cannot be evaluated is reported as
//!   an error, never passed. Transition rules (`oldSelf`) need the stored object and are skipped, as the
//!   API server skips them on create;
//! - metadata as the API server validates it for a custom resource: `name` (DNS-1123 subdomain),
//!   `namespace` (DNS-1123 label), label keys and values.
//!
//! Each (kind, version) is compiled once, on first use, and shared by every later check.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, LazyLock, OnceLock};

use cel::extractors::This;
use serde_json::{Map, Value};

/// The embedded CRD file (Apache-2.0 data file from istio/api, tag v1.30.3).
pub const CRDS_YAML: &str = include_str!("../crds/istio-1.30.3.gen.yaml");
/// The Istio version the embedded CRDs come from.
pub const ISTIO_VERSION: &str = "1.30.3";

/// One problem found in an object: where (`spec.http[0].route[0].weight`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for SchemaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

fn err(path: impl Into<String>, message: impl Into<String>) -> SchemaError {
    SchemaError { path: path.into(), message: message.into() }
}

/// What an `apiVersion`/`kind` pair is, for callers that skip non-Istio objects in a mixed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KindClass {
    /// A kind defined by Istio's CRDs (whether or not the version is served).
    Istio,
    /// A Kubernetes Gateway API kind (`gateway.networking.k8s.io`, `gateway.networking.x-k8s.io`).
    GatewayApi,
    /// Anything else (Deployment, Service, ConfigMap, another project's CRD...).
    Other,
}

/// Classifies `apiVersion`/`kind` without validating anything.
pub fn classify(api_version: &str, kind: &str) -> KindClass {
    let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
    if crds().kinds.contains_key(&(group.to_string(), kind.to_string())) {
        KindClass::Istio
    } else if group == "gateway.networking.k8s.io" || group == "gateway.networking.x-k8s.io" {
        KindClass::GatewayApi
    } else {
        KindClass::Other
    }
}

/// Every kind in the embedded CRDs: `(group, kind, served versions)`.
pub fn kinds() -> Vec<(String, String, Vec<String>)> {
    crds()
        .kinds
        .iter()
        .map(|((g, k), entry)| (g.clone(), k.clone(), entry.versions.keys().cloned().collect()))
        .collect()
}

/// Validates one whole Kubernetes object against Istio's CRD for its `apiVersion` and `kind`.
/// An empty result means the API server (with `kubectl apply`'s strict field validation) accepts it.
pub fn check(doc: &Value) -> Vec<SchemaError> {
    let Some(obj) = doc.as_object() else {
        return vec![err("", format!("expected a Kubernetes object (a mapping), found {}", json_type(doc)))];
    };
    let api_version = obj.get("apiVersion").and_then(Value::as_str);
    let kind = obj.get("kind").and_then(Value::as_str);
    let (Some(api_version), Some(kind)) = (api_version, kind) else {
        let mut errors = Vec::new();
        if api_version.is_none() {
            errors.push(err(
                "apiVersion",
                "Required value: apiVersion must be set (a string such as networking.istio.io/v1)",
            ));
        }
        if kind.is_none() {
            errors.push(err("kind", "Required value: kind must be set (a string such as VirtualService)"));
        }
        return errors;
    };
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let Some(entry) = crds().kinds.get(&(group.to_string(), kind.to_string())) else {
        let why = match classify(api_version, kind) {
            KindClass::GatewayApi => "is a Gateway API kind, which wasmesh does not support yet".to_string(),
            _ => match crds().kinds.keys().find(|(_, k)| k == kind) {
                Some((g, _)) => format!("is not an Istio CRD kind (Istio's {kind} is in group {g})"),
                None => format!("is not an Istio CRD kind (Istio {ISTIO_VERSION} defines {})", kind_list()),
            },
        };
        return vec![err("kind", format!("{kind} ({api_version}) {why}"))];
    };
    let Some(version_entry) = entry.versions.get(version) else {
        let served: Vec<&str> = entry.versions.keys().map(String::as_str).collect();
        return vec![err(
            "apiVersion",
            format!(
                "no matches for kind \"{kind}\" in version \"{api_version}\": Istio {ISTIO_VERSION} serves {kind} as {}",
                served.iter().map(|v| format!("{group}/{v}")).collect::<Vec<_>>().join(", ")
            ),
        )];
    };
    let compiled = match version_entry.compiled.get_or_init(|| Compiled::new(&version_entry.schema)) {
        Ok(c) => c,
        Err(e) => {
            return vec![err("", format!("internal error: Istio's {kind} {version} schema does not compile: {e}"))]
        }
    };

    // The API server prunes `null` from fields that are not nullable before it validates.
    let mut pruned = doc.clone();
    compiled.root.prune_nulls(&mut pruned);

    let mut errors = check_metadata(pruned.get("metadata"));
    for e in compiled.validator.iter_errors(&pruned) {
        errors.push(structural_error(compiled, &e));
    }
    CEL_CONTEXT.with(|ctx| compiled.root.walk(&pruned, "", &mut ctx.borrow_mut(), &mut errors));
    errors.sort_by(|a, b| a.path.cmp(&b.path));
    errors.dedup();
    errors
}

fn kind_list() -> String {
    let mut kinds: Vec<&str> = crds().kinds.keys().map(|(_, k)| k.as_str()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    kinds.join(", ")
}

// ---------------------------------------------------------------------------------------------
// The CRD file

struct Crds {
    kinds: BTreeMap<(String, String), KindEntry>,
}

struct KindEntry {
    versions: BTreeMap<String, VersionEntry>,
}

struct VersionEntry {
    schema: Value,
    compiled: OnceLock<Result<Compiled, String>>,
}

fn crds() -> &'static Crds {
    static CRDS: LazyLock<Crds> =
        LazyLock::new(|| parse_crds(CRDS_YAML).unwrap_or_else(|_| Crds { kinds: BTreeMap::new() }));
    &CRDS
}

fn parse_crds(yaml: &str) -> Result<Crds, String> {
    use serde::Deserialize;
    let mut kinds = BTreeMap::new();
    for document in yaml_serde::Deserializer::from_str(yaml) {
        let doc = Value::deserialize(document).map_err(|e| e.to_string())?;
        if doc.is_null() {
            continue;
        }
        let spec = &doc["spec"];
        let (Some(group), Some(kind)) = (spec["group"].as_str(), spec["names"]["kind"].as_str()) else {
            return Err("a CustomResourceDefinition without spec.group or spec.names.kind".into());
        };
        let mut versions = BTreeMap::new();
        for v in spec["versions"].as_array().into_iter().flatten() {
            if v["served"].as_bool() != Some(true) {
                continue;
            }
            let (Some(name), Some(schema)) = (v["name"].as_str(), v["schema"].get("openAPIV3Schema")) else {
                continue;
            };
            versions.insert(name.to_string(), VersionEntry { schema: schema.clone(), compiled: OnceLock::new() });
        }
        kinds.insert((group.to_string(), kind.to_string()), KindEntry { versions });
    }
    if kinds.is_empty() {
        return Err("no CustomResourceDefinition in the embedded CRD file".into());
    }
    Ok(Crds { kinds })
}

struct Compiled {
    validator: jsonschema::Validator,
    /// The translated JSON Schema, to name the fields of a failed `oneOf`.
    json_schema: Value,
    root: Node,
}

impl Compiled {
    fn new(schema: &Value) -> Result<Compiled, String> {
        let mut json_schema = to_json_schema(schema);
        // apiVersion, kind and metadata are implicit in a CRD's schema.
        if let Some(props) = json_schema.get_mut("properties").and_then(Value::as_object_mut) {
            props.insert("apiVersion".into(), serde_json::json!({"type": "string"}));
            props.insert("kind".into(), serde_json::json!({"type": "string"}));
            props.insert("metadata".into(), serde_json::json!({"type": "object"}));
        }
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft7)
            .with_pattern_options(jsonschema::PatternOptions::regex())
            .should_validate_formats(false)
            .build(&json_schema)
            .map_err(|e| e.to_string())?;
        let root = Node::new(schema)?;
        Ok(Compiled { validator, json_schema, root })
    }
}

/// Translates one OpenAPI v3 (Kubernetes structural) schema into JSON Schema.
fn to_json_schema(s: &Value) -> Value {
    let Some(obj) = s.as_object() else { return s.clone() };
    let mut out = Map::new();
    let int_or_string = obj.get("x-kubernetes-int-or-string").and_then(Value::as_bool) == Some(true);
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields").and_then(Value::as_bool) == Some(true);
    let nullable = obj.get("nullable").and_then(Value::as_bool) == Some(true);
    for (k, v) in obj {
        match k.as_str() {
            "properties" => {
                let props = v
                    .as_object()
                    .map(|m| m.iter().map(|(name, sub)| (name.clone(), to_json_schema(sub))).collect())
                    .unwrap_or_default();
                out.insert(k.clone(), Value::Object(props));
            }
            "items" | "not" => {
                out.insert(k.clone(), to_json_schema(v));
            }
            "additionalProperties" => {
                let sub = if v.is_object() { to_json_schema(v) } else { v.clone() };
                out.insert(k.clone(), sub);
            }
            "anyOf" | "oneOf" | "allOf" => {
                let subs = v.as_array().map(|a| a.iter().map(to_json_schema).collect()).unwrap_or_default();
                out.insert(k.clone(), Value::Array(subs));
            }
            "type" if int_or_string => {}
            "type" | "required" | "enum" | "pattern" | "minimum" | "maximum" | "minLength" | "maxLength"
            | "minItems" | "maxItems" | "minProperties" | "maxProperties" | "uniqueItems" | "multipleOf" => {
                out.insert(k.clone(), v.clone());
            }
            // Kubernetes validates `format: byte` as base64; the numeric formats (int32, int64,
            // double) and date-time (only under status) add nothing the API server enforces here.
            "format" if v == "byte" => {
                let base64 =
                    serde_json::json!({"pattern": "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"});
                out.insert("allOf".into(), Value::Array(vec![base64]));
            }
            // description, format, nullable, x-kubernetes-*: no JSON Schema meaning (handled here
            // or by the CEL/list walk).
            _ => {}
        }
    }
    if int_or_string && !out.contains_key("anyOf") {
        out.insert("anyOf".into(), serde_json::json!([{"type": "integer"}, {"type": "string"}]));
    }
    if out.get("type").and_then(Value::as_str) == Some("object")
        && !preserve
        && !out.contains_key("additionalProperties")
    {
        out.insert("additionalProperties".into(), Value::Bool(false));
    }
    if nullable {
        if let Some(t) = out.get("type").and_then(Value::as_str).map(str::to_string) {
            out.insert("type".into(), serde_json::json!([t, "null"]));
        }
        if let Some(Value::Array(options)) = out.get_mut("enum") {
            options.push(Value::Null);
        }
    }
    Value::Object(out)
}

// ---------------------------------------------------------------------------------------------
// The schema tree for what JSON Schema cannot say: CEL rules, list-map keys, null pruning, paths.

struct Rule {
    source: String,
    message: String,
    program: Result<cel::Program, String>,
    /// Uses `oldSelf`: a transition rule, only evaluated on update against the stored object.
    transition: bool,
}

#[derive(Default)]
struct Node {
    ty: Option<String>,
    nullable: bool,
    int_or_string: bool,
    rules: Vec<Rule>,
    properties: BTreeMap<String, Node>,
    items: Option<Box<Node>>,
    additional: Option<Box<Node>>,
    list_type: Option<String>,
    list_map_keys: Vec<String>,
}

impl Node {
    fn new(s: &Value) -> Result<Node, String> {
        let mut node = Node {
            ty: s.get("type").and_then(Value::as_str).map(str::to_string),
            nullable: s.get("nullable").and_then(Value::as_bool) == Some(true),
            int_or_string: s.get("x-kubernetes-int-or-string").and_then(Value::as_bool) == Some(true),
            list_type: s.get("x-kubernetes-list-type").and_then(Value::as_str).map(str::to_string),
            list_map_keys: s
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
                .unwrap_or_default(),
            ..Node::default()
        };
        for r in s.get("x-kubernetes-validations").and_then(Value::as_array).into_iter().flatten() {
            let source =
                r.get("rule").and_then(Value::as_str).ok_or("an x-kubernetes-validations entry without rule")?;
            let message = match r.get("message").and_then(Value::as_str) {
                Some(m) => m.to_string(),
                None => format!("failed rule: {source}"),
            };
            let program = cel_env().compile(source).map_err(|e| e.to_string());
            let transition = program.as_ref().is_ok_and(|p| p.references().has_variable("oldSelf"));
            node.rules.push(Rule { source: source.to_string(), message, program, transition });
        }
        if let Some(props) = s.get("properties").and_then(Value::as_object) {
            for (name, sub) in props {
                node.properties.insert(name.clone(), Node::new(sub)?);
            }
        }
        if let Some(items) = s.get("items") {
            node.items = Some(Box::new(Node::new(items)?));
        }
        if let Some(add) = s.get("additionalProperties").filter(|v| v.is_object()) {
            node.additional = Some(Box::new(Node::new(add)?));
        }
        Ok(node)
    }

    fn child(&self, key: &str) -> Option<&Node> {
        self.properties.get(key).or(self.additional.as_deref())
    }

    fn prune_nulls(&self, v: &mut Value) {
        match v {
            Value::Object(map) => {
                map.retain(|k, child| !child.is_null() || self.child(k).is_none_or(|n| n.nullable));
                for (k, child) in map.iter_mut() {
                    if let Some(n) = self.child(k) {
                        n.prune_nulls(child);
                    }
                }
            }
            Value::Array(items) => {
                if let Some(n) = &self.items {
                    items.iter_mut().for_each(|i| n.prune_nulls(i));
                }
            }
            _ => {}
        }
    }

    fn type_matches(&self, v: &Value) -> bool {
        if self.int_or_string {
            return v.is_i64() || v.is_u64() || v.is_string();
        }
        match self.ty.as_deref() {
            Some("object") => v.is_object(),
            Some("array") => v.is_array(),
            Some("string") => v.is_string(),
            Some("integer") => v.is_i64() || v.is_u64(),
            Some("number") => v.is_number(),
            Some("boolean") => v.is_boolean(),
            _ => !v.is_null(),
        }
    }

    /// CEL rules and list-type checks for `v` (at `path`) and everything under it.
    fn walk(&self, v: &Value, path: &str, ctx: &mut cel::Context, errors: &mut Vec<SchemaError>) {
        if !self.type_matches(v) {
            return; // the structural check has reported it; rules assume the declared type
        }
        if !self.rules.is_empty() {
            let this = to_cel(v);
            for rule in &self.rules {
                if let Some(e) = rule.eval(&this, ctx) {
                    errors.push(err(path, e));
                }
            }
        }
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    if let Some(n) = self.properties.get(k) {
                        n.walk(child, &join_field(path, k), ctx, errors);
                    } else if let Some(n) = &self.additional {
                        n.walk(child, &format!("{path}[{k}]"), ctx, errors);
                    }
                }
            }
            Value::Array(items) => {
                self.check_list_type(items, path, errors);
                if let Some(n) = &self.items {
                    for (i, item) in items.iter().enumerate() {
                        n.walk(item, &format!("{path}[{i}]"), ctx, errors);
                    }
                }
            }
            _ => {}
        }
    }

    fn check_list_type(&self, items: &[Value], path: &str, errors: &mut Vec<SchemaError>) {
        match self.list_type.as_deref() {
            Some("map") if !self.list_map_keys.is_empty() => {
                let mut seen = HashSet::new();
                for (i, item) in items.iter().enumerate() {
                    let key: Map<String, Value> =
                        self.list_map_keys.iter().filter_map(|k| item.get(k).map(|v| (k.clone(), v.clone()))).collect();
                    if !seen.insert(Value::Object(key.clone()).to_string()) {
                        errors.push(err(format!("{path}[{i}]"), format!("Duplicate value: {}", Value::Object(key))));
                    }
                }
            }
            Some("set") => {
                let mut seen = HashSet::new();
                for (i, item) in items.iter().enumerate() {
                    if !seen.insert(item.to_string()) {
                        errors.push(err(format!("{path}[{i}]"), format!("Duplicate value: {item}")));
                    }
                }
            }
            _ => {}
        }
    }
}

fn join_field(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

// ---------------------------------------------------------------------------------------------
// CEL

impl Rule {
    /// `None` when the rule holds; otherwise the message to report.
    fn eval(&self, this: &cel::Value, ctx: &mut cel::Context) -> Option<String> {
        let program = match &self.program {
            Ok(p) => p,
            Err(e) => return Some(format!("{} (the rule `{}` could not be compiled: {e})", self.message, self.source)),
        };
        if self.transition {
            return None; // only evaluated on update, against the stored object; there is none here
        }
        ctx.add_variable_from_value("self", this.clone());
        match program.execute(ctx) {
            Ok(cel::Value::Bool(true)) => None,
            Ok(cel::Value::Bool(false)) => Some(self.message.clone()),
            Ok(other) => Some(format!(
                "{} (the rule `{}` gave {other:?}, not a boolean, so it could not be evaluated)",
                self.message, self.source
            )),
            // The API server reports an evaluation error as `<error> evaluating rule: <message>`.
            Err(e) => Some(format!("{} evaluating rule: {}", eval_error(&e, this), self.message)),
        }
    }
}

/// An evaluation error, worded as Go's libraries word it where the cel crate's wording is opaque.
fn eval_error(e: &cel::ExecutionError, this: &cel::Value) -> String {
    let text = e.to_string();
    match this {
        cel::Value::String(s) if text.contains("'duration'") => format!("time: invalid duration {:?}", s.as_str()),
        cel::Value::String(s) if text.contains("'url'") => {
            let why = parse_request_uri(s).err().unwrap_or_default();
            format!("parse {:?}: {why}", s.as_str())
        }
        _ => text,
    }
}

fn cel_env() -> &'static Arc<cel::Env> {
    static ENV: LazyLock<Arc<cel::Env>> = LazyLock::new(|| {
        let mut env = cel::Env::stdlib();
        // Kubernetes enables cel-go's strings extension (`substring`, `lowerAscii`, ...).
        let _ = env.add_extension(cel::extensions::strings);
        Arc::new(env)
    });
    &ENV
}

thread_local! {
    /// One CEL context per thread, reused by every check (`self` is rebound for each rule).
    static CEL_CONTEXT: std::cell::RefCell<cel::Context<'static, 'static>> = std::cell::RefCell::new(cel_context());
}

/// A root context with the Kubernetes CEL library functions Istio's rules call.
fn cel_context() -> cel::Context<'static, 'static> {
    let mut ctx = cel::Context::with_env(Arc::clone(cel_env()));
    // Kubernetes' URL library (k8s.io/apiserver/pkg/cel/library/urls.go): `isURL(string)`,
    // `url(string)` (an error for an invalid URL) and `<URL>.getScheme()`.
    let _ = ctx.add_function("isURL", |s: Arc<String>| parse_request_uri(&s).is_ok());
    let _ = ctx.add_function("url", |s: Arc<String>| -> Result<cel::Value, cel::ExecutionError> {
        let url = parse_request_uri(&s).map_err(|e| cel::ExecutionError::function_error("url", e))?;
        Ok(url_value(&url))
    });
    let _ = ctx.add_function("getScheme", |This(this): This<cel::Value>| -> Result<cel::Value, cel::ExecutionError> {
        url_part(&this, "scheme")
    });
    let _ = ctx.add_function("getHost", |This(this): This<cel::Value>| -> Result<cel::Value, cel::ExecutionError> {
        url_part(&this, "host")
    });
    let _ = ctx
        .add_function("getEscapedPath", |This(this): This<cel::Value>| -> Result<cel::Value, cel::ExecutionError> {
            url_part(&this, "path")
        });
    ctx
}

/// A Kubernetes CEL URL value. The `cel` crate has no URL type; a map under a key no JSON object can
/// produce through these functions stands in for it, and only the URL accessors read it.
const URL_MARKER: &str = "\u{0}k8s.url";

fn url_value(u: &RequestUri) -> cel::Value {
    let mut m: std::collections::HashMap<String, cel::Value> = std::collections::HashMap::new();
    m.insert(URL_MARKER.into(), cel::Value::Bool(true));
    m.insert("scheme".into(), u.scheme.clone().into());
    m.insert("host".into(), u.host.clone().into());
    m.insert("path".into(), u.path.clone().into());
    cel::Value::Map(m.into())
}

fn url_part(v: &cel::Value, part: &str) -> Result<cel::Value, cel::ExecutionError> {
    if let cel::Value::Map(m) = v {
        if m.get(&cel::objects::KeyRef::String(URL_MARKER)).is_some() {
            if let Some(p) = m.get(&cel::objects::KeyRef::String(part)) {
                return Ok(p.clone());
            }
        }
    }
    Err(cel::ExecutionError::function_error(part, "not a URL (made by url())"))
}

struct RequestUri {
    scheme: String,
    host: String,
    path: String,
}

/// Go's `url.ParseRequestURI`, which Kubernetes' `url()`/`isURL()` use: an absolute URI
/// (`scheme://host/path` or `scheme:/path`) or an absolute path (`/path`); no fragment split.
fn parse_request_uri(s: &str) -> Result<RequestUri, String> {
    if s.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err("invalid control character in URL".into());
    }
    if s.is_empty() {
        return Err("empty url".into());
    }
    // Scheme: [a-zA-Z][a-zA-Z0-9+.-]* followed by ':'; a first char outside that grammar means "no scheme".
    let mut scheme = "";
    let mut rest = s;
    for (i, c) in s.char_indices() {
        if c.is_ascii_alphabetic() {
            continue;
        }
        if c.is_ascii_digit() || c == '+' || c == '-' || c == '.' {
            if i == 0 {
                break;
            }
            continue;
        }
        if c == ':' {
            if i == 0 {
                return Err("missing protocol scheme".into());
            }
            scheme = &s[..i];
            rest = &s[i + 1..];
        }
        break;
    }
    let rest = rest.split_once('?').map(|(p, _)| p).unwrap_or(rest);
    if !rest.starts_with('/') {
        return Err("invalid URI for request".into());
    }
    let (host, path) = if !scheme.is_empty() && rest.starts_with("//") {
        let authority_and_path = &rest[2..];
        let (authority, path) = match authority_and_path.find('/') {
            Some(i) => (&authority_and_path[..i], &authority_and_path[i..]),
            None => (authority_and_path, ""),
        };
        let host = authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority);
        validate_host(host)?;
        (host.to_string(), path.to_string())
    } else {
        (String::new(), rest.to_string())
    };
    Ok(RequestUri { scheme: scheme.to_ascii_lowercase(), host, path })
}

fn validate_host(host: &str) -> Result<(), String> {
    let (name, port) = if let Some(stripped) = host.strip_prefix('[') {
        let Some((ip6, after)) = stripped.split_once(']') else {
            return Err("missing ']' in host".into());
        };
        if ip6.parse::<std::net::Ipv6Addr>().is_err() && !ip6.contains('%') {
            return Err(format!("invalid IPv6 host {ip6:?}"));
        }
        (ip6, after.strip_prefix(':'))
    } else {
        match host.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        }
    };
    if let Some(p) = port {
        if !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("invalid port {:?} after host", format!(":{p}")));
        }
    }
    if !host.starts_with('[') {
        for c in name.chars() {
            let ok = c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=%\"<>[]".contains(c) || !c.is_ascii();
            if !ok {
                return Err(format!("invalid character {c:?} in host name"));
            }
        }
    }
    Ok(())
}

/// A JSON value as Kubernetes hands it to CEL (objects and maps become CEL maps).
fn to_cel(v: &Value) -> cel::Value {
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                cel::Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                cel::Value::UInt(u)
            } else {
                cel::Value::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => s.clone().into(),
        Value::Array(a) => cel::Value::List(Arc::new(a.iter().map(to_cel).collect())),
        Value::Object(m) => {
            let map: std::collections::HashMap<String, cel::Value> =
                m.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
            cel::Value::Map(map.into())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Structural errors, worded as the API server words them

fn structural_error(compiled: &Compiled, e: &jsonschema::ValidationError<'_>) -> SchemaError {
    let root = &compiled.root;
    use jsonschema::error::ValidationErrorKind as K;
    let path = pointer_to_path(root, e.instance_path().as_str());
    let instance = e.instance();
    let shown = short_json(instance);
    let body = |what: String| {
        format!("Invalid value: {shown}: {} in body {what}", if path.is_empty() { "<root>" } else { &path })
    };
    match e.kind() {
        K::Required { property } => {
            let p = property.as_str().unwrap_or_default();
            err(join_field(&path, p), "Required value")
        }
        K::AdditionalProperties { unexpected } => {
            let fields: Vec<String> =
                unexpected.iter().map(|f| child_path(root, &path, e.instance_path().as_str(), f)).collect();
            let message = fields.iter().map(|f| format!("unknown field \"{f}\"")).collect::<Vec<_>>().join(", ");
            err(fields.first().cloned().unwrap_or(path.clone()), message)
        }
        K::Enum { options } => {
            let supported: Vec<String> =
                options.as_array().into_iter().flatten().filter(|o| !o.is_null()).map(short_json).collect();
            err(path, format!("Unsupported value: {shown}: supported values: {}", supported.join(", ")))
        }
        K::Type { kind } => {
            // The declared type(s), as the API server names them (a nullable field's `null` left out).
            let debug = format!("{kind:?}").to_lowercase();
            let mut names: Vec<&str> = ["object", "array", "string", "integer", "number", "boolean"]
                .into_iter()
                .filter(|t| debug.contains(t))
                .collect();
            if names.is_empty() {
                names.push("null");
            }
            let actual = json_type(instance);
            let field = if path.is_empty() { "<root>" } else { &path };
            let message = format!(
                "Invalid value: {actual:?}: {field} in body must be of type {}: {actual:?}",
                names.join(" or ")
            );
            err(path.clone(), message)
        }
        K::Minimum { limit } => err(path.clone(), body(format!("should be greater than or equal to {limit}"))),
        K::Maximum { limit } => err(path.clone(), body(format!("should be less than or equal to {limit}"))),
        K::ExclusiveMinimum { limit } => err(path.clone(), body(format!("should be greater than {limit}"))),
        K::ExclusiveMaximum { limit } => err(path.clone(), body(format!("should be less than {limit}"))),
        K::MaxItems { limit } => {
            let n = instance.as_array().map_or(0, Vec::len);
            err(path, format!("Too many: {n}: must have at most {limit} items"))
        }
        K::MinItems { limit } => err(path.clone(), body(format!("should have at least {limit} items"))),
        K::MaxLength { limit } => err(path, format!("Too long: may not be more than {limit} bytes")),
        K::MinLength { limit } => err(path.clone(), body(format!("should be at least {limit} chars long"))),
        K::MaxProperties { limit } => {
            let n = instance.as_object().map_or(0, Map::len);
            err(path, format!("Too many: {n}: must have at most {limit} items"))
        }
        K::MinProperties { limit } => err(path.clone(), body(format!("should have at least {limit} properties"))),
        K::Pattern { pattern } => err(path.clone(), body(format!("should match '{pattern}'"))),
        K::OneOfMultipleValid { .. } | K::OneOfNotValid { .. } | K::Not { .. } => {
            let keyword = compiled.json_schema.pointer(e.schema_path().as_str());
            let fields = exclusive_fields(keyword, instance);
            let detail = if fields.is_empty() {
                String::new()
            } else {
                format!(": only one of {} may be set", fields.join(", "))
            };
            err(path, format!("Invalid value: \"object\": must validate one and only one schema (oneOf){detail}"))
        }
        _ => err(path, e.to_string()),
    }
}

/// The fields of `instance` that the failed `oneOf`/`not` (a protobuf `oneof`: each branch
/// `required` one field) makes mutually exclusive.
fn exclusive_fields(keyword: Option<&Value>, instance: &Value) -> Vec<String> {
    fn required(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::Array(r)) = m.get("required") {
                    out.extend(r.iter().filter_map(Value::as_str).map(str::to_string));
                }
                for k in ["anyOf", "oneOf", "allOf", "not"] {
                    if let Some(sub) = m.get(k) {
                        required(sub, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| required(x, out)),
            _ => {}
        }
    }
    let mut names = Vec::new();
    if let Some(k) = keyword {
        required(k, &mut names);
    }
    let set: std::collections::BTreeSet<String> = names.into_iter().filter(|n| instance.get(n).is_some()).collect();
    set.into_iter().collect()
}

fn child_path(root: &Node, path: &str, pointer: &str, field: &str) -> String {
    let is_map = node_at(root, pointer).is_some_and(|n| n.properties.is_empty() && n.additional.is_some());
    if is_map {
        format!("{path}[{field}]")
    } else {
        join_field(path, field)
    }
}

fn node_at<'a>(root: &'a Node, pointer: &str) -> Option<&'a Node> {
    let mut node = root;
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        node = if node.items.is_some() && seg.parse::<usize>().is_ok() {
            node.items.as_deref()?
        } else {
            node.child(&seg)?
        };
    }
    Some(node)
}

/// `/spec/http/0/route` -> `spec.http[0].route`; map keys as `[key]`, as Kubernetes writes them.
fn pointer_to_path(root: &Node, pointer: &str) -> String {
    let mut path = String::new();
    let mut node = Some(root);
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        let n = node;
        if let Some(items) = n.and_then(|n| n.items.as_deref()).filter(|_| seg.parse::<usize>().is_ok()) {
            path.push_str(&format!("[{seg}]"));
            node = Some(items);
        } else if let Some(p) = n.and_then(|n| n.properties.get(&seg)) {
            path = join_field(&path, &seg);
            node = Some(p);
        } else if let Some(a) = n.and_then(|n| n.additional.as_deref()) {
            path.push_str(&format!("[{seg}]"));
            node = Some(a);
        } else {
            path = join_field(&path, &seg);
            node = None;
        }
    }
    path
}

fn short_json(v: &Value) -> String {
    match v {
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        other => {
            let s = other.to_string();
            if s.len() > 80 {
                format!("{}...", &s[..s.char_indices().nth(77).map_or(s.len(), |(i, _)| i)])
            } else {
                s
            }
        }
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

// ---------------------------------------------------------------------------------------------
// metadata, as the API server validates it for every custom resource

const OBJECT_META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

fn check_metadata(meta: Option<&Value>) -> Vec<SchemaError> {
    let mut errors = Vec::new();
    let Some(meta) = meta else {
        errors.push(err("metadata.name", "Required value: name or generateName is required"));
        return errors;
    };
    let Some(m) = meta.as_object() else {
        return errors; // reported by the structural check
    };
    for k in m.keys() {
        if !OBJECT_META_FIELDS.contains(&k.as_str()) {
            errors.push(err(format!("metadata.{k}"), format!("unknown field \"metadata.{k}\"")));
        }
    }
    match m.get("name") {
        Some(Value::String(name)) => {
            if let Some(why) = dns1123_subdomain(name) {
                errors.push(err("metadata.name", format!("Invalid value: {name:?}: {why}")));
            }
        }
        Some(other) => errors.push(err("metadata.name", format!("Invalid value: {other}: must be a string"))),
        None if m.get("generateName").is_some() => {}
        None => errors.push(err("metadata.name", "Required value: name or generateName is required")),
    }
    match m.get("namespace") {
        Some(Value::String(ns)) => {
            if let Some(why) = dns1123_label(ns) {
                errors.push(err("metadata.namespace", format!("Invalid value: {ns:?}: {why}")));
            }
        }
        Some(other) => errors.push(err("metadata.namespace", format!("Invalid value: {other}: must be a string"))),
        None => {}
    }
    for field in ["labels", "annotations"] {
        match m.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                for (k, v) in map {
                    if let Some(why) = qualified_name(k) {
                        errors.push(err(format!("metadata.{field}"), format!("Invalid value: {k:?}: {why}")));
                    }
                    match v {
                        Value::String(s) if field == "labels" => {
                            if let Some(why) = label_value(s) {
                                errors
                                    .push(err(format!("metadata.labels[{k}]"), format!("Invalid value: {s:?}: {why}")));
                            }
                        }
                        Value::String(_) => {}
                        other => errors.push(err(
                            format!("metadata.{field}[{k}]"),
                            format!("Invalid value: {other}: must be a string"),
                        )),
                    }
                }
            }
            Some(other) => errors
                .push(err(format!("metadata.{field}"), format!("Invalid value: {other}: must be a map of strings"))),
        }
    }
    errors
}

fn is_dns_label_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
}

fn dns1123_label(s: &str) -> Option<String> {
    let ok =
        !s.is_empty() && s.len() <= 63 && s.chars().all(is_dns_label_char) && !s.starts_with('-') && !s.ends_with('-');
    (!ok).then(|| {
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start \
         and end with an alphanumeric character (e.g. 'my-name', or '123-abc'), at most 63 characters"
            .to_string()
    })
}

fn dns1123_subdomain(s: &str) -> Option<String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.')
            .all(|l| !l.is_empty() && l.chars().all(is_dns_label_char) && !l.starts_with('-') && !l.ends_with('-'));
    (!ok).then(|| {
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must \
         start and end with an alphanumeric character (e.g. 'example.com'), at most 253 characters"
            .to_string()
    })
}

fn qualified_name(s: &str) -> Option<String> {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        if dns1123_subdomain(p).is_some() {
            return Some("a qualified name's prefix must be a DNS subdomain".into());
        }
    }
    label_value(name).or_else(|| name.is_empty().then(|| "name part must be non-empty".to_string()))
}

fn label_value(s: &str) -> Option<String> {
    if s.is_empty() {
        return None;
    }
    let ok = s.len() <= 63
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric());
    (!ok).then(|| {
        "must be 63 characters or less and consist of alphanumeric characters, '-', '_' or '.', starting and \
         ending with an alphanumeric character"
            .to_string()
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    fn messages(doc: &Value) -> Vec<String> {
        check(doc).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_embedded_crd_file_is_the_one_its_readme_names() {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(CRDS_YAML.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "dcb43ff6b9af2f629b80b6a82597f5a91db259c757e66cc5353ac007da28351a");
        let readme = include_str!("../crds/README.md");
        assert!(readme.contains(&hex));
    }

    #[test]
    fn every_kind_and_served_version_compiles_and_every_rule_parses() {
        let kinds = kinds();
        assert_eq!(kinds.len(), 15, "{kinds:?}");
        let mut rules = 0;
        for (group, kind, versions) in kinds {
            for v in versions {
                let entry = &crds().kinds[&(group.clone(), kind.clone())].versions[&v];
                let compiled = Compiled::new(&entry.schema).unwrap_or_else(|e| panic!("{kind} {v}: {e}"));
                fn count(n: &Node, rules: &mut usize) {
                    for r in &n.rules {
                        assert!(
                            r.program.is_ok(),
                            "rule `{}` does not parse: {:?}",
                            r.source,
                            r.program.as_ref().err()
                        );
                        *rules += 1;
                    }
                    n.properties.values().for_each(|c| count(c, rules));
                    n.items.iter().chain(n.additional.iter()).for_each(|c| count(c, rules));
                }
                count(&compiled.root, &mut rules);
            }
        }
        assert_eq!(rules, 362, "every x-kubernetes-validations rule in the file is compiled");
    }

    #[test]
    fn kubernetes_url_functions_follow_go_parse_request_uri() {
        for ok in
            ["http://a", "https://a.b:8080/p?q", "oci://reg:5000/x/y:tag", "file:///opt/x.wasm", "/abs/path", "ftp://x"]
        {
            assert!(parse_request_uri(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b", "reg/x:tag", ":x", "oci:x", "http://a b/", "http://a:port/", "http://[::1/"] {
            assert!(parse_request_uri(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_request_uri("HTTPS://a/b").map(|u| u.scheme).ok().as_deref(), Some("https"));
    }

    #[test]
    fn wasm_plugin_url_rule_accepts_registry_refs_and_refuses_other_schemes() {
        let plugin = |url: &str| {
            json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
            "metadata": {"name": "p"}, "spec": {"url": url}})
        };
        for ok in ["docker.io/istio/x:1", "oci://r/x@sha256:abc", "https://h/x.wasm", "file:///x.wasm", "r:5000/x"] {
            assert!(check(&plugin(ok)).is_empty(), "{ok}: {:?}", messages(&plugin(ok)));
        }
        assert_eq!(messages(&plugin("ftp://x")), ["spec.url: url must have schema one of [http, https, file, oci]"]);
    }

    #[test]
    fn null_on_a_non_nullable_field_is_pruned_as_the_api_server_does() {
        let vs = json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "r"},
            "spec": {"hosts": ["r"], "gateways": null, "http": [{"route": [{"destination": {"host": "r"}}]}]}});
        assert!(check(&vs).is_empty(), "{:?}", messages(&vs));
    }

    #[test]
    fn int_or_string_and_nested_oneof_and_list_map_duplicates() {
        // ServiceEntry ports are a list-map keyed by number (`x-kubernetes-list-type: map`) and a CEL rule.
        let se = json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "s"},
            "spec": {"hosts": ["a.example.com"], "ports": [{"number": 80, "name": "a"}, {"number": 80, "name": "b"}]}});
        let m = messages(&se);
        assert!(m.iter().any(|e| e == "spec.ports: port number cannot be duplicated"), "{m:?}");
        // A string where an integer is declared is a type error, worded as the API server words it.
        let se = json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "s"},
            "spec": {"hosts": ["a.example.com"], "ports": [{"number": "80", "name": "a"}]}});
        assert_eq!(
            messages(&se),
            ["spec.ports[0].number: Invalid value: \"string\": spec.ports[0].number in body must be of type integer: \"string\""]
        );
    }

    #[test]
    fn an_unknown_kind_or_version_is_named() {
        let d = json!({"apiVersion": "security.istio.io/v1alpha1", "kind": "AuthorizationPolicy", "metadata": {"name": "a"}});
        assert_eq!(
            messages(&d),
            ["apiVersion: no matches for kind \"AuthorizationPolicy\" in version \"security.istio.io/v1alpha1\": \
              Istio 1.30.3 serves AuthorizationPolicy as security.istio.io/v1, security.istio.io/v1beta1"]
        );
        let d =
            json!({"apiVersion": "networking.istio.io/v1", "kind": "PeerAuthentication", "metadata": {"name": "a"}});
        assert_eq!(
            messages(&d),
            ["kind: PeerAuthentication (networking.istio.io/v1) is not an Istio CRD kind (Istio's PeerAuthentication is in group security.istio.io)"]
        );
    }
}
