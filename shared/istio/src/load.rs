//! Reading multi-document Istio YAML into typed [`Resource`]s with errors a person can act on.

use crate::{Kind, ObjectMeta, Resource, Resources, Spec};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Where a resource came from: a file and the index of the YAML document in it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub file: String,
    pub document: usize,
}

impl Location {
    pub fn is_unknown(&self) -> bool {
        self.file.is_empty()
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.file.is_empty() {
            write!(f, "<config>")
        } else {
            write!(f, "{} (document {})", self.file, self.document + 1)
        }
    }
}

/// An error in a resource: which file, which resource, which field, what value, what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub location: Location,
    /// `Kind namespace/name`, when known.
    pub resource: Option<String>,
    /// The field path, e.g. `spec.http[0].match[0].uri`.
    pub field: Option<String>,
    /// What is wrong and what was expected.
    pub message: String,
}

impl Error {
    pub fn new(message: impl Into<String>) -> Self {
        Error { location: Location::default(), resource: None, field: None, message: message.into() }
    }
    pub fn at(resource: &Resource, field: impl Into<String>, message: impl Into<String>) -> Self {
        Error {
            location: resource.location.clone(),
            resource: Some(resource.display_name()),
            field: Some(field.into()),
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.location)?;
        if let Some(r) = &self.resource {
            write!(f, ": {r}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for Error {}

/// Reads every Istio resource in `text` (several YAML documents separated by `---`).
/// `file` names the source in errors.
pub fn load_str(text: &str, file: &str) -> Result<Vec<Resource>, Error> {
    let mut out = Vec::new();
    for (index, document) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let location = Location { file: file.to_string(), document: index };
        let value = yaml_serde::Value::deserialize(document).map_err(|e| Error {
            location: location.clone(),
            resource: None,
            field: None,
            message: format!("not valid YAML: {e}"),
        })?;
        if value.is_null() {
            continue;
        }
        // A Kubernetes `List` (what `kubectl get -o yaml` prints for several objects).
        if value.get("kind").and_then(|k| k.as_str()) == Some("List") {
            let items = value.get("items").and_then(|i| i.as_sequence()).cloned().unwrap_or_default();
            for item in items {
                out.push(parse_object(item, location.clone())?);
            }
            continue;
        }
        out.push(parse_object(value, location)?);
    }
    Ok(out)
}

/// Reads files and directories as [`load_inputs`] does with default [`LoadOptions`], returning
/// the first error (its message counts the others); [`load_inputs`] returns them all.
pub fn load_dir_or_files<P: AsRef<Path>>(paths: &[P]) -> Result<Resources, Error> {
    load_inputs(paths, LoadOptions::default()).map(|input| input.resources).map_err(|failure| {
        let more = failure.errors.len().saturating_sub(1);
        let mut first = failure.errors.into_iter().next().unwrap_or_else(|| Error::new("nothing read"));
        if more > 0 {
            first.message.push_str(&format!(" (and {more} more errors)"));
        }
        first
    })
}

/// API groups of the Kubernetes Gateway API (standard and experimental channels).
const GATEWAY_API_GROUPS: [&str; 2] = ["gateway.networking.k8s.io", "gateway.networking.x-k8s.io"];

/// How a [`Loader`] treats its inputs (the shared `-f` flags of wasmeshctl).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// `-R`: read the sub-directories of a directory too (as `kubectl apply -R`).
    pub recursive: bool,
    /// `--override`: the same resource (kind, namespace, name) given again replaces the earlier
    /// one, as `kubectl apply` of the later file would. Without it a repeat is an error.
    pub override_duplicates: bool,
    /// `--skip-unsupported`: skip Gateway API resources with a note instead of refusing them.
    pub skip_unsupported: bool,
}

/// Everything read from the inputs.
#[derive(Debug, Clone, Default)]
pub struct Input {
    /// The resources wasmesh reads, typed, in input order (a repeat given with `--override`
    /// takes the place of the one it replaces).
    pub resources: Resources,
    /// Every Istio document kept (those in `resources` and the Istio kinds wasmesh does not
    /// read, e.g. Sidecar or WasmPlugin), as the whole object was read, with where it was read:
    /// what a schema check of Istio's CRDs runs on. Documents that failed to load are not here
    /// (their error is reported instead).
    pub documents: Vec<(Location, serde_json::Value)>,
    /// One line per kind that was skipped (count and where) and per `--override` replacement.
    pub notes: Vec<String>,
}

/// Why loading failed: every error found (not only the first), and the notes gathered so far.
#[derive(Debug, Clone, Default)]
pub struct LoadFailure {
    pub errors: Vec<Error>,
    pub notes: Vec<String>,
    /// Every Istio document that was read as YAML, also those whose typed reading failed (so a
    /// schema check can add Istio's own reason), in input order.
    pub documents: Vec<(Location, serde_json::Value)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum SkipReason {
    /// Not an Istio API group at all (Deployment, Service, ConfigMap, ...).
    NotIstio,
    /// An Istio kind wasmesh does not implement (Sidecar, EnvoyFilter, WasmPlugin, ...).
    IstioNotRead,
    /// Gateway API, skipped on request (`--skip-unsupported`).
    GatewayApi,
}

#[derive(Debug, Default)]
struct Skipped {
    count: usize,
    files: Vec<String>,
}

/// Reads Istio YAML from files, directories and stdin the way `kubectl apply -f` takes them, and
/// collects every problem instead of stopping at the first.
///
/// Per document: a kind wasmesh reads is parsed into a typed [`Resource`]; another Istio kind is
/// kept as a document (for schema checks) and noted; a Gateway API kind is an error (not
/// supported yet; silently dropping an HTTPRoute would route differently from the cluster) unless
/// [`LoadOptions::skip_unsupported`]; anything else (Deployment, Service, ...) is noted and
/// skipped. The same (kind, namespace, name) twice is an error naming both places, or with
/// [`LoadOptions::override_duplicates`] the later replaces the earlier.
#[derive(Debug, Default)]
pub struct Loader {
    options: LoadOptions,
    items: Vec<Resource>,
    documents: Vec<(Location, serde_json::Value)>,
    /// (kind, namespace, name) -> (index in `documents`, index in `items` for a read kind).
    seen: HashMap<(String, String, String), (usize, Option<usize>)>,
    skipped: BTreeMap<(SkipReason, String, String), Skipped>,
    replaced: Vec<String>,
    errors: Vec<Error>,
    sources: Vec<String>,
    /// Directories that held no file with a YAML/JSON extension, with whether they have
    /// sub-directories (for the hint to use -R).
    empty_dirs: Vec<(String, bool)>,
    stdin_read: bool,
    files_read: std::collections::HashSet<PathBuf>,
    /// Istio documents whose typed reading failed (only returned on failure).
    failed_documents: Vec<(Location, serde_json::Value)>,
}

impl Loader {
    pub fn new(options: LoadOptions) -> Self {
        Loader { options, ..Default::default() }
    }

    /// A file, a directory (its `*.yaml`, `*.yml` and `*.json` files, sorted; sub-directories
    /// with `recursive`) or `-` for stdin.
    pub fn add_path(&mut self, path: &Path) {
        if path.as_os_str() == "-" {
            if self.stdin_read {
                self.errors.push(Error::new("-f - (stdin) given twice; stdin can be read once"));
                return;
            }
            self.stdin_read = true;
            self.add_reader(std::io::stdin().lock(), "<stdin>");
            return;
        }
        let name = path.display().to_string();
        self.sources.push(name.clone());
        if path.is_dir() {
            let mut files = Vec::new();
            let mut has_subdirs = false;
            self.collect_dir(path, &mut files, &mut has_subdirs);
            if files.is_empty() {
                self.empty_dirs.push((name, has_subdirs));
            }
            for file in files {
                self.read_file(&file);
            }
        } else {
            self.read_file(path);
        }
    }

    /// Everything readable from `reader` (named `name` in errors and notes).
    pub fn add_reader(&mut self, mut reader: impl Read, name: &str) {
        self.sources.push(name.to_string());
        let mut text = String::new();
        match reader.read_to_string(&mut text) {
            Ok(_) => self.add_str(&text, name),
            Err(e) => self.errors.push(Error {
                location: Location { file: name.to_string(), document: 0 },
                resource: None,
                field: None,
                message: format!("cannot read: {e}"),
            }),
        }
    }

    /// Every document of `text` (several YAML documents separated by `---`, or JSON).
    pub fn add_str(&mut self, text: &str, file: &str) {
        for (index, document) in yaml_serde::Deserializer::from_str(text).enumerate() {
            let location = Location { file: file.to_string(), document: index };
            let value = match yaml_serde::Value::deserialize(document) {
                Ok(v) => v,
                Err(e) => {
                    // The parser cannot resynchronise after a syntax error: the rest of this
                    // file is unread, other files still are.
                    self.errors.push(Error {
                        location,
                        resource: None,
                        field: None,
                        message: format!("not valid YAML: {e}"),
                    });
                    return;
                }
            };
            if value.is_null() {
                continue;
            }
            if value.get("kind").and_then(|k| k.as_str()) == Some("List") {
                let items = value.get("items").and_then(|i| i.as_sequence()).cloned().unwrap_or_default();
                for item in items {
                    self.add_object(item, &location);
                }
                continue;
            }
            self.add_object(value, &location);
        }
    }

    fn collect_dir(&mut self, dir: &Path, files: &mut Vec<PathBuf>, has_subdirs: &mut bool) {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                self.errors.push(Error {
                    location: Location { file: dir.display().to_string(), document: 0 },
                    resource: None,
                    field: None,
                    message: format!("cannot read directory: {e}"),
                });
                return;
            }
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            if path.is_dir() {
                *has_subdirs = true;
                if self.options.recursive {
                    self.collect_dir(&path, files, has_subdirs);
                }
            } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")) {
                files.push(path);
            }
        }
    }

    fn read_file(&mut self, file: &Path) {
        let name = file.display().to_string();
        // The same file reached twice (overlapping -f, -R over a directory also named): read once.
        if let Ok(canonical) = std::fs::canonicalize(file) {
            if !self.files_read.insert(canonical) {
                return;
            }
        }
        match std::fs::read_to_string(file) {
            Ok(text) => self.add_str(&text, &name),
            Err(e) => self.errors.push(Error {
                location: Location { file: name, document: 0 },
                resource: None,
                field: None,
                message: format!("cannot read file: {e}"),
            }),
        }
    }

    fn skip(&mut self, reason: SkipReason, kind: &str, api_version: &str, location: &Location) {
        let entry = self.skipped.entry((reason, kind.to_string(), api_version.to_string())).or_default();
        entry.count += 1;
        if !entry.files.contains(&location.file) {
            entry.files.push(location.file.clone());
        }
    }

    fn add_object(&mut self, value: yaml_serde::Value, location: &Location) {
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("").to_string();
        let api_version = value.get("apiVersion").and_then(|k| k.as_str()).unwrap_or("").to_string();
        let group = api_version.split_once('/').map_or("", |(g, _)| g);
        if !kind.is_empty() && GATEWAY_API_GROUPS.contains(&group) {
            if self.options.skip_unsupported {
                self.skip(SkipReason::GatewayApi, &kind, &api_version, location);
            } else {
                self.errors.push(Error {
                    location: location.clone(),
                    resource: Some(object_name(&kind, &value)),
                    field: Some("kind".into()),
                    message: format!(
                        "Gateway API ({api_version}) is not supported by wasmesh yet; use Istio's Gateway and \
                         VirtualService, or pass --skip-unsupported to leave it out (then wasmesh does not \
                         route as the cluster would)"
                    ),
                });
            }
            return;
        }
        if !kind.is_empty() && !api_version.is_empty() && Kind::from_name(&kind).is_none() {
            let reason = if group.ends_with(".istio.io") { SkipReason::IstioNotRead } else { SkipReason::NotIstio };
            self.skip(reason, &kind, &api_version, location);
            if reason == SkipReason::IstioNotRead {
                let (namespace, name) = namespace_name(&value);
                let display = format!("{kind} {namespace}/{name}");
                let json = yaml_to_json(&value);
                self.record((kind, namespace, name), &display, location, json, None);
            }
            return;
        }
        let json = yaml_to_json(&value);
        match parse_object(value, location.clone()) {
            Ok(resource) => {
                let key =
                    (resource.kind().name().to_string(), resource.namespace().to_string(), resource.name().to_string());
                let display = resource.display_name();
                self.record(key, &display, location, json, Some(resource));
            }
            Err(e) => {
                self.errors.push(e);
                if !kind.is_empty() {
                    self.failed_documents.push((location.clone(), json));
                }
            }
        }
    }

    /// Keeps a document (and its typed resource, for a kind wasmesh reads) under `key`
    /// (kind, namespace, name). A repeat is an error naming both places, or with
    /// `override_duplicates` replaces the earlier one where it stood, as `kubectl apply` would.
    fn record(
        &mut self,
        key: (String, String, String),
        display: &str,
        location: &Location,
        json: serde_json::Value,
        resource: Option<Resource>,
    ) {
        let Some(&(doc, item)) = self.seen.get(&key) else {
            self.documents.push((location.clone(), json));
            let item = resource.map(|r| {
                self.items.push(r);
                self.items.len() - 1
            });
            self.seen.insert(key, (self.documents.len() - 1, item));
            return;
        };
        let earlier = self.documents[doc].0.clone();
        if self.documents[doc].1 == json {
            // The same object twice (e.g. overlapping -f): applying both gives the same result.
            self.replaced.push(format!("{display} in {location} is identical to the one in {earlier}; read once"));
            return;
        }
        if !self.options.override_duplicates {
            self.errors.push(Error {
                location: location.clone(),
                resource: Some(display.to_string()),
                field: None,
                message: format!(
                    "given twice: also in {earlier}; Istio keeps one object per kind, namespace and name, so \
                     remove one, or pass --override to let the later replace the earlier (as `kubectl apply` \
                     of both would)"
                ),
            });
            return;
        }
        self.replaced.push(format!("{display} from {location} replaces the one from {earlier} (--override)"));
        self.documents[doc] = (location.clone(), json);
        if let (Some(i), Some(r)) = (item, resource) {
            self.items[i] = r;
        }
    }

    /// Every resource and document read, or every error found.
    pub fn finish(mut self) -> Result<Input, LoadFailure> {
        let notes = self.notes();
        if self.errors.is_empty() && self.documents.is_empty() {
            let mut message = if self.sources.is_empty() {
                "no input: give -f FILE, -f DIR or -f - (stdin) with Istio YAML".to_string()
            } else {
                format!("no Istio resources in {}", self.sources.join(", "))
            };
            for (dir, has_subdirs) in &self.empty_dirs {
                message.push_str(&format!("; {dir} holds no *.yaml, *.yml or *.json file"));
                if *has_subdirs && !self.options.recursive {
                    message.push_str(" (-R reads its sub-directories)");
                }
            }
            self.errors.push(Error::new(message));
        }
        if !self.errors.is_empty() {
            let mut documents = self.documents;
            documents.append(&mut self.failed_documents);
            documents.sort_by(|(a, _), (b, _)| (&a.file, a.document).cmp(&(&b.file, b.document)));
            return Err(LoadFailure { errors: self.errors, notes, documents });
        }
        Ok(Input { resources: Resources { items: self.items }, documents: self.documents, notes })
    }

    fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        for ((reason, kind, api_version), skipped) in &self.skipped {
            const SHOWN: usize = 3;
            let mut files = skipped.files.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
            if skipped.files.len() > SHOWN {
                files.push_str(&format!(" and {} more files", skipped.files.len() - SHOWN));
            }
            let why = match reason {
                SkipReason::NotIstio => {
                    "not an Istio resource; wasmesh reads Istio's networking, security and telemetry kinds"
                }
                SkipReason::IstioNotRead => {
                    "an Istio kind wasmesh does not implement; it has no effect on what wasmesh generates"
                }
                SkipReason::GatewayApi => "Gateway API is not supported by wasmesh yet (--skip-unsupported)",
            };
            notes.push(format!("skipped {} {kind} ({api_version}) in {files}: {why}", skipped.count));
        }
        notes.extend(self.replaced.iter().cloned());
        notes
    }
}

/// Reads `paths` (files, directories, `-` for stdin) with `options`: see [`Loader`].
pub fn load_inputs<P: AsRef<Path>>(paths: &[P], options: LoadOptions) -> Result<Input, LoadFailure> {
    let mut loader = Loader::new(options);
    for path in paths {
        loader.add_path(path.as_ref());
    }
    loader.finish()
}

fn namespace_name(value: &yaml_serde::Value) -> (String, String) {
    let meta = value.get("metadata");
    let field = |k: &str| meta.and_then(|m| m.get(k)).and_then(|v| v.as_str()).map(str::to_string);
    (field("namespace").unwrap_or_else(|| "default".into()), field("name").unwrap_or_default())
}

/// `Kind namespace/name` of an object that is not parsed.
fn object_name(kind: &str, value: &yaml_serde::Value) -> String {
    let (ns, name) = namespace_name(value);
    format!("{kind} {ns}/{name}")
}

/// The JSON form of a YAML value, as Kubernetes converts it (map keys become strings).
pub fn yaml_to_json(value: &yaml_serde::Value) -> serde_json::Value {
    use serde_json::Value as J;
    use yaml_serde::Value as Y;
    match value {
        Y::Null => J::Null,
        Y::Bool(b) => J::Bool(*b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                J::from(i)
            } else if let Some(u) = n.as_u64() {
                J::from(u)
            } else {
                n.as_f64().and_then(serde_json::Number::from_f64).map_or_else(|| J::String(n.to_string()), J::Number)
            }
        }
        Y::String(s) => J::String(s.clone()),
        Y::Sequence(items) => J::Array(items.iter().map(yaml_to_json).collect()),
        Y::Mapping(map) => J::Object(
            map.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Y::String(s) => s.clone(),
                        other => match yaml_to_json(other) {
                            J::String(s) => s,
                            j => j.to_string(),
                        },
                    };
                    (key, yaml_to_json(v))
                })
                .collect(),
        ),
        Y::Tagged(tagged) => yaml_to_json(&tagged.value),
    }
}

fn parse_object(value: yaml_serde::Value, location: Location) -> Result<Resource, Error> {
    let err = |resource: Option<String>, field: Option<&str>, message: String| Error {
        location: location.clone(),
        resource,
        field: field.map(str::to_string),
        message,
    };
    let Some(map) = value.as_mapping() else {
        return Err(err(None, None, "a document must be a mapping with apiVersion, kind, metadata and spec".into()));
    };
    let api_version = map
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .ok_or_else(|| err(None, Some("apiVersion"), "missing; expected e.g. networking.istio.io/v1".into()))?
        .to_string();
    let kind_name = map
        .get("kind")
        .and_then(|v| v.as_str())
        .ok_or_else(|| err(None, Some("kind"), "missing; expected an Istio kind such as VirtualService".into()))?;
    let kind = Kind::from_name(kind_name).ok_or_else(|| {
        let known: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
        err(
            None,
            Some("kind"),
            format!("{kind_name:?} ({api_version}) is not a kind wasmesh reads; expected one of {}", known.join(", ")),
        )
    })?;
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version.as_str()));
    if group != kind.group() || !kind.versions().contains(&version) {
        let expected: Vec<String> = kind.versions().iter().map(|v| format!("{}/{v}", kind.group())).collect();
        return Err(err(
            None,
            Some("apiVersion"),
            format!("{api_version:?} is not served for {}; expected one of {}", kind.name(), expected.join(", ")),
        ));
    }
    let metadata: ObjectMeta = match map.get("metadata") {
        Some(m) => typed(m.clone(), "metadata").map_err(|(field, message)| err(None, Some(&field), message))?,
        None => return Err(err(None, Some("metadata"), "missing; expected metadata.name".into())),
    };
    if metadata.name.is_empty() {
        return Err(err(None, Some("metadata.name"), "empty; every resource needs a name".into()));
    }
    let display = format!("{} {}/{}", kind.name(), metadata.namespace.as_deref().unwrap_or("default"), metadata.name);
    for key in map.keys() {
        let key = key.as_str().unwrap_or("");
        if !matches!(key, "apiVersion" | "kind" | "metadata" | "spec" | "status") {
            return Err(err(
                Some(display.clone()),
                Some(key),
                "unknown top-level field; expected apiVersion, kind, metadata, spec (status is ignored)".into(),
            ));
        }
    }
    let spec_value = map.get("spec").cloned().unwrap_or(yaml_serde::Value::Mapping(Default::default()));
    let spec_value = if spec_value.is_null() { yaml_serde::Value::Mapping(Default::default()) } else { spec_value };
    let d = |(field, message): (String, String)| err(Some(display.clone()), Some(&field), message);
    let spec = match kind {
        Kind::VirtualService => Spec::VirtualService(typed(spec_value, "spec").map_err(d)?),
        Kind::DestinationRule => Spec::DestinationRule(typed(spec_value, "spec").map_err(d)?),
        Kind::Gateway => Spec::Gateway(typed(spec_value, "spec").map_err(d)?),
        Kind::ServiceEntry => Spec::ServiceEntry(typed(spec_value, "spec").map_err(d)?),
        Kind::WorkloadEntry => Spec::WorkloadEntry(typed(spec_value, "spec").map_err(d)?),
        Kind::AuthorizationPolicy => Spec::AuthorizationPolicy(typed(spec_value, "spec").map_err(d)?),
        Kind::RequestAuthentication => Spec::RequestAuthentication(typed(spec_value, "spec").map_err(d)?),
        Kind::PeerAuthentication => Spec::PeerAuthentication(typed(spec_value, "spec").map_err(d)?),
        Kind::Telemetry => Spec::Telemetry(typed(spec_value, "spec").map_err(d)?),
    };
    Ok(Resource { api_version, metadata, spec, location })
}

/// Deserializes `value` into `T`, reporting the failing field's full path under `root`.
fn typed<T: DeserializeOwned>(value: yaml_serde::Value, root: &str) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path.is_empty() { root.to_string() } else { format!("{root}.{path}") };
        (field, e.into_inner().to_string())
    })
}

/// Reads resources already parsed as JSON values (a filter's `resources` list).
pub fn resources_from_values(values: Vec<serde_json::Value>) -> Result<Vec<Resource>, Error> {
    let mut out = Vec::with_capacity(values.len());
    for (index, v) in values.into_iter().enumerate() {
        let yaml: yaml_serde::Value =
            yaml_serde::to_value(&v).map_err(|e| Error::new(format!("resource {index}: {e}")))?;
        out.push(parse_object(yaml, Location { file: "<filter config>".into(), document: index })?);
    }
    Ok(out)
}

/// Reads resources from their JSON form (what wasmeshctl hands to a filter as configuration),
/// with the same field-path errors as YAML.
pub fn resources_from_json(json: &[u8]) -> Result<Vec<Resource>, Error> {
    let values: Vec<serde_json::Value> =
        serde_json::from_slice(json).map_err(|e| Error::new(format!("resources are not a JSON list: {e}")))?;
    resources_from_values(values)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const VS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: bookinfo
spec:
  hosts: [reviews]
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination: {host: reviews, subset: v2}
  - route:
    - destination: {host: reviews, subset: v3}
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
"#;

    #[test]
    fn reads_multi_document_yaml() {
        let rs = load_str(VS, "reviews.yaml").unwrap();
        assert_eq!(rs.len(), 2);
        assert_eq!(rs[0].display_name(), "VirtualService bookinfo/reviews");
        assert_eq!(rs[1].display_name(), "DestinationRule default/reviews");
        assert_eq!(rs[1].location.document, 1);
    }

    #[test]
    fn misspelt_field_names_file_resource_and_path() {
        let bad = VS.replace("exact: jason", "exactly: jason");
        let e = load_str(&bad, "reviews.yaml").unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with(
                "reviews.yaml (document 1): VirtualService bookinfo/reviews: spec.http[0].match[0].headers.end-user"
            ),
            "{text}"
        );
        assert!(text.contains("unknown field `exactly`"), "{text}");
        assert!(text.contains("`exact`"), "{text}");
    }

    #[test]
    fn wrong_api_version_and_kind_are_errors() {
        let e = load_str(&VS.replace("networking.istio.io/v1\n", "security.istio.io/v1\n"), "f").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("apiVersion"));
        assert!(e.message.contains("networking.istio.io/v1"), "{e}");
        let e = load_str("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n", "f").unwrap_err();
        assert!(e.message.contains("not a kind wasmesh reads"), "{e}");
    }

    #[test]
    fn unknown_top_level_field_is_an_error() {
        let e = load_str("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspek: {}\n", "f")
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("spek"));
    }

    #[test]
    fn kubectl_metadata_is_accepted() {
        let y = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g, uid: abc, resourceVersion: '1', generation: 2, creationTimestamp: x}\nspec: {}\nstatus: {}\n";
        assert_eq!(load_str(y, "f").unwrap().len(), 1);
    }

    fn loader(options: LoadOptions, files: &[(&str, &str)]) -> Result<Input, LoadFailure> {
        let mut l = Loader::new(options);
        for (name, text) in files {
            l.add_reader(text.as_bytes(), name);
        }
        l.finish()
    }

    const DEPLOYMENT: &str =
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: reviews-v1}\nspec: {replicas: 1}\n";

    #[test]
    fn loader_keeps_documents_and_notes_skipped_kinds_per_kind() {
        let sidecar = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: bookinfo}\nspec: {egress: [{hosts: ['./*']}]}\n";
        let files: Vec<(String, String)> = (0..5)
            .map(|i| (format!("app{i}.yaml"), format!("{DEPLOYMENT}---\n{DEPLOYMENT}")))
            .chain([("reviews.yaml".to_string(), format!("{VS}---\n{sidecar}"))])
            .collect();
        let files: Vec<(&str, &str)> = files.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let input = loader(LoadOptions::default(), &files).unwrap();
        assert_eq!(input.resources.items.len(), 2);
        assert_eq!(
            input.notes,
            vec![
                "skipped 10 Deployment (apps/v1) in app0.yaml, app1.yaml, app2.yaml and 2 more files: not an Istio resource; wasmesh reads Istio's networking, security and telemetry kinds",
                "skipped 1 Sidecar (networking.istio.io/v1) in reviews.yaml: an Istio kind wasmesh does not implement; it has no effect on what wasmesh generates",
            ]
        );
        // Every Istio document as read, the Sidecar too (for schema checks), with its location.
        assert_eq!(input.documents.len(), 3);
        let (loc, vs) = &input.documents[0];
        assert_eq!((loc.file.as_str(), loc.document), ("reviews.yaml", 0));
        assert_eq!(vs["spec"]["http"][0]["match"][0]["headers"]["end-user"]["exact"], "jason");
        assert_eq!(vs["metadata"], serde_json::json!({"name": "reviews", "namespace": "bookinfo"}));
        assert_eq!(input.documents[2].1["kind"], "Sidecar");
        assert_eq!(input.documents[2].0.document, 2);
    }

    #[test]
    fn loader_reports_every_error_and_refuses_empty_input() {
        let bad_field = VS.replace("exact: jason", "exactly: jason");
        let failure = loader(
            LoadOptions::default(),
            &[
                ("a.yaml", &bad_field),
                ("b.yaml", "kind: [\n"),
                ("c.yaml", "apiVersion: v1\nkind: VirtualService\nmetadata: {name: x}\n"),
            ],
        )
        .unwrap_err();
        let errors: Vec<String> = failure.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 3, "{errors:#?}");
        assert!(
            errors[0].starts_with("a.yaml (document 1): VirtualService bookinfo/reviews: spec.http[0]"),
            "{errors:#?}"
        );
        assert!(errors[1].starts_with("b.yaml (document 1): not valid YAML"), "{errors:#?}");
        assert!(errors[2].contains("apiVersion: \"v1\" is not served for VirtualService"), "{errors:#?}");
        // For schema checks: every document read as YAML, the refused ones too, in input order.
        let docs: Vec<(String, usize)> = failure.documents.iter().map(|(l, _)| (l.file.clone(), l.document)).collect();
        assert_eq!(docs, [("a.yaml".to_string(), 0), ("a.yaml".to_string(), 1), ("c.yaml".to_string(), 0)]);
        assert_eq!(failure.documents[0].1["spec"]["http"][0]["match"][0]["headers"]["end-user"]["exactly"], "jason");

        let e = loader(LoadOptions::default(), &[("app.yaml", DEPLOYMENT), ("empty.yaml", "")]).unwrap_err();
        assert_eq!(e.errors.len(), 1);
        assert_eq!(e.errors[0].message, "no Istio resources in app.yaml, empty.yaml");
        assert_eq!(e.notes.len(), 1, "the notes say what was skipped: {:?}", e.notes);
        let e = Loader::new(LoadOptions::default()).finish().unwrap_err();
        assert!(e.errors[0].message.starts_with("no input: give -f"), "{:?}", e.errors);
    }

    #[test]
    fn gateway_api_is_refused_unless_skipped() {
        let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec: {}\n---\n\
                     apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {name: g, namespace: x}\nspec: {}\n";
        let e = loader(LoadOptions::default(), &[("vs.yaml", VS), ("route.yaml", route)]).unwrap_err();
        let errors: Vec<String> = e.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 2);
        assert!(errors[0].starts_with("route.yaml (document 1): HTTPRoute default/r: kind: Gateway API (gateway.networking.k8s.io/v1) is not supported by wasmesh yet"), "{errors:#?}");
        assert!(errors[1].starts_with("route.yaml (document 2): ReferenceGrant x/g: kind:"), "{errors:#?}");
        let options = LoadOptions { skip_unsupported: true, ..Default::default() };
        let input = loader(options, &[("vs.yaml", VS), ("route.yaml", route)]).unwrap();
        assert_eq!(input.resources.items.len(), 2);
        assert_eq!(input.documents.len(), 2, "Gateway API documents are not kept");
        assert!(
            input.notes[0].starts_with("skipped 1 HTTPRoute (gateway.networking.k8s.io/v1) in route.yaml: Gateway API"),
            "{:?}",
            input.notes
        );
        assert!(
            input.notes[1].starts_with("skipped 1 ReferenceGrant (gateway.networking.k8s.io/v1beta1)"),
            "{:?}",
            input.notes
        );
    }

    #[test]
    fn the_same_resource_twice_is_an_error_or_replaced_in_place() {
        let dr = |subset: &str| {
            format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: reviews}}\nspec: {{host: reviews, subsets: [{{name: {subset}, labels: {{version: {subset}}}}}]}}\n")
        };
        // No namespace means `default`: these are one object in Istio.
        let later = dr("v9").replace("{name: reviews}", "{name: reviews, namespace: default}");
        let files = [("bookinfo.yaml", VS), ("other.yaml", later.as_str())];
        let e = loader(LoadOptions::default(), &files).unwrap_err();
        assert_eq!(e.errors.len(), 1);
        assert_eq!(
            e.errors[0].to_string(),
            "other.yaml (document 1): DestinationRule default/reviews: given twice: also in bookinfo.yaml (document 2); \
             Istio keeps one object per kind, namespace and name, so remove one, or pass --override to let the later \
             replace the earlier (as `kubectl apply` of both would)"
        );
        // --override: the later replaces the earlier where it stood (order and count unchanged).
        let input = loader(LoadOptions { override_duplicates: true, ..Default::default() }, &files).unwrap();
        assert_eq!(input.resources.items.len(), 2);
        let Spec::DestinationRule(rule) = &input.resources.items[1].spec else {
            panic!("{:?}", input.resources.items[1])
        };
        assert_eq!(rule.subsets[0].name, "v9");
        assert_eq!(input.resources.items[1].location.file, "other.yaml");
        assert_eq!(input.documents.len(), 2);
        assert_eq!(input.documents[1].0.file, "other.yaml");
        assert_eq!(input.documents[1].1["spec"]["subsets"][0]["name"], "v9");
        assert_eq!(input.notes, vec!["DestinationRule default/reviews from other.yaml (document 1) replaces the one from bookinfo.yaml (document 2) (--override)"]);
        // The very same object twice (overlapping inputs) is read once, with a note.
        let input = loader(LoadOptions::default(), &[("a.yaml", VS), ("b.yaml", VS)]).unwrap();
        assert_eq!(input.resources.items.len(), 2);
        assert!(input.notes[0].contains("identical to the one in a.yaml"), "{:?}", input.notes);
        // Another namespace, same kind and name: another object (the DestinationRule, in
        // `default` in both files, is the identical one read once).
        let other_ns = VS.replace("namespace: bookinfo", "namespace: other");
        let input = loader(LoadOptions::default(), &[("a.yaml", VS), ("b.yaml", &other_ns)]).unwrap();
        let names: Vec<String> = input.resources.items.iter().map(Resource::display_name).collect();
        assert_eq!(
            names,
            ["VirtualService bookinfo/reviews", "DestinationRule default/reviews", "VirtualService other/reviews"]
        );
    }

    #[test]
    fn lists_and_json_are_read() {
        let list = r#"{"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "g", "namespace": "istio-system"}, "spec": {"selector": {"istio": "ingressgateway"}}},
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {}}
        ]}"#;
        let input = loader(LoadOptions::default(), &[("list.json", list)]).unwrap();
        assert_eq!(input.resources.items.len(), 1);
        assert_eq!(input.resources.items[0].display_name(), "Gateway istio-system/g");
        assert_eq!(input.documents[0].1["spec"]["selector"]["istio"], "ingressgateway");
        assert_eq!(input.notes.len(), 1);
    }

    #[test]
    fn yaml_becomes_json_as_kubernetes_converts_it() {
        let v: yaml_serde::Value =
            yaml_serde::from_str("a: 1\nb: [true, null, 1.5, x]\n2: two\nc: !tag {d: -3}\n").unwrap();
        assert_eq!(
            yaml_to_json(&v),
            serde_json::json!({"a": 1, "b": [true, null, 1.5, "x"], "2": "two", "c": {"d": -3}})
        );
    }

    /// What Istio YAML relies on from the YAML library (checked when it was replaced: serde_yaml
    /// 0.9 and yaml_serde give the same): several documents per file, anchors and aliases, local
    /// tags ignored, a quoted number stays a string and a plain one a number.
    #[test]
    fn istio_yaml_reads_as_kubectl_reads_it() {
        let text = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a, namespace: default}\nspec:\n  hosts: [a.example.com]\n  ports: [{number: 8080, name: http, protocol: HTTP, targetPort: 9090}]\n---\n# second document\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: b, namespace: default, labels: &labels {port: \"8080\", on: yes}}\nspec:\n  hosts: [b.example.com]\n  ports: [{number: 8080, name: http}]\n  workloadSelector: {labels: *labels}\n  endpoints: [!endpoint {address: 127.0.0.1}]\n";
        let docs: Vec<serde_json::Value> = yaml_serde::Deserializer::from_str(text)
            .map(|d| yaml_to_json(&yaml_serde::Value::deserialize(d).unwrap()))
            .collect();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1]["spec"]["workloadSelector"]["labels"], docs[1]["metadata"]["labels"], "alias");
        assert_eq!(docs[0]["spec"]["ports"][0]["number"], serde_json::json!(8080));
        assert_eq!(docs[1]["metadata"]["labels"]["port"], serde_json::json!("8080"));
        // YAML 1.2 (as Kubernetes reads it): `yes` is a string, not a boolean.
        assert_eq!(docs[1]["metadata"]["labels"]["on"], serde_json::json!("yes"));
        assert_eq!(docs[1]["spec"]["endpoints"][0]["address"], serde_json::json!("127.0.0.1"));
        let rs = Resources { items: load_str(text, "two.yaml").unwrap() };
        let ses: Vec<_> = rs.service_entries().map(|(_, se)| se.clone()).collect();
        assert_eq!(ses.len(), 2);
        assert_eq!((ses[0].ports[0].number, ses[0].ports[0].target_port), (8080, Some(9090)));
        assert_eq!(ses[1].workload_selector.as_ref().map(|s| s.labels.get("port").cloned()), Some(Some("8080".into())));
    }

    #[test]
    fn json_round_trip_keeps_the_typed_spec() {
        let rs = load_str(VS, "reviews.yaml").unwrap();
        let json = serde_json::to_vec(
            &rs.iter()
                .map(|r| {
                    let mut r = r.clone();
                    r.location = Location::default();
                    r
                })
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let back = resources_from_json(&json).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].spec, rs[0].spec);
    }
}
